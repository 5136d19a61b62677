//! Compact features: a PCA basis per expert, fitted once at the start of a cache on a seeded sample of the
//! input's patches, so each feature map is stored as its `k` leading coefficients (per-channel 8-bit by
//! default) instead of all C channels. The basis is written to `<out>/feat-pca.json` and into every shard's
//! schema (`feat/<expert>/pca`), so resume, verify and merge treat it as part of the dataset's identity; the
//! parts of a partitioned cache share the one file at the root, created by whichever part fits it first.
//! The fusion model trains on the coefficients: its first layer on features is a 1×1 projection, so the basis
//! folds into it when the model is exported (trainer::export).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use srcache_experts::Expert;
use srcache_formats::PcaBasis;
use srcache_ingest::ScanReport;
use tch::{Device, Kind, Tensor};

use crate::config::{CacheConfig, PCA_FILE};
use crate::error::{torch, CacheError, Result};
use crate::Progress;

/// Defined with the rest of the config (which must not depend on this module); re-exported here, beside
/// the fit it configures.
pub use crate::config::PcaConfig;

/// Where the bases of a run live: the root of the output (shared by all parts).
pub fn basis_file(cfg: &CacheConfig) -> PathBuf {
    cfg.out.join(PCA_FILE)
}

/// The bases of the experts with `feat_pca`: read from `<out>/feat-pca.json` when it exists (a resume, or another
/// part fitted them), else fitted now with `experts` (the run's first loaded instance of each expert, in config
/// order) and written there.
pub fn fit_or_load(cfg: &CacheConfig, experts: &[&Expert], report: &ScanReport, progress: &dyn Progress) -> Result<BTreeMap<String, PcaBasis>> {
    let wanted: Vec<(usize, &PcaConfig)> = cfg.experts.iter().enumerate().filter_map(|(i, e)| e.feat_pca.as_ref().map(|p| (i, p))).collect();
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let path = basis_file(cfg);
    if let Some(found) = read(&path)? {
        if let Some((i, _)) = wanted.iter().find(|(i, _)| !found.contains_key(&cfg.experts[*i].name)) {
            return Err(CacheError::Refused {
                out: path,
                what: format!("holds no basis for expert {} (made by a run with other experts?): move it away or use --force", cfg.experts[*i].name),
            });
        }
        return Ok(found);
    }
    let mut bases = BTreeMap::new();
    for (i, pcfg) in wanted {
        let e = experts.get(i).ok_or_else(|| CacheError::Pipeline { what: format!("no loaded instance of expert {i}") })?;
        if !e.has_feat() {
            return Err(CacheError::Config { what: format!("expert {}: feat_pca is set but the expert returns no features", e.name()) });
        }
        let t = std::time::Instant::now();
        let basis = fit(cfg, e, pcfg, report, progress)?;
        progress.message(&format!("expert {}: feature PCA fitted in {:.1}s", e.name(), t.elapsed().as_secs_f64()));
        bases.insert(cfg.experts[i].name.clone(), basis);
    }
    write_once(&path, &bases)
}

fn read(path: &Path) -> Result<Option<BTreeMap<String, PcaBasis>>> {
    match srcache_formats::read_regular(path) {
        Ok(bytes) => {
            let bases: BTreeMap<String, PcaBasis> = serde_json::from_slice(&bytes)
                .map_err(|e| CacheError::ConfigFile { path: path.to_path_buf(), what: format!("not a set of PCA bases: {e}") })?;
            for (name, b) in &bases {
                b.validate().map_err(|e| CacheError::ConfigFile { path: path.to_path_buf(), what: format!("basis of {name}: {e}") })?;
            }
            Ok(Some(bases))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io { path: path.to_path_buf(), source }),
    }
}

/// Creates `path` only if no other process has: the parts of a cache started together on a shared filesystem
/// all end up with the first basis written (a hard link cannot replace an existing file, a rename could).
fn write_once(path: &Path, bases: &BTreeMap<String, PcaBasis>) -> Result<BTreeMap<String, PcaBasis>> {
    let json = serde_json::to_vec_pretty(bases).map_err(|e| CacheError::Pipeline { what: format!("PCA bases: {e}") })?;
    let tmp = srcache_formats::atomic::tmp_path(path);
    let tmp = tmp.with_extension(format!("{}.{}", std::process::id(), tmp.extension().and_then(|x| x.to_str()).unwrap_or("tmp")));
    std::fs::write(&tmp, &json).and_then(|_| std::fs::File::open(&tmp)?.sync_all()).map_err(|source| CacheError::Io { path: tmp.clone(), source })?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            srcache_formats::atomic::sync_dir(path)?;
            Ok(bases.clone())
        }
        // Another part won the race: use its basis, so every part's schema is the same.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path)?.ok_or_else(|| CacheError::Io { path: path.to_path_buf(), source: e }),
        Err(source) => Err(CacheError::Io { path: path.to_path_buf(), source }),
    }
}

