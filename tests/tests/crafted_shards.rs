//! Issue #15: crafted shards with valid checksums through every reading command of the real binary.
//!
//! Each case is a dataset directory whose shard is either built byte by byte from FORMAT.md (so every checksum
//! holds and only the content lies: a tensor claiming 30 GB in a shard of a few hundred bytes, a zstd frame
//! claiming 30 GB, non-finite PSNRs) or written with `ShardWriter` under a schema the container accepts but the
//! SR layout does not (mismatched shapes, zero sizes, a malformed expert name, a wrong scale attribute). Every
//! command (`verify`, `inspect`, `inspect --json`, `stats`, `export` of the manifest / a sample / a shard,
//! `dump`, `train`, `diff` both ways) must end with exit 0 or exit 1 and one `error: ` line naming the dataset
//! and the reason: never a panic (101), an abort (134), a crash (139, 135), a libtorch trace or a hang. Commands
//! that need the bad part must fail. Ends with `crafted shards: N cases, 0 panics, 0 hangs`.

mod ingest_common;
mod reliability_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use half::f16;
use ingest_common::s;
use reliability_common::{craft_shard, error_rule, lying_zstd_frame, train_toml, Tally};
use srcache_formats::{Codec, DType, Manifest, ManifestRow, PatchBox, SampleMeta, Schema, ShardWriter, TensorSpec};

const GIB30: u64 = 30 << 30;

/// What a case's fault is, which decides which commands may still succeed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The shard does not open: only `export --manifest-csv` (manifest only) may succeed.
    Open,
    /// The shard opens, a payload does not decode: commands that never decode payloads may succeed.
    Payload,
    /// The schema is not a consistent SR layout: only `export --manifest-csv` may succeed.
    Schema,
    /// Valid but degenerate data: any command may succeed; `train` must fail (nothing trainable).
    Untrainable,
    /// Valid but unusual data: every command must succeed.
    Valid,
}

struct Case {
    name: &'static str,
    kind: Kind,
    dir: PathBuf,
    /// A sample id in the shard (for dump / export --sample).
    id: String,
}

fn u8_bytes(n: usize, salt: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + salt * 13) % 251) as u8).collect()
}

fn f16_bytes(n: usize, salt: usize) -> Vec<u8> {
    (0..n).flat_map(|i| f16::from_f32(((i * 7 + salt * 13) % 251) as f32 / 255.0).to_le_bytes()).collect()
}

fn meta(k: usize) -> SampleMeta {
    let mut m = SampleMeta {
        id: format!("img{k}_000"),
        source: format!("img{k}.png"),
        patch: PatchBox { x: 0, y: 0, w: 16, h: 16 },
        variant: "clean".into(),
        ..Default::default()
    };
    m.psnr.insert("a".into(), 30.0 + k as f32);
    m
}

/// The SR schema of the tests: lr [3,16,16] u8, hr [3,32,32] u8, sr/a [3,32,32] f16, feat/a [4,16,16] f16, x2.
fn good_schema() -> Schema {
    let mut s = Schema::new(vec![
        TensorSpec::new("lr", DType::U8, &[3, 16, 16], Codec::ZSTD),
        TensorSpec::new("hr", DType::U8, &[3, 32, 32], Codec::Raw),
        TensorSpec::new("sr/a", DType::F16, &[3, 32, 32], Codec::SHUFFLE_ZSTD),
        TensorSpec::new("feat/a", DType::F16, &[4, 16, 16], Codec::Raw),
    ]);
    for (k, v) in [("scale", "2"), ("patch", "16"), ("experts", "a")] {
        s.attrs.insert(k.into(), v.into());
    }
    s
}

/// Writes `n` samples under `schema` with ShardWriter (which checks only the container rules) and a manifest
/// rebuilt from the shard, so the dataset opens as far as its schema allows.
fn written(dir: &Path, schema: Schema, n: usize) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut w = ShardWriter::try_new(&dir.join("shard-00000.srs"), schema.clone()).expect("writer");
    for k in 0..n {
        let raws: Vec<Vec<u8>> = schema
            .tensors
            .iter()
            .map(|t| match t.dtype {
                DType::U8 => u8_bytes(t.numel(), k),
                DType::F16 => f16_bytes(t.numel(), k),
                _ => vec![0; t.raw_len().unwrap_or(0)],
            })
            .collect();
        let refs: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
        w.write(&meta(k), &refs).expect("write");
    }
    w.finish().expect("finish");
    let rows = Manifest::from_shards(dir).expect("rows");
    Manifest::write(&Manifest::path_in(dir), &rows).expect("manifest");
    meta(0).id
}

