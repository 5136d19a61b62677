//! Finding the images of a dataset, pairing HR with LR, and decoding them to RGB8.
//!
//! The listing is built to be safe on whatever folder a user points at: directory symlinks are followed (DF2K
//! is often a folder of links into DIV2K and Flickr2K) but every canonical directory is searched once, so a
//! `loop -> .` link neither hangs nor lists an image twice; two names of the same file are listed once; only
//! regular files are read (a fifo named `x.png` would block a reader forever); and the order is sorted, so it
//! does not depend on the file system.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{IngestError, Result, Skipped};

pub const EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff"];

/// Scales srcache handles (the experts' range).
pub const SCALES: std::ops::RangeInclusive<u32> = 1..=8;

/// Largest image side decoded, in pixels. Checked on the header, before any pixel is allocated, so a file
/// claiming 60000x60000 is refused instead of taking the machine's memory.
pub const MAX_SIDE: u32 = 32_768;

/// Most bytes one decode may allocate (the decoder's buffers and the RGB8 result each stay under it).
pub const MAX_DECODE_BYTES: u64 = 2 << 30;

/// Where the images are.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScanConfig {
    /// HR folder, searched recursively.
    pub hr_dir: PathBuf,
    /// Optional LR folder (DIV2K `0001x4.png` or same-name pairing). Without it, LR is generated.
    pub lr_dir: Option<PathBuf>,
    pub scale: u32,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig { hr_dir: PathBuf::new(), lr_dir: None, scale: 4 }
    }
}

impl ScanConfig {
    pub fn validate(&self) -> Result<()> {
        check_scale(self.scale)
    }
}

/// `scale` must be in [`SCALES`]: 0 has no LR, and beyond 8 no expert exists.
pub fn check_scale(scale: u32) -> Result<()> {
    if !SCALES.contains(&scale) {
        return Err(IngestError::Config { what: format!("scale {scale} is outside {}..={}", SCALES.start(), SCALES.end()) });
    }
    Ok(())
}

/// One image of the dataset: its HR file, the paired LR file if any, and its stem (the id prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub stem: String,
    pub hr: PathBuf,
    pub lr: Option<PathBuf>,
}

/// The result of a scan: images in sorted (deterministic) order, and what could not be used.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub images: Vec<ImageEntry>,
    /// Files found but not usable, sorted by path: no LR partner, unreadable (e.g. a dangling symlink), not a
    /// regular file, or the same stem as an earlier image. A strict run fails on the first.
    pub skipped: Vec<Skipped>,
    /// Worth saying but not a fault: a directory reached twice through links (not searched again), a second
    /// name of a file already listed (listed once).
    pub notes: Vec<String>,
    /// The fingerprints taken by [`ScanReport::fingerprint`]: a stream made from this report checks every
    /// file it decodes against them, so bytes that changed since then never become samples.
    pub fingerprints: Option<std::sync::Arc<crate::inputs::Fingerprints>>,
}

impl ScanReport {
    /// Fingerprints the images ([`crate::InputList::of`]) and keeps the fingerprints for the stream to check
    /// each file's bytes against as it decodes them: an input replaced while the run reads it (and perhaps
    /// restored afterwards) is an error naming it, never samples of a version the record does not describe.
    pub fn fingerprint(&mut self, cfg: &ScanConfig) -> crate::InputList {
        let list = crate::InputList::of(&self.images, cfg);
        self.fingerprints = Some(std::sync::Arc::new(crate::inputs::Fingerprints::of(&self.images, cfg, &list)));
        list
    }
}

/// The image files under a folder, with what the search could not read.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Regular image files, sorted by path; each canonical file once (its first name in sorted order).
    pub files: Vec<PathBuf>,
    /// Entries with an image name that cannot be read (dangling link, fifo, unreadable sub-folder).
    pub skipped: Vec<Skipped>,
    pub notes: Vec<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).map(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())).unwrap_or(false)
}

