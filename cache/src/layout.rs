//! The shard schema of a run: which tensor holds what, with shapes measured by probing the experts.

use std::collections::BTreeMap;

use srcache_formats::{attr, DType, PcaBasis, Schema, TensorName, TensorSpec};
use tch::{Kind, Tensor};

use crate::config::CacheConfig;
use crate::error::{CacheError, Result};
use srcache_experts::Expert;

pub(crate) struct ExpertLayout {
    pub name: String,
    pub sr_dtype: DType,
    pub feat_dtype: DType,
    /// Features are stored as their coefficients on this basis.
    pub pca: Option<PcaBasis>,
    /// Feature resolution over LR resolution as `(num, den)` (1/1 for LR-sized features, 1/2 for half):
    /// where a patch's features lie inside the features of its halo window.
    pub feat_ratio: (usize, usize),
}

#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Lr,
    Hr,
    Sr(usize),
    Feat(usize),
}

pub(crate) struct Layout {
    pub scale: u32,
    pub patch: usize,
    /// LR context each side of the patch in the experts' input (0 = bare patches).
    pub halo: usize,
    pub experts: Vec<ExpertLayout>,
    pub schema: Schema,
    slots: BTreeMap<String, Slot>,
}

impl Layout {
    /// `probes[i]` is a loaded instance of expert i (any device).
    pub fn build(cfg: &CacheConfig, probes: &[&Expert], bases: &BTreeMap<String, PcaBasis>) -> Result<Layout> {
        let scale = cfg.input.scale;
        let p = cfg.input.patch as usize;
        let hp = p * scale as usize;
        let (lr, hr) = (TensorName::Lr.to_string(), TensorName::Hr.to_string());
        let mut tensors =
            vec![TensorSpec::new(&lr, DType::U8, &[3, p, p], cfg.image_codec), TensorSpec::new(&hr, DType::U8, &[3, hp, hp], cfg.image_codec)];
        let mut slots = BTreeMap::from([(lr, Slot::Lr), (hr, Slot::Hr)]);
        let mut experts = Vec::new();
        let mut attrs = BTreeMap::new();
        attrs.insert(attr::SCALE.to_string(), scale.to_string());
        attrs.insert(attr::PATCH.to_string(), p.to_string());
        // Always written (0 too), so a schema says what its experts saw; older caches lack it and read as 0.
        attrs.insert(attr::HALO.to_string(), cfg.input.halo.to_string());
        attrs.insert(attr::EXPERTS.to_string(), cfg.experts.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(","));
        for (i, (ec, ex)) in cfg.experts.iter().zip(probes).enumerate() {
            let probe = ex.probe(p, p)?;
            let storage = ec.storage()?;
            let feat_dtype = storage.feat_dtype;
            if ec.keeps("sr") {
                let name = TensorName::sr(&ec.name).to_string();
                tensors.push(TensorSpec::new(&name, storage.sr_dtype, &probe.sr, storage.sr_codec));
                slots.insert(name, Slot::Sr(i));
            }
            let pca = bases.get(&ec.name).cloned();
            let feat_channels = probe.feat.as_ref().and_then(|s| s.first().copied()).unwrap_or(0);
            if let (true, Some(shape)) = (ec.keeps("feat"), &probe.feat) {
                let name = TensorName::feat(&ec.name).to_string();
                let mut shape = shape.clone();
                if let Some(b) = &pca {
                    if b.channels != feat_channels {
                        return Err(CacheError::Config {
                            what: format!("expert {}: its PCA basis is for {} channels, the expert has {feat_channels}", ec.name, b.channels),
                        });
                    }
                    shape[0] = b.k;
                }
                tensors.push(TensorSpec::new(&name, feat_dtype, &shape, storage.feat_codec));
                slots.insert(name, Slot::Feat(i));
            }
            attrs.insert(attr::expert_source(&ec.name), ex.source().to_string());
            let feat_h = probe.feat.as_ref().and_then(|s| s.get(1).copied()).unwrap_or(p);
            let g = gcd(feat_h, p).max(1);
            let feat_ratio = (feat_h / g, p / g);
            experts.push(ExpertLayout { name: ec.name.clone(), sr_dtype: ec.dtype, feat_dtype, pca, feat_ratio });
        }
        let mut schema = Schema::new(tensors);
        schema.attrs = attrs;
        for e in &experts {
            if let Some(b) = &e.pca {
                schema.set_pca(&e.name, b)?;
            }
        }
        schema.validate()?;
        Ok(Layout { scale, patch: p, halo: cfg.input.halo as usize, experts, schema, slots })
    }

    pub fn slot(&self, name: &str) -> Option<Slot> {
        self.slots.get(name).copied()
    }

    /// Bytes of one sample if every tensor were stored as raw f32, features with all their channels: the
    /// baseline of the compression ratio.
    pub fn raw_f32_bytes(&self) -> u64 {
        let full = |t: &TensorSpec| -> u64 {
            let pca = match t.name.parse::<TensorName>() {
                Ok(TensorName::Feat(e)) => self.experts.iter().find(|x| x.name == e).and_then(|x| x.pca.as_ref()),
                _ => None,
            };
            match pca {
                Some(b) => (t.numel() / b.k.max(1) * b.channels) as u64 * 4,
                None => t.numel() as u64 * 4,
            }
        };
        self.schema.tensors.iter().map(full).sum()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Converts a [0,1] (sr) or free-range (feat) f32 tensor to its storage dtype.
pub(crate) fn to_storage(t: &Tensor, dtype: DType) -> std::result::Result<Tensor, tch::TchError> {
    match dtype {
        DType::F16 => t.f_to_kind(Kind::Half),
        DType::BF16 => t.f_to_kind(Kind::BFloat16),
        DType::F32 => t.f_to_kind(Kind::Float),
        DType::U8 | DType::U16 => t.f_mul_scalar(255.0)?.f_round()?.f_clamp(0.0, 255.0)?.f_to_kind(Kind::Uint8),
    }
}
