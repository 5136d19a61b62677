//! Full-image inference in tiles with overlap blending: the implementation lives in the trainer, whose
//! full-image validation runs the experts the same way `eval` and `infer` do.

pub use srcache_trainer::tiling::Tiling;