/// Every image file under `dir`, recursively (see the module doc for links, loops and special files).
/// Fails only when `dir` itself cannot be read; anything below it that cannot be read is listed as skipped.
pub fn list_dir(dir: &Path) -> Result<Listing> {
    let root = fs::canonicalize(dir).map_err(|source| IngestError::ReadDir { path: dir.to_path_buf(), source })?;
    let mut out = Listing::default();
    // Canonical directory -> the path it was first reached by.
    let mut dirs: HashMap<PathBuf, PathBuf> = HashMap::from([(root, dir.to_path_buf())]);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d).and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>()) {
            Ok(v) => v,
            Err(source) if d == dir => return Err(IngestError::ReadDir { path: d, source }),
            Err(source) => {
                out.skipped.push(Skipped::new(&d, &IngestError::ReadDir { path: d.clone(), source }));
                continue;
            }
        };
        let mut entries = entries;
        // Sorted, so which of two links to one directory is searched does not depend on the file system.
        entries.sort();
        let mut subdirs = Vec::new();
        for p in entries {
            // `metadata` follows links: a link to a directory is searched, a link to an image is read.
            match fs::metadata(&p) {
                Err(source) => {
                    if is_image(&p) {
                        out.skipped.push(Skipped::new(&p, &IngestError::Unreadable { path: p.clone(), source }));
                    }
                }
                Ok(m) if m.is_dir() => match fs::canonicalize(&p) {
                    Ok(c) => match dirs.entry(c) {
                        Entry::Occupied(first) => out.notes.push(format!(
                            "{}: directory already searched as {} (a symlink loop or a second link); not searched again",
                            p.display(),
                            first.get().display()
                        )),
                        Entry::Vacant(v) => {
                            v.insert(p.clone());
                            subdirs.push(p);
                        }
                    },
                    Err(source) => out.skipped.push(Skipped::new(&p, &IngestError::ReadDir { path: p.clone(), source })),
                },
                Ok(m) if is_image(&p) => {
                    if m.is_file() {
                        found.push(p);
                    } else {
                        out.skipped.push(Skipped::new(&p, &IngestError::NotAFile { path: p.clone() }));
                    }
                }
                Ok(_) => {}
            }
        }
        // Popped smallest first.
        stack.extend(subdirs.into_iter().rev());
    }
    found.sort();
    let mut files: HashMap<PathBuf, PathBuf> = HashMap::new();
    for p in found {
        match fs::canonicalize(&p) {
            Ok(c) => match files.entry(c) {
                Entry::Occupied(first) => out.notes.push(format!("{}: the same file as {}; listed once", p.display(), first.get().display())),
                Entry::Vacant(v) => {
                    v.insert(p.clone());
                    out.files.push(p);
                }
            },
            Err(source) => out.skipped.push(Skipped::new(&p, &IngestError::Unreadable { path: p.clone(), source })),
        }
    }
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// All image files under `dir`, recursively, sorted by path (see [`list_dir`]; what cannot be read is left out).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list_dir(dir)?.files)
}

