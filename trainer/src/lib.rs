//! srcache-trainer