/// A schema-level case: the good schema with `edit` applied.
fn with_schema(dir: &Path, edit: impl FnOnce(&mut Schema)) -> String {
    let mut schema = good_schema();
    edit(&mut schema);
    written(dir, schema, 4)
}

fn set_shape(schema: &mut Schema, name: &str, shape: &[usize]) {
    let t = schema.tensors.iter_mut().find(|t| t.name == name).expect("tensor");
    t.shape = shape.to_vec();
}

/// A crafted shard: `schema` (JSON) and per sample the stored payloads with the raw lengths their entries
/// claim; a manifest row per sample written by hand (the shard may not open to derive them).
fn crafted(dir: &Path, schema: &str, samples: &[Vec<(Vec<u8>, u64)>], metas: &str, n_tensors: u32) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("shard-00000.srs"), craft_shard(schema, samples, metas, n_tensors)).expect("write shard");
    let rows = match Manifest::from_shards(dir) {
        Ok(rows) => rows,
        Err(_) => (0..samples.len())
            .map(|k| ManifestRow {
                sample_id: meta(k).id,
                shard: "shard-00000.srs".into(),
                index: k as u64,
                source: meta(k).source,
                variant: "clean".into(),
                w: 16,
                h: 16,
                ..Default::default()
            })
            .collect(),
    };
    Manifest::write(&Manifest::path_in(dir), &rows).expect("manifest");
    meta(0).id
}

fn metas_json(n: usize) -> String {
    serde_json::to_string(&(0..n).map(meta).collect::<Vec<_>>()).expect("json")
}

/// Valid stored payloads of the good schema's tensors for sample `k`, in schema order (lr as a plain zstd frame
/// of one raw block, the rest raw), under a schema JSON whose codecs match.
fn plain_payloads(k: usize) -> Vec<(Vec<u8>, u64)> {
    let lr = u8_bytes(3 * 16 * 16, k);
    vec![
        (lying_zstd_frame(lr.len() as u64, &lr), lr.len() as u64),
        (u8_bytes(3 * 32 * 32, k), 3 * 32 * 32),
        (f16_bytes(3 * 32 * 32, k), 2 * 3 * 32 * 32),
        (f16_bytes(4 * 16 * 16, k), 2 * 4 * 16 * 16),
    ]
}

const PLAIN_SCHEMA: &str = r#"{"tensors":[
 {"name":"lr","dtype":"u8","shape":[3,16,16],"codec":{"kind":"zstd","level":1}},
 {"name":"hr","dtype":"u8","shape":[3,32,32],"codec":{"kind":"raw"}},
 {"name":"sr/a","dtype":"f16","shape":[3,32,32],"codec":{"kind":"raw"}},
 {"name":"feat/a","dtype":"f16","shape":[4,16,16],"codec":{"kind":"raw"}}],
 "attrs":{"scale":"2","patch":"16","experts":"a"}}"#;

