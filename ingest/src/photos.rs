//! The five real photographs the demo, the benchmarks and the tests use (public domain / CC0, from
//! scikit-image's sample data; licences in ingest/assets/photos/LICENSE.md), embedded in the binary so an
//! installed or copied `srcache` finds them without the source tree.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{IngestError, Result};

/// (file name, PNG bytes), in name order.
pub const PHOTOS: [(&str, &[u8]); 5] = [
    ("astronaut.png", include_bytes!("../assets/photos/astronaut.png")),
    ("chelsea.png", include_bytes!("../assets/photos/chelsea.png")),
    ("coffee.png", include_bytes!("../assets/photos/coffee.png")),
    ("hubble.png", include_bytes!("../assets/photos/hubble.png")),
    ("rocket.png", include_bytes!("../assets/photos/rocket.png")),
];

const LICENSE: &str = include_str!("../assets/photos/LICENSE.md");

/// Writes the photos (and their licence) into `dir` (created), skipping files already there with the same
/// bytes; returns `dir`.
pub fn extract(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| IngestError::write(dir, e))?;
    for (name, bytes) in PHOTOS.iter().copied().chain(std::iter::once(("LICENSE.md", LICENSE.as_bytes()))) {
        let p = dir.join(name);
        if std::fs::read(&p).is_ok_and(|b| b == bytes) {
            continue;
        }
        srcache_formats::write_atomic(&p, bytes).map_err(|e| IngestError::write(&p, e))?;
    }
    Ok(dir.to_path_buf())
}

/// One embedded photo, decoded.
pub fn decode(name: &str) -> Result<RgbImage> {
    let (_, bytes) = PHOTOS
        .iter()
        .find(|(n, _)| *n == name || n.strip_suffix(".png") == Some(name))
        .ok_or_else(|| IngestError::Config { what: format!("no built-in photo {name:?} ({})", PHOTOS.map(|(n, _)| n).join(", ")) })?;
    image::load_from_memory(bytes).map(|i| i.into_rgb8()).map_err(|e| IngestError::decode(Path::new(name), e))
}