/// Fits one expert's basis: its features on a seeded sample of the whole input's patches (not a part's, so
/// every part would fit the same one), mean and covariance in f64, eigen-decomposition, components sorted by
/// variance with a fixed sign (largest-magnitude entry positive).
fn fit(cfg: &CacheConfig, e: &Expert, pcfg: &PcaConfig, report: &ScanReport, progress: &dyn Progress) -> Result<PcaBasis> {
    let _g = tch::no_grad_guard();
    let mut images = report.images.clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(pcfg.seed);
    images.shuffle(&mut rng);
    images.truncate(pcfg.images.max(1));
    images.sort_by(|a, b| a.hr.cmp(&b.hr));
    let mut icfg = crate::source::ingest_config(&cfg.input);
    icfg.part = None;
    let sub = ScanReport { images, fingerprints: report.fingerprints.clone(), ..Default::default() };
    // Every patch of the sampled images, then an even spread of them.
    let mut lrs: Vec<Vec<u8>> = Vec::new();
    // Before the sample bar starts: without these lines a long fit reads as a stalled "0/N samples".
    progress.message(&format!(
        "expert {}: fitting its feature PCA on {} sampled image(s) before caching (decoding them)",
        e.name(),
        sub.images.len()
    ));
    for s in srcache_ingest::stream_from(&icfg, sub)? {
        lrs.push(srcache_ingest::shards::to_chw(&s?.lr));
    }
    let want = (pcfg.images.max(1) * pcfg.patches_per_image.max(1)).min(lrs.len());
    if want == 0 {
        return Err(CacheError::Config { what: format!("expert {}: no patches to fit its feature PCA on", e.name()) });
    }
    let picked: Vec<&Vec<u8>> = (0..want).map(|k| &lrs[k * lrs.len() / want]).collect();
    progress.message(&format!("expert {}: PCA: running it on {want} patches, then the eigen-decomposition", e.name()));
    let p = cfg.input.patch as i64;
    let mut rows: Vec<Tensor> = Vec::new();
    for chunk in picked.chunks(cfg.batch.max(1)) {
        let flat: Vec<u8> = chunk.iter().flat_map(|v| v.iter().copied()).collect();
        let x = Tensor::f_from_slice(&flat)
            .and_then(|t| t.f_reshape([chunk.len() as i64, 3, p, p]))
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_div_scalar(255.0))
            .and_then(|t| t.f_to_device(e.device()))
            .map_err(torch("PCA fit input"))?;
        let (_, feat) = e.forward(&x)?;
        let f = feat.ok_or_else(|| CacheError::Config { what: format!("expert {}: no features to fit PCA on", e.name()) })?;
        let (b, c) = (f.size()[0], f.size()[1]);
        // [B, C, h, w] -> [B, h*w, C], then evenly spaced pixels of each patch.
        let f = f
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Double))
            .and_then(|t| t.f_reshape([b, c, -1]))
            .and_then(|t| t.f_transpose(1, 2))
            .map_err(torch("PCA features"))?;
        let hw = f.size()[1];
        let step = (hw / pcfg.pixels_per_patch.max(1) as i64).max(1);
        let idx = Tensor::f_arange_start_step(0, hw, step, (Kind::Int64, Device::Cpu)).map_err(torch("PCA pixels"))?;
        rows.push(f.f_index_select(1, &idx).and_then(|t| t.f_reshape([-1, c])).map_err(torch("PCA pixels"))?);
    }
    let x = Tensor::f_cat(&rows, 0).map_err(torch("PCA samples"))?;
    let (n, c) = (x.size()[0], x.size()[1]);
    let mean = x.f_mean_dim(Some([0i64].as_slice()), true, Kind::Double).map_err(torch("PCA mean"))?;
    let xc = x.f_sub(&mean).map_err(torch("PCA centre"))?;
    let cov =
        xc.f_transpose(0, 1).and_then(|t| t.f_matmul(&xc)).and_then(|t| t.f_div_scalar((n - 1).max(1) as f64)).map_err(torch("PCA covariance"))?;
    let (vals, vecs) = cov.f_linalg_eigh("L").map_err(torch("PCA eigen-decomposition"))?;
    let vals: Vec<f64> = Vec::<f64>::try_from(vals.f_clamp_min(0.0).map_err(torch("PCA"))?).map_err(torch("PCA eigenvalues"))?;
    let vecs: Vec<f64> =
        Vec::<f64>::try_from(vecs.f_contiguous().and_then(|t| t.f_view([-1])).map_err(torch("PCA"))?).map_err(torch("PCA eigenvectors"))?;
    let c = c as usize;
    let total: f64 = vals.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    // eigh sorts ascending: the components are the last columns, largest first.
    let order: Vec<usize> = (0..c).rev().collect();
    let ratios: Vec<f64> = order.iter().map(|&j| vals[j] / total).collect();
    let k = if pcfg.k > 0 {
        pcfg.k.min(c)
    } else {
        let mut acc = 0.0;
        ratios
            .iter()
            .position(|r| {
                acc += r;
                acc >= pcfg.energy as f64
            })
            .map(|i| i + 1)
            .unwrap_or(c)
    };
    let mut components = Vec::with_capacity(k * c);
    for &j in order.iter().take(k) {
        let mut col: Vec<f64> = (0..c).map(|r| vecs[r * c + j]).collect();
        let pivot = col.iter().copied().fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
        if pivot < 0.0 {
            col.iter_mut().for_each(|v| *v = -*v);
        }
        components.extend(col.iter().map(|&v| v as f32));
    }
    let mean: Vec<f32> =
        Vec::<f64>::try_from(mean.f_view([-1]).map_err(torch("PCA"))?).map_err(torch("PCA mean"))?.into_iter().map(|v| v as f32).collect();
    let fit = BTreeMap::from([
        ("images".to_string(), pcfg.images.to_string()),
        ("patches".to_string(), want.to_string()),
        ("pixels".to_string(), n.to_string()),
        ("seed".to_string(), pcfg.seed.to_string()),
        ("energy_target".to_string(), if pcfg.k > 0 { "-".to_string() } else { pcfg.energy.to_string() }),
        ("explained".to_string(), format!("{:.6}", ratios.iter().take(k).sum::<f64>())),
        ("device".to_string(), srcache_experts::device_name(e.device())),
    ]);
    Ok(PcaBasis::new(mean, components, ratios.iter().take(k).map(|&r| r as f32).collect(), fit)?)
}
