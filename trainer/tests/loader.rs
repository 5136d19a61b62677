//! The loader over real shards: identical crop + dihedral transform on every tensor, determinism across worker
//! counts, epochs that visit each sample once, and mid-epoch resume without repeats or skips.

mod common;

use srcache_formats::Dataset;
use srcache_trainer::config::{LoaderConfig, ShuffleMode};
use srcache_trainer::loader::{Loader, LoaderPosition};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

fn ds(n: usize) -> (tempfile::TempDir, Arc<Dataset>) {
    let tmp = tempfile::tempdir().expect("tmp");
    common::make_dataset(tmp.path(), n, 16, 2);
    let d = Arc::new(Dataset::open(tmp.path()).expect("open"));
    (tmp, d)
}

fn cfg(workers: usize, mode: ShuffleMode) -> LoaderConfig {
    LoaderConfig { batch_size: 3, crop: Some(10), workers, prefetch: 2, seed: 42, shuffle: mode, ..Default::default() }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_tensor_gets_the_same_box_and_dihedral_transform() {
    let (_t, d) = ds(12);
    assert!(d.shards().len() > 1, "want several shards");
    let mut l = Loader::new(d.clone(), (0..12).collect(), &cfg(2, ShuffleMode::Global), LoaderPosition::default()).expect("loader");
    assert_eq!(l.experts, vec!["a", "b", "c"]);
    assert_eq!(l.feat_channels, vec![4, 0, 6]);
    let mut seen_transforms = std::collections::HashSet::new();
    for _ in 0..8 {
        let b = l.next_batch().expect("batch").to_device(Device::Cpu).expect("f32");
        assert_eq!(b.lr.size(), vec![3, 3, 10, 10]);
        assert_eq!(b.hr.size(), vec![3, 3, 20, 20]);
        // hr was the nearest-neighbour upsample of lr: still true after crop + transform iff both got the same.
        let up = b.lr.repeat_interleave_self_int(2, 2, None).repeat_interleave_self_int(2, 3, None);
        assert!(max_diff(&up, &b.hr) < 1e-6, "hr and lr were transformed differently");
        for (k, sr) in b.sr.iter().enumerate() {
            assert!(max_diff(&(&b.hr * common::sr_gain(k) as f64), sr) < 2e-3, "sr/{k} differs from its hr relation");
        }
        for (f, ch) in b.feat.iter().zip([4usize, 6]) {
            assert_eq!(f.size(), vec![3, ch as i64, 10, 10]);
            for c in 0..ch as i64 {
                let want = b.lr.narrow(1, c % 3, 1) * common::feat_gain(c as usize) as f64;
                assert!(max_diff(&want, &f.narrow(1, c, 1)) < 2e-3, "feat channel {c} misaligned");
            }
        }
        // Record which orientation each lr crop has, by comparing with the untransformed source crop set.
        for i in 0..3 {
            let x = b.lr.get(i);
            seen_transforms.insert(format!("{:?}", (x.double_value(&[0, 0, 0]) * 255.0).round() as i64));
        }
    }
    assert!(seen_transforms.len() > 4, "crops look identical: {seen_transforms:?}");
}

fn stream(l: &mut Loader, n: usize) -> Vec<(Vec<usize>, Vec<f32>)> {
    (0..n)
        .map(|_| {
            let b = l.next_batch().expect("batch").to_device(Device::Cpu).expect("f32");
            let v: Vec<f32> = Vec::<f32>::try_from(b.lr.flatten(0, -1)).expect("vec");
            (b.indices, v)
        })
        .collect()
}

#[test]
fn deterministic_across_worker_counts_and_resumable_mid_epoch() {
    let (_t, d) = ds(12);
    let idx: Vec<usize> = (0..12).collect();
    for mode in [ShuffleMode::Global, ShuffleMode::ShardLocal] {
        let mut one = Loader::new(d.clone(), idx.clone(), &cfg(1, mode), LoaderPosition::default()).expect("loader");
        let mut three = Loader::new(d.clone(), idx.clone(), &cfg(3, mode), LoaderPosition::default()).expect("loader");
        let a = stream(&mut one, 10);
        let b = stream(&mut three, 10);
        assert_eq!(a, b, "{mode:?}: stream depends on the worker count");
        // Each epoch (4 batches of 3) visits every sample exactly once, in a new order.
        let mut e0: Vec<usize> = a[..4].iter().flat_map(|x| x.0.clone()).collect();
        let e1: Vec<usize> = a[4..8].iter().flat_map(|x| x.0.clone()).collect();
        assert_ne!(e0, e1, "{mode:?}: epochs share an order");
        e0.sort();
        assert_eq!(e0, idx);
        // Resume from position (1, 2) reproduces the rest of the stream.
        let mut r = Loader::new(d.clone(), idx.clone(), &cfg(2, mode), LoaderPosition { epoch: 1, batch: 2 }).expect("loader");
        assert_eq!(stream(&mut r, 4), a[6..10].to_vec(), "{mode:?}: resume differs");
        assert_eq!(r.position(), LoaderPosition { epoch: 2, batch: 2 });
    }
    // A different seed gives a different order.
    let mut c = cfg(1, ShuffleMode::Global);
    c.seed = 43;
    let mut o = Loader::new(d.clone(), idx.clone(), &c, LoaderPosition::default()).expect("loader");
    let mut p = Loader::new(d.clone(), idx, &cfg(1, ShuffleMode::Global), LoaderPosition::default()).expect("loader");
    assert_ne!(stream(&mut o, 4), stream(&mut p, 4));
}

#[test]
fn bad_crop_is_an_error_not_a_panic() {
    let (_t, d) = ds(4);
    let mut c = cfg(1, ShuffleMode::Global);
    c.crop = Some(40);
    assert!(Loader::new(d.clone(), (0..4).collect(), &c, LoaderPosition::default()).is_err());
    c.crop = Some(8);
    c.batch_size = 5;
    assert!(Loader::new(d, (0..4).collect(), &c, LoaderPosition::default()).is_err());
}

#[test]
fn stored_dtype_batches_match_cpu_converted_ones() {
    let (_t, d) = ds(12);
    let idx: Vec<usize> = (0..12).collect();
    let stored = cfg(2, ShuffleMode::Global);
    let converted = LoaderConfig { stored_dtype: false, ..stored.clone() };
    let mut a = Loader::new(d.clone(), idx.clone(), &stored, LoaderPosition::default()).expect("loader");
    let mut b = Loader::new(d, idx, &converted, LoaderPosition::default()).expect("loader");
    for _ in 0..6 {
        let x = a.next_batch().expect("batch");
        assert_eq!(x.lr.kind(), Kind::Uint8);
        assert_eq!(x.sr[0].kind(), Kind::Half);
        let y = b.next_batch().expect("batch");
        assert_eq!(y.sr[0].kind(), Kind::Float);
        assert!(x.bytes() < y.bytes() / 2 + y.bytes() / 8, "stored batch is not smaller");
        let x = x.to_device(Device::Cpu).expect("f32");
        for (p, q) in [(&x.lr, &y.lr), (&x.hr, &y.hr)].into_iter().chain(x.sr.iter().zip(&y.sr)).chain(x.feat.iter().zip(&y.feat)) {
            assert_eq!(p.kind(), Kind::Float);
            assert_eq!(max_diff(p, q), 0.0, "stored-dtype path differs after conversion");
        }
    }
}
