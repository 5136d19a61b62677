//! A set of experts run together over full images of any size, tiled with overlap blending: what `eval`,
//! `infer`, the demo and the trainer's full-image validation all use, so they report the same numbers.

use tch::{Device, Tensor};

use crate::error::{torch, ExpertError, Result};
use crate::expert::Expert;
use crate::source::ExpertSource;
use crate::tiling::{run_tiled_multi, Tiling};

/// Side used to probe experts when images run whole (no tiling).
const WHOLE_IMAGE_PROBE: usize = 64;

/// Everything the experts produce for one LR image, on the CPU in f32: `srs[i]` [1,3,sH,sW] clamped to [0,1],
/// and `feats` [1,C,h,w] for the experts flagged in `want_feat`, in expert order (the fusion model's inputs).
pub struct ExpertOutputs {
    pub srs: Vec<Tensor>,
    pub feats: Vec<Tensor>,
    /// What ran differently from the request for this image (an expert re-tiled at the cache's patch size).
    pub notes: Vec<String>,
}

/// One expert of a stack and the tiles it runs in.
pub struct StackExpert {
    pub expert: Expert,
    pub tiling: Tiling,
}

pub struct SrStack {
    pub scale: u32,
    pub device: Device,
    pub experts: Vec<StackExpert>,
    /// Notes for the user (e.g. an expert that runs at its traced size instead of the requested tile).
    pub notes: Vec<String>,
    /// An LR side every expert is known to accept (the cache's patch size): the tile of last resort.
    known_size: Option<usize>,
}