fn build_cases(root: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &'static str, kind: Kind, build: &dyn Fn(&Path) -> String| {
        let dir = root.join(name);
        let id = build(&dir);
        cases.push(Case { name, kind, dir, id });
    };

    // The 674-byte shard of the issue: one tensor claiming 30 GB (3 x 100000 x 100000 u8), zstd, 100 bytes stored.
    add("giant_zstd", Kind::Open, &|d| {
        let schema = r#"{"tensors":[{"name":"lr","dtype":"u8","shape":[3,100000,100000],"codec":{"kind":"zstd","level":1}}],"attrs":{}}"#;
        crafted(d, schema, &[vec![(lying_zstd_frame(GIB30, &[7; 80]), 30_000_000_000)]], &metas_json(1), 1)
    });
    // The same claim stored raw: the entry says 30 GB, the payload is 64 bytes.
    add("giant_raw", Kind::Open, &|d| {
        let schema = r#"{"tensors":[{"name":"lr","dtype":"u8","shape":[3,100000,100000],"codec":{"kind":"raw"}}],"attrs":{}}"#;
        crafted(d, schema, &[vec![(vec![1; 64], 30_000_000_000)]], &metas_json(1), 1)
    });
    // A schema whose shape product overflows usize.
    add("overflow_shape", Kind::Open, &|d| {
        let schema = r#"{"tensors":[{"name":"lr","dtype":"f32","shape":[4294967296,4294967296,16],"codec":{"kind":"raw"}}],"attrs":{}}"#;
        crafted(d, schema, &[vec![(vec![1; 64], 64)]], &metas_json(1), 1)
    });
    // Entries claim more samples than the metadata lists.
    add("meta_count", Kind::Open, &|d| crafted(d, PLAIN_SCHEMA, &[plain_payloads(0), plain_payloads(1)], &metas_json(1), 4));
    // A residual tensor without its lr base.
    add("residual_no_lr", Kind::Open, &|d| {
        let schema = r#"{"tensors":[{"name":"sr/a","dtype":"u8","shape":[3,32,32],"codec":{"kind":"residual_u8","level":1}}],"attrs":{}}"#;
        crafted(d, schema, &[vec![(lying_zstd_frame(3072, &[0; 3072]), 3072)]], &metas_json(1), 1)
    });

    // Opens (sizes are right), but sample 0's lr frame claims 30 GB of content: decoding must fail, not allocate.
    add("lying_frame", Kind::Payload, &|d| {
        let mut samples: Vec<_> = (0..4).map(plain_payloads).collect();
        samples[0][0].0 = lying_zstd_frame(GIB30, &u8_bytes(768, 0));
        crafted(d, PLAIN_SCHEMA, &samples, &metas_json(4), 4)
    });
    // Sample 0's lr payload is not zstd at all (checksum valid).
    add("garbage_frame", Kind::Payload, &|d| {
        let mut samples: Vec<_> = (0..4).map(plain_payloads).collect();
        samples[0][0].0 = b"definitely not a zstd frame, but checksummed".to_vec();
        crafted(d, PLAIN_SCHEMA, &samples, &metas_json(4), 4)
    });

    // Schema-level: the container accepts these, the SR layout does not.
    add("sr_shape", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "sr/a", &[3, 24, 24])));
    add("sr_bad_name", Kind::Schema, &|d| {
        with_schema(d, |s| {
            s.tensors.push(TensorSpec::new("sr/a/b", DType::F16, &[3, 24, 24], Codec::Raw));
        })
    });
    add("hr_zero", Kind::Schema, &|d| {
        with_schema(d, |s| {
            set_shape(s, "hr", &[3, 0, 0]);
            set_shape(s, "sr/a", &[3, 0, 0]);
            s.attrs.remove("scale");
        })
    });
    add("hr_ratio", Kind::Schema, &|d| {
        with_schema(d, |s| {
            set_shape(s, "hr", &[3, 40, 40]);
            set_shape(s, "sr/a", &[3, 40, 40]);
            s.attrs.remove("scale");
        })
    });
    add("lr_channels", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "lr", &[4, 16, 16])));
    add("lr_f32", Kind::Schema, &|d| {
        with_schema(d, |s| {
            s.tensors[0].dtype = DType::F32;
        })
    });
    add("feat_zero_channels", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "feat/a", &[0, 16, 16])));
    add("feat_zero_size", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "feat/a", &[4, 0, 0])));
    add("feat_not_square", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "feat/a", &[4, 16, 8])));
    add("feat_rank", Kind::Schema, &|d| with_schema(d, |s| set_shape(s, "feat/a", &[4, 256])));
    add("scale_attr_wrong", Kind::Schema, &|d| {
        with_schema(d, |s| {
            s.attrs.insert("scale".into(), "3".into());
        })
    });
    add("scale_attr_garbage", Kind::Schema, &|d| {
        with_schema(d, |s| {
            s.attrs.insert("scale".into(), "two".into());
        })
    });

    // Degenerate but valid: a 0-sample shard whose schema claims 30 GB per sample (nothing may allocate by
    // schema alone), and an ingest-only dataset (no expert to fuse).
    add("empty_giant", Kind::Untrainable, &|d| {
        let mut s = Schema::new(vec![
            TensorSpec::new("lr", DType::U8, &[3, 100_000, 100_000], Codec::ZSTD),
            TensorSpec::new("hr", DType::U8, &[3, 200_000, 200_000], Codec::ZSTD),
            TensorSpec::new("sr/a", DType::F32, &[3, 200_000, 200_000], Codec::SHUFFLE_ZSTD),
        ]);
        s.attrs.insert("scale".into(), "2".into());
        written(d, s, 0);
        "img0_000".into()
    });
    add("no_experts", Kind::Untrainable, &|d| {
        with_schema(d, |s| {
            s.tensors.truncate(2);
            s.attrs.insert("experts".into(), String::new());
        })
    });
    // Valid: no scale attribute (the shapes say x2), and PSNRs past f32 (1e39 reads as +inf) in the metadata.
    add("no_scale_attr", Kind::Valid, &|d| {
        with_schema(d, |s| {
            s.attrs.remove("scale");
        })
    });
    add("psnr_inf", Kind::Valid, &|d| {
        let metas = metas_json(4).replace("\"a\":30.0", "\"a\":1e39");
        assert!(metas.contains("1e39"), "{metas}");
        let schema = PLAIN_SCHEMA;
        crafted(d, schema, &(0..4).map(plain_payloads).collect::<Vec<_>>(), &metas, 4)
    });
    cases
}

