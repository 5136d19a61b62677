//! srcache-cache