/// The id prefix and LR name stem of an image file (lossy for names that are not UTF-8).
pub fn stem_of(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Keeps the first file of each stem (files sorted by path): `a/0001.png` and `b/0001.png`, or `x.jpg` and
/// `x.png`, would give the same sample ids and the same LR file name. Returns (stem, file) pairs and the
/// later files, skipped with a reason naming both.
pub fn unique_stems(files: Vec<PathBuf>) -> (Vec<(String, PathBuf)>, Vec<Skipped>) {
    let mut first: HashMap<String, PathBuf> = HashMap::new();
    let mut keep = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for p in files {
        let stem = stem_of(&p);
        match first.entry(stem.clone()) {
            Entry::Occupied(f) => {
                let e = IngestError::DuplicateStem { path: p.clone(), first: f.get().clone() };
                skipped.push(Skipped::new(&p, &e));
            }
            Entry::Vacant(v) => {
                v.insert(p.clone());
                keep.push((stem, p));
            }
        }
    }
    (keep, skipped)
}

/// Scans the HR folder and pairs every image with its LR file (`<stem>x<scale>.*` or `<stem>.*`).
pub fn scan(cfg: &ScanConfig) -> Result<ScanReport> {
    cfg.validate()?;
    let listing = list_dir(&cfg.hr_dir)?;
    if listing.files.is_empty() {
        return Err(IngestError::NoImages { path: cfg.hr_dir.clone() });
    }
    let mut report = ScanReport { images: Vec::new(), skipped: listing.skipped, notes: listing.notes, fingerprints: None };
    let (hr, dups) = unique_stems(listing.files);
    report.skipped.extend(dups);
    let mut lr_by_stem: HashMap<String, PathBuf> = HashMap::new();
    if let Some(d) = &cfg.lr_dir {
        let lr = list_dir(d)?;
        report.notes.extend(lr.notes);
        report.skipped.extend(lr.skipped);
        for p in lr.files {
            // Sorted: the first file of a stem is the partner, as on the HR side.
            lr_by_stem.entry(stem_of(&p)).or_insert(p);
        }
    }
    for (stem, path) in hr {
        let lr = match &cfg.lr_dir {
            None => None,
            Some(lr_dir) => {
                let found = lr_by_stem.get(&format!("{stem}x{}", cfg.scale)).or_else(|| lr_by_stem.get(&stem));
                match found {
                    Some(p) => Some(p.clone()),
                    None => {
                        let e = IngestError::Unpaired { path: path.clone(), lr_dir: lr_dir.clone() };
                        report.skipped.push(Skipped::new(&path, &e));
                        continue;
                    }
                }
            }
        };
        report.images.push(ImageEntry { stem, hr: path, lr });
    }
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// The bytes of an image file, read once: only a regular file is opened (a FIFO swapped in after the scan is
/// refused, not waited on), and one over [`MAX_DECODE_BYTES`] is refused before it is read.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let unreadable = |source| IngestError::Unreadable { path: path.to_path_buf(), source };
    let mut f = srcache_formats::open_regular(path).map_err(unreadable)?;
    let len = f.metadata().map_err(unreadable)?.len();
    if len > MAX_DECODE_BYTES {
        return Err(unreadable(std::io::Error::other(format!("{len} bytes, over the {} GiB limit of one image file", MAX_DECODE_BYTES >> 30))));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.read_to_end(&mut bytes).map_err(unreadable)?;
    Ok(bytes)
}

fn reader<'a>(path: &Path, bytes: &'a [u8]) -> Result<image::ImageReader<std::io::Cursor<&'a [u8]>>> {
    let mut r = image::ImageReader::new(std::io::Cursor::new(bytes));
    // The extension's format unless the content says otherwise (what `ImageReader::open` does).
    if let Ok(f) = image::ImageFormat::from_path(path) {
        r.set_format(f);
    }
    r.with_guessed_format().map_err(|source| IngestError::Unreadable { path: path.to_path_buf(), source })
}

/// Decodes any supported file to RGB8. 16-bit samples are rounded to 8 bits (v·255/65535, the `image`
/// crate's conversion); grayscale is replicated to RGB; an alpha channel is dropped (the returned flag says so);
/// an EXIF orientation (JPEG, TIFF, WebP, PNG eXIf) is applied, so the pixels are the picture as a viewer shows
/// it. The header is read first: images over [`MAX_SIDE`] a side or [`MAX_DECODE_BYTES`] of RGB8 are refused
/// before any pixel is allocated, and the decoder runs under the same limits.
pub fn decode_rgb8(path: &Path) -> Result<(RgbImage, bool)> {
    decode_rgb8_checked(path, None)
}

/// The size of an image from its header (no pixel decoded; regular files only).
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let unreadable = |source| IngestError::Unreadable { path: path.to_path_buf(), source };
    let f = srcache_formats::open_regular(path).map_err(unreadable)?;
    let mut r = image::ImageReader::new(std::io::BufReader::new(f));
    if let Ok(fmt) = image::ImageFormat::from_path(path) {
        r.set_format(fmt);
    }
    r.with_guessed_format().map_err(unreadable)?.into_dimensions().map_err(|e| IngestError::decode(path, e))
}

/// [`decode_rgb8`] of bytes that must be the ones fingerprinted as `expect` (when given): a file replaced since
/// is [`IngestError::Changed`], checked on the very bytes that are decoded.
pub fn decode_rgb8_checked(path: &Path, expect: Option<&crate::inputs::InputFile>) -> Result<(RgbImage, bool)> {
    let bytes = read_image_file(path)?;
    if let Some(what) = expect.and_then(|want| want.differs_from(&bytes)) {
        return Err(IngestError::Changed { path: path.to_path_buf(), what });
    }
    let (width, height) = reader(path, &bytes)?.into_dimensions().map_err(|e| IngestError::decode(path, e))?;
    let too_large = || IngestError::TooLarge { path: path.to_path_buf(), width, height, max_side: MAX_SIDE, max_gib: MAX_DECODE_BYTES >> 30 };
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 * 3 > MAX_DECODE_BYTES {
        return Err(too_large());
    }
    let mut r = reader(path, &bytes)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    r.limits(limits);
    let map = |e| match e {
        // E.g. a 16-bit RGBA image whose decoded buffer would pass the limit although its RGB8 would not.
        image::ImageError::Limits(_) => too_large(),
        e => IngestError::decode(path, e),
    };
    let mut decoder = r.into_decoder().map_err(map)?;
    // A missing or unreadable orientation is the identity: the pixels as stored.
    let orientation = image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(map)?;
    img.apply_orientation(orientation);
    let had_alpha = img.color().has_alpha();
    Ok((img.into_rgb8(), had_alpha))
}