impl SrStack {
    /// The one assembly of "the experts of a cache" (eval, infer, the demo, the trainer's full-image validation):
    /// the experts `given` (name, source) in their order (a fusion model's), else the SR experts `cache`
    /// records, else the three built-ins, both sorted by name (the order a fusion model trained on all of a
    /// cache's experts takes them); at `scale`, else the cache's, else 4; the cache's patch size is the size
    /// every expert is known to accept ([`SrStack::load`]).
    pub fn assemble(
        mut given: Vec<(String, ExpertSource)>,
        cache: Option<&srcache_formats::Dataset>,
        scale: Option<u32>,
        device: Device,
        tiling: Tiling,
    ) -> Result<SrStack> {
        let schema = match cache {
            Some(ds) => Some(ds.schema().ok_or_else(|| ExpertError::File { path: ds.dir().to_path_buf(), what: "dataset has no shards".into() })?),
            None => None,
        };
        if given.is_empty() {
            given = match (cache, schema) {
                (Some(ds), Some(schema)) => crate::source::sources_from_dataset(ds, &schema.sr_experts())?,
                _ => crate::Builtin::ALL.iter().map(|b| (b.as_str().to_string(), ExpertSource::Builtin(*b))).collect(),
            };
            given.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let scale = scale.or(schema.and_then(|s| s.scale())).unwrap_or(4);
        SrStack::load(&given, scale, device, tiling, schema.and_then(|s| s.patch()).map(|p| p as usize))
    }

    /// Loads `experts` (in the order the fusion model takes them) on `device`, each probed at the tile side it
    /// will run at. `known_size`: an LR side the experts are known to accept (the cache's patch size); an
    /// expert that rejects `tiling.tile` but accepts `known_size` (a traced transformer) runs in tiles of that
    /// size, with a note saying so. Without it, such an expert is an error that names the size it needs.
    pub fn load(experts: &[(String, ExpertSource)], scale: u32, device: Device, tiling: Tiling, known_size: Option<usize>) -> Result<SrStack> {
        let whole = tiling.tile <= 0 || tiling.tile >= i64::from(i32::MAX);
        let probe = if whole { WHOLE_IMAGE_PROBE } else { tiling.tile as usize };
        let tiling = if whole { Tiling { tile: i64::from(i32::MAX), overlap: 0 } } else { tiling };
        let mut out = Vec::with_capacity(experts.len());
        let mut notes = Vec::new();
        for (name, source) in experts {
            match Expert::load(name, source, scale, device, probe) {
                Ok(expert) => out.push(StackExpert { expert, tiling }),
                Err(first @ (ExpertError::InputSize { .. } | ExpertError::SizeRefused { .. })) => {
                    // The cache's patch size, else the size the file's metadata says it takes (its traced size).
                    let own = own_size(source);
                    let fallback = known_size
                        .map(|k| (k, "the size the cache ran it at"))
                        .into_iter()
                        .chain(own.map(|k| (k, "the size its metadata names")))
                        .filter(|&(k, _)| k != probe)
                        .find_map(|(k, why)| Expert::load(name, source, scale, device, k).ok().map(|e| (k, why, e)));
                    match fallback {
                        Some((k, why, expert)) => {
                            notes.push(format!("expert {name} does not accept {probe}x{probe} inputs; it runs in {k}x{k} tiles, {why}"));
                            let t = Tiling { tile: k as i64, overlap: tiling.overlap.min(k as i64 / 4) };
                            out.push(StackExpert { expert, tiling: t });
                        }
                        None => return Err(first),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(SrStack { scale, device, experts: out, notes, known_size })
    }

    /// The tile of last resort for `se` on `lr`: the known size, when it differs from the tile that failed and
    /// the image holds a whole window of it.
    fn retile(&self, se: &StackExpert, lr: &Tensor) -> Option<usize> {
        let k = self.known_size.or_else(|| se.expert.meta().and_then(|m| m.known_size()))?;
        let size = lr.size();
        let fits = size.len() == 4 && size[2] >= k as i64 && size[3] >= k as i64;
        (se.tiling.tile != k as i64 && fits).then_some(k)
    }

    pub fn names(&self) -> Vec<String> {
        self.experts.iter().map(|e| e.expert.name().to_string()).collect()
    }

    /// Runs every expert once over `lr` [1,3,H,W] (any device) in its tiles; one pass gives sr and features.
    pub fn run(&self, lr: &Tensor, want_feat: &[bool]) -> Result<ExpertOutputs> {
        let _g = tch::no_grad_guard();
        let mut out = ExpertOutputs { srs: Vec::with_capacity(self.experts.len()), feats: Vec::new(), notes: Vec::new() };
        for i in 0..self.experts.len() {
            let want = want_feat.get(i).copied().unwrap_or(false);
            let (sr, feat) = self.run_expert(i, lr, want, &mut out.notes)?;
            out.srs.push(sr);
            out.feats.extend(feat);
        }
        Ok(out)
    }

    /// Expert `i` alone over `lr` [1,3,H,W], tiled as in [`SrStack::run`]: its sr on the CPU side of the
    /// tiling, clamped to [0,1] (the self-ensemble baseline runs it on each transform of the input).
    pub fn run_one(&self, i: usize, lr: &Tensor) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        Ok(self.run_expert(i, lr, false, &mut Vec::new())?.0)
    }

    fn run_expert(&self, i: usize, lr: &Tensor, want: bool, notes: &mut Vec<String>) -> Result<(Tensor, Option<Tensor>)> {
        let se = self.experts.get(i).ok_or_else(|| ExpertError::BadOutput {
            name: format!("#{i}"),
            source_desc: "expert stack".into(),
            what: format!("the stack has {} experts", self.experts.len()),
        })?;
        let e = &se.expert;
        if want && !e.has_feat() {
            return Err(ExpertError::BadOutput {
                name: e.name().into(),
                source_desc: e.source().to_string(),
                what: "the fusion model expects its features, but it returns none".into(),
            });
        }
        let input = lr.f_to_device(e.device()).map_err(torch("lr to expert device"))?;
        let tiled = |tiling: Tiling| {
            run_tiled_multi(&input, tiling, |t: &Tensor| -> Result<Vec<Tensor>> {
                let (sr, feat) = e.forward(t)?;
                Ok(match (want, feat) {
                    (true, Some(f)) => vec![sr, f],
                    _ => vec![sr],
                })
            })
        };
        let mut parts = match (tiled(se.tiling), self.retile(se, lr)) {
            // A whole tile passed the probe, but this image gave a tile of another size (an image smaller
            // than the tile runs whole): tiles of exactly the size the cache ran the expert at always fit
            // its windows, when the image holds one.
            (Err(err @ (ExpertError::InputSize { .. } | ExpertError::SizeRefused { .. })), Some(k)) => {
                let (h, w) = match err {
                    ExpertError::InputSize { h, w, .. } => (h, w),
                    ExpertError::SizeRefused { h, w, .. } => (h as i64, w as i64),
                    _ => (0, 0),
                };
                notes.push(format!(
                    "expert {} does not accept a {h}x{w} tile of this image; it ran in {k}x{k} tiles, the size the cache ran it at",
                    e.name()
                ));
                tiled(Tiling { tile: k as i64, overlap: se.tiling.overlap.min(k as i64 / 4) })?
            }
            (other, _) => other?,
        };
        let feat = if want { Some(parts.pop().ok_or_else(|| missing(e, "features"))?) } else { None };
        let sr = parts.pop().ok_or_else(|| missing(e, "output"))?;
        // Blending clamped tiles stays in [0,1] up to rounding; clamp so every consumer sees the same image.
        Ok((sr.f_clamp(0.0, 1.0).map_err(torch("clamp sr"))?, feat))
    }
}

/// The one size a model file's metadata says it takes (a TorchScript trace of a transformer), if any.
fn own_size(source: &ExpertSource) -> Option<usize> {
    match source {
        ExpertSource::TorchScript(p) => crate::meta::read_meta(p).ok().flatten().and_then(|m| m.known_size()),
        ExpertSource::Builtin(_) => None,
    }
}

fn missing(e: &Expert, what: &str) -> ExpertError {
    ExpertError::BadOutput { name: e.name().into(), source_desc: e.source().to_string(), what: format!("tiled run produced no {what}") }
}
