//! srcache-ingest
