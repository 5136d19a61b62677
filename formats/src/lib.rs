//! srcache-formats