/// Commands run on every case; the others rotate over the cases (each still meets every kind of fault), or all
/// run everywhere with `SRCACHE_CRAFTED_ALL=1`: the binary takes ~0.5 s to start (libtorch), and the full
/// matrix is ~260 runs.
const ALWAYS: [&str; 3] = ["verify", "dump", "train"];
const ROTATING: [&str; 8] = ["inspect", "inspect-json", "stats", "export-csv", "export-sample", "export-shard", "diff-ab", "diff-ba"];
/// Cases that get every command in CI.
const FULL: [&str; 4] = ["giant_zstd", "lying_frame", "sr_shape", "no_scale_attr"];

#[test]
fn crafted_shards_end_every_command_with_a_sentence() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let good = root.join("good");
    written(&good, good_schema(), 4);
    let cfg = root.join("train.toml");
    // One step over one batch of all 4 samples (none held out), so a bad sample is always read; no export.
    let toml = train_toml(1, 1).replace("batch_size = 2", "batch_size = 4");
    let toml = toml.replacen("steps = 1\n", "steps = 1\nval_fraction = 0.0\nexport = false\n", 1);
    std::fs::write(&cfg, toml).expect("config");
    let cases = build_cases(&root.join("cases"));
    let all = std::env::var("SRCACHE_CRAFTED_ALL").is_ok_and(|v| v == "1");
    let mut jobs: Vec<(String, Vec<String>)> = Vec::new();
    let mut meta: Vec<(usize, &str)> = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let d = s(&c.dir).to_string();
        let out = root.join("out").join(c.name);
        std::fs::create_dir_all(&out).expect("mkdir");
        let o = |f: &str| out.join(f).to_string_lossy().into_owned();
        let (npz, st, png, csv, run) = (o("s.npz"), o("s.safetensors"), o("sheet.png"), o("m.csv"), o("run"));
        let command = |cmd: &str| -> Vec<String> {
            let v: Vec<&str> = match cmd {
                "verify" => vec!["verify", &d, "--quiet"],
                "inspect" => vec!["inspect", &d],
                "inspect-json" => vec!["inspect", &d, "--json"],
                "stats" => vec!["stats", &d, "--samples", "4"],
                "export-csv" => vec!["export", &d, "--manifest-csv", &csv],
                "export-sample" => vec!["export", &d, "--sample", &c.id, "--out", &npz],
                "export-shard" => vec!["export", &d, "--shard", "0", "--format", "safetensors", "--out", &st],
                "dump" => vec!["dump", &d, "--sample", &c.id, "--out", &png],
                "train" => vec!["train", "--data", &d, "--out", &run, "--config", s(&cfg), "--device", "cpu"],
                "diff-ab" => vec!["diff", &d, s(&good)],
                _ => vec!["diff", s(&good), &d],
            };
            v.into_iter().map(String::from).collect()
        };
        let mut cmds: Vec<&str> = ALWAYS.to_vec();
        if all || FULL.contains(&c.name) {
            cmds.extend(ROTATING);
        } else {
            cmds.extend([ROTATING[(2 * k) % ROTATING.len()], ROTATING[(2 * k + 1) % ROTATING.len()]]);
        }
        for cmd in cmds {
            jobs.push((format!("{} / {cmd}", c.name), command(cmd)));
            meta.push((k, cmd));
        }
    }
    let mut t = Tally::default();
    let results = t.run_all(&jobs, 2, Duration::from_secs(60));
    let mut times: Vec<(f64, &str)> = jobs.iter().zip(&results).filter_map(|((l, _), r)| r.as_ref().map(|r| (r.secs, l.as_str()))).collect();
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = times.iter().map(|t| t.0).sum();
    println!("{} runs, {total:.0}s of runs; slowest: {:?}", times.len(), &times[..times.len().min(5)]);
    for (((label, _), (k, cmd)), r) in jobs.iter().zip(&meta).zip(results) {
        let Some(r) = r else { continue };
        let c = &cases[*k];
        let decodes = !matches!(*cmd, "inspect" | "inspect-json" | "export-csv");
        let may_pass = match c.kind {
            Kind::Open | Kind::Schema => *cmd == "export-csv",
            // A fault in payloads only shows to commands that decode.
            Kind::Payload => !decodes,
            Kind::Untrainable => *cmd != "train",
            Kind::Valid => true,
        };
        // Diffs against the good dataset differ (other PSNRs or payloads) even when both are valid.
        let must_pass = c.kind == Kind::Valid && !cmd.starts_with("diff");
        let outcome = if r.code() == Some(0) {
            match may_pass {
                true => Ok(()),
                false => Err("exit 0 on a dataset it cannot use".to_string()),
            }
        } else if must_pass {
            Err("failed on valid data".to_string())
        } else {
            error_rule(&r, &[s(&c.dir)])
        };
        t.check(label, &r, outcome);
    }
    println!("crafted shards: {} datasets, {} runs", cases.len(), jobs.len());
    t.finish("crafted shards");
}