/// Decodes every file in parallel and drops the pixels: the decode-only baseline of `bench ingest`.
/// Returns how many decoded successfully.
pub fn decode_all(files: &[PathBuf]) -> usize {
    use rayon::prelude::*;
    files.par_iter().filter(|f| decode_rgb8(f).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32) {
        image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30])).save(path).expect("save png");
    }

    #[test]
    fn symlink_loops_and_second_names_are_listed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        png(&d.join("a.png"), 4, 4);
        png(&d.join("sub/b.png"), 4, 4);
        std::os::unix::fs::symlink(".", d.join("loop")).expect("link");
        std::os::unix::fs::symlink("..", d.join("sub/up")).expect("link");
        std::os::unix::fs::symlink("a.png", d.join("c.png")).expect("link");
        std::os::unix::fs::symlink("missing.png", d.join("dangling.png")).expect("link");
        let l = list_dir(d).expect("list");
        assert_eq!(l.files, vec![d.join("a.png"), d.join("sub/b.png")]);
        assert_eq!(l.skipped.len(), 1, "{:?}", l.skipped);
        assert!(l.skipped[0].path.ends_with("dangling.png") && l.skipped[0].reason.contains("cannot read"));
        assert!(l.notes.iter().any(|n| n.contains("loop") && n.contains("already searched")), "{:?}", l.notes);
        assert!(l.notes.iter().any(|n| n.contains("c.png") && n.contains("same file")), "{:?}", l.notes);
    }

    #[test]
    fn a_linked_directory_is_searched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (real, top) = (dir.path().join("real"), dir.path().join("top"));
        std::fs::create_dir_all(&real).expect("mkdir");
        std::fs::create_dir_all(&top).expect("mkdir");
        png(&real.join("x.png"), 4, 4);
        std::os::unix::fs::symlink(&real, top.join("DIV2K")).expect("link");
        assert_eq!(list_images(&top).expect("list"), vec![top.join("DIV2K/x.png")]);
    }

    #[test]
    fn same_stems_keep_the_first_and_name_both() {
        let files = vec![PathBuf::from("/a/0001.png"), PathBuf::from("/b/0001.png"), PathBuf::from("/c/x.jpg"), PathBuf::from("/c/x.png")];
        let (keep, skipped) = unique_stems(files);
        assert_eq!(keep.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), vec![PathBuf::from("/a/0001.png"), PathBuf::from("/c/x.jpg")]);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].reason.contains("/b/0001.png") && skipped[0].reason.contains("/a/0001.png"), "{}", skipped[0].reason);
        assert!(skipped[1].reason.contains("/c/x.png") && skipped[1].reason.contains("/c/x.jpg"));
    }

    #[test]
    fn huge_headers_are_refused_before_decoding() {
        // A valid PNG signature and IHDR claiming 60000x60000 RGB8 (10.8 GB), then an empty zlib stream.
        fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(kind);
            c.extend_from_slice(data);
            let crc = crc32(&[kind, data].concat());
            c.extend_from_slice(&crc.to_be_bytes());
            c
        }
        fn crc32(bytes: &[u8]) -> u32 {
            let mut c = 0xffff_ffffu32;
            for &b in bytes {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        }
        let mut ihdr = 60_000u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&60_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
        png.extend(chunk(b"IEND", &[]));
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("huge.png");
        std::fs::write(&p, png).expect("write");
        let e = decode_rgb8(&p).expect_err("refused");
        assert!(matches!(e, IngestError::TooLarge { width: 60_000, height: 60_000, .. }), "{e}");
        assert!(e.to_string().contains("huge.png") && e.is_input_fault());
    }

    #[test]
    fn scale_is_checked() {
        for s in [0, 9, 1000] {
            let cfg = ScanConfig { scale: s, ..Default::default() };
            assert!(scan(&cfg).err().is_some_and(|e| e.to_string().contains("outside 1..=8")));
        }
    }
}
