//! The training recipe around the fusion model: the split by source image (stable, named in the run's output),
//! the presets, and experts named (not indexed) in configs. Real shards (tests/common), seconds.
#![allow(clippy::field_reassign_with_default)]

mod common;

use srcache_formats::Dataset;
use srcache_trainer::config::{ExpertRef, Head, PRESETS};
use srcache_trainer::train::{train, Split, SPLIT_FILE};
use srcache_trainer::TrainConfig;

fn tiny_cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.device = "cpu".into();
    c.threads = Some(2);
    c.model.width = 8;
    c.model.blocks = 1;
    c.model.feat_proj = 2;
    c.loader.batch_size = 4;
    c.loader.workers = 1;
    c.optim.warmup_steps = 2;
    c.export = false;
    c.tensorboard = false;
    c
}

#[test]
fn the_split_is_by_source_stable_under_a_move_and_named_in_the_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    common::make_dataset(&data, 48, 8, 2); // 12 source images
    let ds = Dataset::open(&data).expect("open");
    let s = Split::of(&ds, 0.3, 0);
    assert_eq!(s.held_out.len(), 4, "round(0.3 * 12) sources held out: {:?}", s.held_out);
    assert_eq!(s.held_out.len() + s.train_sources.len(), 12);
    let rows = ds.manifest();
    assert!(s.val.iter().all(|&i| s.held_out.contains(&rows[i].source)));
    assert!(s.train.iter().all(|&i| !s.held_out.contains(&rows[i].source)), "a source on both sides");
    // A moved copy of the dataset splits the same way (the key is the manifest's relative `source`).
    let moved = tmp.path().join("elsewhere/data");
    std::fs::create_dir_all(moved.parent().expect("parent")).expect("mkdir");
    std::fs::rename(&data, &moved).expect("move");
    assert_eq!(Split::of(&Dataset::open(&moved).expect("open"), 0.3, 0).held_out, s.held_out);
    // A tiny fraction of a few sources still holds one out; one source holds none out.
    assert_eq!(Split::of(&Dataset::open(&moved).expect("open"), 0.01, 0).held_out.len(), 1);
    let one = tmp.path().join("one");
    common::make_dataset(&one, 4, 8, 2);
    assert!(Split::of(&Dataset::open(&one).expect("open"), 0.5, 0).held_out.is_empty());

    let run = tmp.path().join("run");
    let mut cfg = tiny_cfg();
    cfg.steps = 2;
    cfg.val_fraction = 0.3;
    let summary = train(&cfg, &moved, &run, false, &mut |_| {}).expect("train");
    assert_eq!(summary.split.held_out, s.held_out);
    let saved: Split = serde_json::from_slice(&std::fs::read(run.join(SPLIT_FILE)).expect("split.json")).expect("json");
    assert_eq!((saved.held_out, saved.fraction), (s.held_out.clone(), 0.3));
    let (on, _, _) = summary.margin.expect("the final model is validated");
    assert_eq!(on, "held-out");
}

#[test]
fn presets_parse_validate_and_take_a_config_on_top() {
    for (name, _) in PRESETS {
        let cfg = TrainConfig::from_preset(name, None).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        cfg.validate(name).unwrap_or_else(|e| panic!("preset {name}: {e}"));
        assert_eq!(cfg.model.delta_expert, ExpertRef::Name("best".into()), "{name}");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let over = tmp.path().join("over.toml");
    std::fs::write(&over, "steps = 7\n[model]\nwidth = 8\n").expect("write");
    let cfg = TrainConfig::from_preset("refine", Some(&over)).expect("preset + file");
    assert_eq!((cfg.steps, cfg.model.width, cfg.model.head), (7, 8, Head::Refine), "the file's keys win, the preset's others stay");
    let err = TrainConfig::from_preset("nope", None).expect_err("unknown preset").to_string();
    assert!(err.contains("gating") && err.contains("refine") && err.contains("select"), "{err}");
}

#[test]
fn experts_are_named_in_configs_and_a_wrong_name_says_which_exist() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    common::make_dataset(&data, 16, 8, 2);
    let mut cfg = tiny_cfg();
    cfg.steps = 1;
    cfg.val_fraction = 0.0;
    cfg.model.head = Head::Delta;
    cfg.model.delta_expert = "c".into();
    let run = tmp.path().join("named");
    let s = train(&cfg, &data, &run, false, &mut |_| {}).expect("train");
    assert_eq!(s.base_expert, "c");
    let saved = TrainConfig::from_toml_file(&run.join("config.toml")).expect("saved config");
    assert_eq!(saved.model.delta_expert, ExpertRef::Name("c".into()));
    // An index still works (older configs) and is saved as the name it meant.
    cfg.model.delta_expert = 1.into();
    let s = train(&cfg, &data, &tmp.path().join("index"), false, &mut |_| {}).expect("train");
    assert_eq!(s.base_expert, "b");
    cfg.model.delta_expert = "span48".into();
    let err = train(&cfg, &data, &tmp.path().join("bad"), false, &mut |_| {}).expect_err("unknown expert").to_string();
    assert!(err.contains("span48") && err.contains("a, b, c"), "{err}");
}
