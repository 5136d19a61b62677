//! Model init, loss reduction, exact resume and TorchScript export, on real shards.

#![allow(clippy::field_reassign_with_default, reason = "a test config reads best as one setting per line")]

mod common;

use srcache_formats::Dataset;
use srcache_trainer::config::{Head, TrainConfig};
use srcache_trainer::loader::{Loader, LoaderPosition};
use srcache_trainer::model::FusionNet;
use srcache_trainer::train::{fuse, train, Trainer};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn tiny_cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.device = "cpu".into();
    c.threads = Some(2);
    c.model.experts = common::EXPERTS.iter().map(|(e, _)| e.to_string()).collect();
    c.model.feat_channels = common::EXPERTS.iter().map(|(_, c)| *c).collect();
    c.model.scale = 2;
    c.model.width = 16;
    c.model.blocks = 2;
    c.model.feat_proj = 4;
    c.loader.batch_size = 4;
    c.loader.crop = Some(12);
    c.loader.workers = 2;
    c.optim.lr = 2e-3;
    c.optim.warmup_steps = 3;
    c.optim.ema_decay = 0.9;
    c.steps = 30;
    c
}

#[test]
fn every_head_starts_exactly_at_its_base() {
    tch::manual_seed(1);
    let (b, h) = (2i64, 16i64);
    let srs: Vec<Tensor> = (0..3).map(|_| Tensor::rand([b, 3, h, h], (Kind::Float, Device::Cpu))).collect();
    let feats = vec![Tensor::rand([b, 4, h / 2, h / 2], (Kind::Float, Device::Cpu)), Tensor::rand([b, 6, h / 2, h / 2], (Kind::Float, Device::Cpu))];
    let lr_up = Tensor::rand([b, 3, h, h], (Kind::Float, Device::Cpu));
    // Every head starts at its base expert (delta_expert), not at the mean of all.
    let heads = [
        (Head::Gating, false),
        (Head::Gating, true),
        (Head::Frequency, false),
        (Head::Delta, false),
        (Head::Delta, true),
        (Head::Refine, false),
        (Head::Select, false),
    ];
    for (head, edge) in heads {
        let mut cfg = tiny_cfg().model;
        cfg.head = head;
        cfg.edge_refine = edge;
        cfg.delta_expert = 2.into();
        let vs = VarStore::new(Device::Cpu);
        let m = FusionNet::new(&vs.root(), &cfg).expect("model");
        let out = m.forward(&lr_up, &srs, &feats).expect("forward");
        let want = &srs[2];
        let diff = (&out - want).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{head:?} edge={edge}: step-0 output differs from its base by {diff}");
        // And the model is not degenerate: it has trainable parameters that reach the output.
        assert!(srcache_trainer::model::param_count(&vs) > 1000);
    }
}

#[test]
fn default_model_size_is_in_range() {
    let mut cfg = srcache_trainer::FusionConfig::default();
    cfg.experts = vec!["a".into(), "b".into(), "c".into()];
    cfg.feat_channels = vec![180, 180, 64];
    let vs = VarStore::new(Device::Cpu);
    FusionNet::new(&vs.root(), &cfg).expect("model");
    let n = srcache_trainer::model::param_count(&vs);
    assert!((200_000..=1_500_000).contains(&n), "default fusion has {n} params");
}

fn run_steps(tr: &mut Trainer, loader: &mut Loader, n: usize) -> Vec<f64> {
    (0..n).map(|_| tr.train_step(loader).expect("step").loss).collect()
}

#[test]
fn loss_drops_and_resume_reproduces_the_curve_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    common::make_dataset(&data, 24, 16, 2);
    let ds = Arc::new(Dataset::open(&data).expect("open"));
    let all: Vec<usize> = (0..ds.len()).collect();
    for head in [Head::Gating, Head::Frequency] {
        let mut cfg = tiny_cfg();
        cfg.model.head = head;
        cfg.optim.grad_accum = if head == Head::Frequency { 2 } else { 1 };
        // Uninterrupted run.
        let mut tr = Trainer::new(&cfg).expect("trainer");
        let mut loader = Loader::new(ds.clone(), all.clone(), &cfg.loader, LoaderPosition::default()).expect("loader");
        let full = run_steps(&mut tr, &mut loader, 24);
        let first: f64 = full[..4].iter().sum::<f64>() / 4.0;
        let last: f64 = full[20..].iter().sum::<f64>() / 4.0;
        assert!(last < 0.8 * first, "{head:?}: loss did not drop: first {first:.5} last {last:.5} ({full:?})");

        // Interrupted at step 11 (mid-epoch: 6 batches per epoch), checkpointed, resumed in fresh objects.
        let run = tmp.path().join(format!("run-{head:?}"));
        let mut tr = Trainer::new(&cfg).expect("trainer");
        let mut loader = Loader::new(ds.clone(), all.clone(), &cfg.loader, LoaderPosition::default()).expect("loader");
        let mut curve = run_steps(&mut tr, &mut loader, 11);
        tr.save(&run, loader.position(), None).expect("save");
        drop((tr, loader));
        let mut tr = Trainer::new(&cfg).expect("trainer");
        let pos = tr.resume(&run).expect("resume").expect("a checkpoint");
        assert_eq!(tr.step, 11);
        let mut loader = Loader::new(ds.clone(), all.clone(), &cfg.loader, pos).expect("loader");
        curve.extend(run_steps(&mut tr, &mut loader, 13));
        assert_eq!(curve, full, "{head:?}: resumed loss curve differs");
    }
}

