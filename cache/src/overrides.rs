//! Settings given on top of a cache config (the `srcache cache` flags): each one given replaces the config's
//! field. Library logic, not CLI: the binary only parses its flags into a [`CacheOverrides`].

use std::path::PathBuf;

use srcache_experts::{ExpertSource, ExpertSpec};

use crate::config::{CacheConfig, ExpertConfig, Placement};
use crate::error::{CacheError, Result};
use crate::storage::StoragePreset;

/// Overrides of a [`CacheConfig`]; `None`, `false` and empty lists leave the config's value.
#[derive(Debug, Clone, Default)]
pub struct CacheOverrides {
    pub hr_dir: Option<PathBuf>,
    pub lr_dir: Option<PathBuf>,
    pub scale: Option<u32>,
    pub patch: Option<u32>,
    pub stride: Option<u32>,
    pub halo: Option<u32>,
    pub limit: Option<u64>,
    /// Replaces the config's `input.variants` when not empty.
    pub variants: Vec<String>,
    /// `NAME=SOURCE[@DEVICE]` specs; replace the config's experts when not empty.
    pub experts: Vec<String>,
    /// Applied to every expert (after `experts`).
    pub storage: StoragePreset,
    pub out: Option<PathBuf>,
    pub devices: Option<String>,
    pub expert_split: bool,
    pub batch: Option<usize>,
    pub fp16: bool,
    pub shard_mb: Option<u64>,
    /// `K/N`, or `slurm` (`auto`) for the part the environment names ([`srcache_ingest::partition::part_from_env`]).
    pub part: Option<String>,
}

impl ExpertConfig {
    /// An expert from a `NAME=SOURCE[@DEVICE]` spec (the `--expert` flag), with the default storage.
    pub fn from_spec(spec: &str) -> Result<ExpertConfig> {
        let spec: ExpertSpec = spec.parse()?;
        let mut e = match spec.source {
            ExpertSource::Builtin(b) => ExpertConfig::builtin(&spec.name, b),
            ExpertSource::TorchScript(p) => ExpertConfig::torchscript(&spec.name, p),
        };
        e.device = spec.device;
        Ok(e)
    }
}

impl CacheConfig {
    /// This config with `o` applied; `env` reads the environment for `part = slurm`.
    pub fn with_overrides(mut self, o: &CacheOverrides, env: impl Fn(&str) -> Option<String>) -> Result<CacheConfig> {
        let input = &mut self.input;
        set(&mut input.hr_dir, o.hr_dir.clone());
        if o.lr_dir.is_some() {
            input.lr_dir = o.lr_dir.clone();
        }
        set(&mut input.scale, o.scale);
        set(&mut input.patch, o.patch);
        if o.stride.is_some() {
            input.stride = o.stride;
        }
        set(&mut input.halo, o.halo);
        if o.limit.is_some() {
            input.limit = o.limit;
        }
        if !o.variants.is_empty() {
            input.variants = o.variants.clone();
        }
        if let Some(p) = &o.part {
            input.part = Some(match p.as_str() {
                "slurm" | "auto" => srcache_ingest::partition::part_from_env(env)?,
                spec => spec.parse()?,
            });
        }
        if !o.experts.is_empty() {
            self.experts = o.experts.iter().map(|s| ExpertConfig::from_spec(s)).collect::<Result<_>>()?;
        }
        self.experts.iter_mut().for_each(|e| o.storage.apply(e));
        set(&mut self.out, o.out.clone());
        set(&mut self.devices, o.devices.clone());
        if o.expert_split {
            self.placement = Placement::ExpertSplit;
        }
        set(&mut self.batch, o.batch);
        self.fp16 |= o.fp16;
        if let Some(mb) = o.shard_mb {
            self.target_shard_bytes =
                mb.checked_mul(1 << 20).ok_or_else(|| CacheError::Config { what: format!("shard size {mb} MiB is too large") })?;
        }
        Ok(self)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_overrides_replace_fields_and_the_rest_stay() {
        let base = CacheConfig { batch: 7, ..Default::default() };
        let o = CacheOverrides {
            patch: Some(32),
            experts: vec!["b=builtin:bicubic@cuda:1".into()],
            part: Some("slurm".into()),
            shard_mb: Some(3),
            ..Default::default()
        };
        let env = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("1".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("2".to_string()),
            _ => None,
        };
        let cfg = base.clone().with_overrides(&o, env).expect("overrides");
        assert_eq!((cfg.input.patch, cfg.input.stride, cfg.batch, cfg.target_shard_bytes), (32, None, 7, 3 << 20));
        assert_eq!((cfg.experts.len(), cfg.experts[0].device.as_deref()), (1, Some("cuda:1")));
        assert_eq!(cfg.input.part.map(|p| (p.index, p.count)), Some((1, 2)));
        let e = base.with_overrides(&CacheOverrides { shard_mb: Some(u64::MAX), ..Default::default() }, |_| None).expect_err("overflow");
        assert!(e.to_string().contains("too large"), "{e}");
    }
}
