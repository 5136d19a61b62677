//! Splitting one input into N parts for N machines (SLURM array tasks, Kubernetes indexed jobs): part K of N
//! is a contiguous range of the sorted image list, cut where the running pixel count crosses K/N of the total,
//! so parts take similar time (DIV2K and Flickr2K images differ several-fold in size) and concatenating parts
//! 0..N in order gives exactly the single-process sample order. Sizes come from image headers only.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::IngestError;
use crate::scan::ImageEntry;

/// Part `index` of `count` (0-based: `0/3`, `1/3`, `2/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl Part {
    pub fn new(index: u32, count: u32) -> Result<Part, IngestError> {
        if count == 0 || index >= count {
            return Err(IngestError::Config {
                what: format!(
                    "part {index}/{count}: need 0 <= K < N (parts are numbered from 0: 0/{n} .. {last}/{n})",
                    n = count.max(1),
                    last = count.max(1) - 1
                ),
            });
        }
        Ok(Part { index, count })
    }

    /// The folder name of this part under `OUT/parts/`: `K-of-N`.
    pub fn dir_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// Parses a part folder name (`K-of-N`).
    pub fn from_dir_name(name: &str) -> Option<Part> {
        let (k, n) = name.split_once("-of-")?;
        Part::new(k.parse().ok()?, n.parse().ok()?).ok()
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Part {
    type Err = IngestError;
    fn from_str(s: &str) -> Result<Part, IngestError> {
        let bad = || IngestError::Config { what: format!("part {s:?}: expected K/N with 0 <= K < N (e.g. 0/3), or `slurm`") };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        Part::new(k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?)
    }
}

/// Reads this process's part from the scheduler: SLURM array jobs (`SLURM_ARRAY_TASK_ID`) or Kubernetes Indexed
/// Jobs (`JOB_COMPLETION_INDEX`) give K; N is `SRCACHE_PART_COUNT` when set (needed when one part is resubmitted
/// alone with `--array=K`, and on Kubernetes, which does not tell a pod its Job's completions), else
/// `SLURM_ARRAY_TASK_COUNT`. Array task ids must run 0..N-1.
pub fn part_from_env(get: impl Fn(&str) -> Option<String>) -> Result<Part, IngestError> {
    let num = |name: &str| -> Result<Option<u32>, IngestError> {
        match get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| IngestError::Config { what: format!("{name}={v:?} is not a number") }),
        }
    };
    let (index, from) = match (num("SLURM_ARRAY_TASK_ID")?, num("JOB_COMPLETION_INDEX")?) {
        (Some(k), _) => (k, "SLURM_ARRAY_TASK_ID"),
        (None, Some(k)) => (k, "JOB_COMPLETION_INDEX"),
        (None, None) => {
            return Err(IngestError::Config {
                what: "--part slurm: neither SLURM_ARRAY_TASK_ID (a SLURM array job) nor JOB_COMPLETION_INDEX (a Kubernetes \
                       Indexed Job) is set; outside a scheduler give the part explicitly, e.g. --part 0/3"
                    .into(),
            })
        }
    };
    let count = match (num("SRCACHE_PART_COUNT")?, num("SLURM_ARRAY_TASK_COUNT")?) {
        (Some(n), _) => n,
        (None, Some(n)) if from == "SLURM_ARRAY_TASK_ID" => n,
        _ => {
            return Err(IngestError::Config {
                what: format!("--part slurm: {from}={index} is set but not the part count: set SRCACHE_PART_COUNT (or run as a SLURM array job)"),
            })
        }
    };
    Part::new(index, count).map_err(|e| IngestError::Config { what: format!("--part slurm: {from}={index}, count {count}: {e}") })
}

/// Weight of an image for balancing: its HR pixel count from the header (capped, so one absurd header cannot
/// swallow a part); 0 when the header cannot be read (the file is reported as skipped by whichever part has it).
fn weight(entry: &ImageEntry) -> u64 {
    const CAP: u64 = 1 << 28;
    image::image_dimensions(&entry.hr).map(|(w, h)| (w as u64 * h as u64).min(CAP)).unwrap_or(0)
}

/// The images of `part`: a contiguous range of `images` (already in scan order) holding about 1/N of the pixels.
/// Image `i` goes to the part whose share contains the midpoint of its pixels on the running total, so every
/// image belongs to exactly one part whatever N is.
pub fn select(images: &[ImageEntry], part: Part) -> Range<usize> {
    let weights: Vec<u64> = images.iter().map(weight).collect();
    range_of(&weights, part)
}

fn range_of(weights: &[u64], part: Part) -> Range<usize> {
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    let n = part.count as u128;
    let owner = |mid2: u128| -> u128 {
        // part = floor(mid · N / total), with mid = running + w/2 (doubled to stay in integers).
        if total == 0 {
            0
        } else {
            (mid2 * n / (2 * total)).min(n - 1)
        }
    };
    let (mut start, mut end) = (None, weights.len());
    let mut running: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let p = if total == 0 { (i as u128 * n) / weights.len().max(1) as u128 } else { owner(2 * running + w as u128) };
        running += w as u128;
        if p == part.index as u128 && start.is_none() {
            start = Some(i);
        }
        if p > part.index as u128 {
            end = i;
            break;
        }
    }
    let start = start.unwrap_or(end);
    start..end.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_list_in_order_and_balance_pixels() {
        let w: Vec<u64> = (0..37).map(|i| 1000 + (i * 7919 % 13) * 400).collect();
        for n in 1..=6u32 {
            let ranges: Vec<Range<usize>> = (0..n).map(|k| range_of(&w, Part { index: k, count: n })).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[n as usize - 1].end, w.len());
            for p in ranges.windows(2) {
                assert_eq!(p[0].end, p[1].start, "n={n}: {ranges:?}");
            }
            let total: u64 = w.iter().sum();
            for r in &ranges {
                let s: u64 = w[r.clone()].iter().sum();
                let max_w = *w.iter().max().unwrap_or(&0);
                assert!(s.abs_diff(total / n as u64) <= max_w, "n={n}: part holds {s} of {total}");
            }
        }
        assert!("3/2".parse::<Part>().is_err() && "0/0".parse::<Part>().is_err() && "x".parse::<Part>().is_err());
        assert_eq!("1/3".parse::<Part>().ok(), Some(Part { index: 1, count: 3 }));
        assert_eq!(Part::from_dir_name("2-of-5"), Some(Part { index: 2, count: 5 }));
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(part_from_env(env(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3")])).ok(), Some(Part { index: 2, count: 3 }));
        assert_eq!(
            part_from_env(env(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "1"), ("SRCACHE_PART_COUNT", "3")])).ok(),
            Some(Part { index: 1, count: 3 })
        );
        assert_eq!(part_from_env(env(&[("JOB_COMPLETION_INDEX", "0"), ("SRCACHE_PART_COUNT", "4")])).ok(), Some(Part { index: 0, count: 4 }));
        assert!(part_from_env(env(&[])).is_err_and(|e| e.to_string().contains("SLURM_ARRAY_TASK_ID")));
        assert!(part_from_env(env(&[("JOB_COMPLETION_INDEX", "0")])).is_err());
        assert!(part_from_env(env(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")])).is_err());
    }
}