#[test]
fn full_run_writes_metrics_plot_checkpoints_and_a_torchscript_that_matches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    common::make_dataset(&data, 32, 16, 2);
    let run = tmp.path().join("run");
    let mut cfg = tiny_cfg();
    cfg.model.head = Head::Delta;
    cfg.model.edge_refine = true;
    cfg.loss.weights.ssim = 0.1;
    cfg.loss.weights.fft = 0.05;
    cfg.loss.weights.edge = 0.05;
    cfg.loss.weights.wavelet = 0.1;
    cfg.loss.weights.l1 = 0.5;
    cfg.steps = 12;
    cfg.val_every = 6;
    cfg.ckpt_every = 4;
    cfg.keep_best = 1;
    cfg.val_fraction = 0.25;
    let mut rows = 0;
    let s = train(&cfg, &data, &run, false, &mut |_| rows += 1).expect("train");
    assert_eq!(s.steps, 12);
    assert_eq!(rows, 12);
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("csv");
    assert!(csv.lines().count() >= 3, "{csv}");
    assert!(csv.lines().nth(1).expect("row").split(',').nth(2).is_some_and(|v| !v.is_empty()), "l1 column empty: {csv}");
    assert!(image::open(run.join("curves.png")).is_ok());
    let val = s.val.expect("validation ran");
    assert_eq!(val.rows.len(), 5, "fused + 3 experts + bicubic");
    assert!(val.rows.iter().all(|r| r.psnr.is_finite() && r.ssim > 0.0));
    // Best-1 kept plus the latest; pruned the others.
    let ckpts: Vec<_> =
        std::fs::read_dir(run.join("ckpt")).expect("ckpt").flatten().filter(|e| e.file_name().to_string_lossy().starts_with("step-")).collect();
    assert!(ckpts.len() <= 2 && !ckpts.is_empty(), "{} checkpoints kept", ckpts.len());

    // Resume of a finished run is a no-op that keeps the step count.
    let s2 = train(&cfg, &data, &run, true, &mut |_| {}).expect("resume");
    assert_eq!(s2.steps, 12);

    // The exported TorchScript reproduces the EMA model on a different (larger) input size.
    let pt = s.exported.expect("exported");
    let m = tch::CModule::load(&pt).expect("load torchscript");
    let mut tr = Trainer::new(&{
        let mut c = cfg.clone();
        c.model.experts = vec!["a".into(), "b".into(), "c".into()];
        c
    })
    .expect("trainer");
    tr.resume(&run).expect("resume weights");
    let ds = Arc::new(Dataset::open(&data).expect("open"));
    let mut lc = cfg.loader.clone();
    lc.crop = None;
    let mut loader = Loader::new(ds, (0..32).collect(), &lc, LoaderPosition::default()).expect("loader");
    let b = loader.next_batch().expect("batch").to_device(tch::Device::Cpu).expect("f32");
    let want = tch::no_grad(|| fuse(&tr.ema, &b)).expect("fuse");
    let lr_up = srcache_trainer::ops::upsample_bicubic(&b.lr, 2).expect("up");
    let mut inputs = vec![lr_up];
    inputs.extend(b.sr.iter().map(|t| t.shallow_clone()));
    inputs.extend(b.feat.iter().map(|t| t.shallow_clone()));
    let got = m.forward_ts(&inputs).expect("run torchscript");
    let diff = (&got - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "torchscript differs from the model by {diff}");
}

/// Shards whose expert outputs hold NaN (written past the cache's checks, as a foreign tool could): the run
/// stops at the first non-finite loss with an error naming the step, instead of "final loss NaN" and exit 0.
#[test]
fn a_non_finite_loss_ends_the_run_with_an_error() {
    use half::f16;
    use srcache_formats::{Codec, DType, DatasetOptions, DatasetWriter, PatchBox, SampleMeta, Schema, TensorSpec};
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let (h, hh) = (8usize, 16usize);
    let mut schema = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, h, h], Codec::Raw),
        TensorSpec::new("hr", DType::U8, &[3, hh, hh], Codec::Raw),
        TensorSpec::new("sr/a", DType::F16, &[3, hh, hh], Codec::Raw),
    ]);
    schema.attrs.insert("scale".into(), "2".into());
    let (mut w, _) = DatasetWriter::create_or_resume(&data, schema, DatasetOptions::default()).expect("writer");
    for i in 0..8 {
        let sr: Vec<u8> = (0..3 * hh * hh).flat_map(|k| f16::from_f32(if k % 7 == 0 { f32::NAN } else { 0.5 }).to_le_bytes()).collect();
        let meta = SampleMeta {
            id: format!("s{i}"),
            source: format!("img{i}.png"),
            patch: PatchBox { x: 0, y: 0, w: h as u32, h: h as u32 },
            variant: "clean".into(),
            psnr: Default::default(),
        };
        w.write(&meta, &[&vec![100u8; 3 * h * h], &vec![120u8; 3 * hh * hh], &sr]).expect("write");
    }
    w.finish().expect("finish");
    let mut c = tiny_cfg();
    c.model.experts = vec!["a".into()];
    c.model.feat_channels = vec![0];
    c.loader.crop = None;
    c.steps = 5;
    c.val_fraction = 0.0;
    let err = train(&c, &data, &tmp.path().join("run"), false, &mut |_| {}).expect_err("a NaN loss is an error");
    let text = err.to_string();
    assert!(text.contains("diverged at step 1") && text.contains("NaN"), "{text}");
}
