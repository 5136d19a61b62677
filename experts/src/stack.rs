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
}

impl SrStack {
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
                Err(first @ ExpertError::InputSize { .. }) => {
                    let fallback = known_size.filter(|&k| k != probe).and_then(|k| Expert::load(name, source, scale, device, k).ok().map(|e| (k, e)));
                    match fallback {
                        Some((k, expert)) => {
                            notes.push(format!(
                                "expert {name} does not accept {probe}x{probe} inputs; it runs in {k}x{k} tiles, the size the cache ran it at"
                            ));
                            let t = Tiling { tile: k as i64, overlap: tiling.overlap.min(k as i64 / 4) };
                            out.push(StackExpert { expert, tiling: t });
                        }
                        None => return Err(first),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(SrStack { scale, device, experts: out, notes })
    }

    pub fn names(&self) -> Vec<String> {
        self.experts.iter().map(|e| e.expert.name().to_string()).collect()
    }

    /// Runs every expert once over `lr` [1,3,H,W] (any device) in its tiles; one pass gives sr and features.
    pub fn run(&self, lr: &Tensor, want_feat: &[bool]) -> Result<ExpertOutputs> {
        let _g = tch::no_grad_guard();
        let mut out = ExpertOutputs { srs: Vec::with_capacity(self.experts.len()), feats: Vec::new() };
        for (i, se) in self.experts.iter().enumerate() {
            let e = &se.expert;
            let want = want_feat.get(i).copied().unwrap_or(false);
            if want && !e.has_feat() {
                return Err(ExpertError::BadOutput {
                    name: e.name().into(),
                    source_desc: e.source().to_string(),
                    what: "the fusion model expects its features, but it returns none".into(),
                });
            }
            let input = lr.f_to_device(e.device()).map_err(torch("lr to expert device"))?;
            let mut parts = run_tiled_multi(&input, se.tiling, |t: &Tensor| -> Result<Vec<Tensor>> {
                let (sr, feat) = e.forward(t)?;
                Ok(match (want, feat) {
                    (true, Some(f)) => vec![sr, f],
                    _ => vec![sr],
                })
            })?;
            if want {
                out.feats.push(parts.pop().ok_or_else(|| missing(e, "features"))?);
            }
            let sr = parts.pop().ok_or_else(|| missing(e, "output"))?;
            // Blending clamped tiles stays in [0,1] up to rounding; clamp so every consumer sees the same image.
            out.srs.push(sr.f_clamp(0.0, 1.0).map_err(torch("clamp sr"))?);
        }
        Ok(out)
    }
}

fn missing(e: &Expert, what: &str) -> ExpertError {
    ExpertError::BadOutput { name: e.name().into(), source_desc: e.source().to_string(), what: format!("tiled run produced no {what}") }
}