#[test]
fn verify_says_cannot_open_for_a_corrupt_shard_not_missing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().join("ds");
    written(&d, good_schema(), 4);
    let shard = d.join("shard-00000.srs");
    let mut bytes = std::fs::read(&shard).expect("read");
    bytes[70] ^= 0xff; // inside the schema JSON: the schema checksum fails
    std::fs::write(&shard, &bytes).expect("write");
    let r = ingest_common::srcache(&["verify", s(&d), "--quiet"]);
    assert_eq!(r.code(), Some(1), "{}", r.text());
    assert!(r.stdout.contains("cannot open") && r.stdout.contains("checksum mismatch in schema"), "{}", r.text());
    assert!(r.stdout.contains("its shard cannot be opened"), "{}", r.text());
    assert!(!r.stdout.contains("does not exist"), "a corrupt shard reported as missing: {}", r.text());
    error_rule(&r, &[s(&d)]).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
}

/// Issue #25 (D15): the Python reader (`srcache.Shard`, `open_dataset`, `SRCacheDataset`) faces the same corpus,
/// plus hostile JSON only Python would otherwise accept (negative, string and overflowing shapes, an object or an
/// integer where the metadata array belongs, duplicate tensor names or fields, NaN literals, nesting deep enough
/// to overflow its parser, a table offset that wraps past 2^64): every case that does not open in Rust must raise
/// `ShardError` naming the file, at open and without allocating what it claims; the valid ones must read.
#[test]
fn python_reader_refuses_the_crafted_corpus() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cases = build_cases(&tmp.path().join("cases"));
    let kinds: serde_json::Map<String, serde_json::Value> = cases.iter().map(|c| (c.name.to_string(), format!("{:?}", c.kind).into())).collect();
    let spec = tmp.path().join("kinds.json");
    std::fs::write(&spec, serde_json::to_vec(&kinds).expect("json")).expect("write kinds");
    let script = srcache_tests::workspace().join("python/tests/check_crafted.py");
    let log = tmp.path().join("python.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child = std::process::Command::new(srcache_tests::venv_python())
        .arg(&script)
        .arg("corpus")
        .arg(tmp.path().join("cases"))
        .arg(&spec)
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("spawn python");
    // A hang is a failure too (a reader blocked on a crafted file), not a stuck suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check_crafted.py corpus did not finish in 300 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).expect("read log");
    println!("{text}");
    assert!(status.success(), "the Python reader failed on crafted shards:\n{text}");
    assert!(text.contains(&format!("({} Rust corpus + ", cases.len())) && text.contains(", 0 failed"), "{text}");
}
