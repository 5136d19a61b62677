//! Whether two datasets hold the same samples: the same ids in the same order, the same tensor bytes, and the
//! same manifest rows apart from where each sample is stored (shard file and index). What proves that a
//! merged N-part cache equals a single-process run, and that a resumed run equals an uninterrupted one.

use crate::{error_chain, Dataset, ManifestRow, Result, Schema, TensorSpec};

/// The differences between `a` and `b`, at most `max` of them (empty = equal). With `tolerance`, float tensors
/// may differ by that much per value (and the manifest's PSNR and stored-size columns are not compared):
/// what two devices' runs of the same experts are held to when their kernels are not bit-identical.
pub fn diff_datasets(a: &Dataset, b: &Dataset, max: usize, tolerance: Option<f32>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut push = |s: String| {
        if out.len() < max {
            out.push(s);
        }
    };
    let (sa, sb) = (a.schema(), b.schema());
    if sa != sb {
        push(format!("schemas differ: {}", schema_differences(sa, sb)));
        return Ok(out);
    }
    if a.len() != b.len() {
        push(format!("{} samples vs {}", a.len(), b.len()));
    }
    let names: Vec<String> = sa.map(|s| s.tensors.iter().map(|t| t.name.clone()).collect()).unwrap_or_default();
    let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
    for g in 0..a.len().min(b.len()) {
        let (ra, rb) = (&a.manifest()[g], &b.manifest()[g]);
        let same_row = |r: &ManifestRow| match tolerance {
            None => ManifestRow { shard: String::new(), index: 0, ..r.clone() },
            Some(_) => ManifestRow { shard: String::new(), index: 0, psnr: Default::default(), bytes: 0, ..r.clone() },
        };
        if same_row(ra) != same_row(rb) {
            push(format!("sample {g} ({}): manifest rows differ: {}", ra.sample_id, row_differences(&same_row(ra), &same_row(rb))));
            continue;
        }
        let ((shard_a, ia), (shard_b, ib)) = (a.sample(g)?, b.sample(g)?);
        for (t, name) in names.iter().enumerate() {
            let read = |s: &crate::Shard, i: usize, buf: &mut Vec<u8>| -> Result<()> {
                let v = s.tensor_at(i, t)?;
                *buf = v.decode()?;
                Ok(())
            };
            let r = read(shard_a, ia, &mut buf_a).and_then(|_| read(shard_b, ib, &mut buf_b));
            match r {
                Err(e) => push(format!("sample {g} ({}), tensor {name}: {}", ra.sample_id, error_chain(&e))),
                Ok(()) if buf_a != buf_b && tolerance.is_some() && sa.is_some_and(|s| s.tensors[t].dtype.is_float()) => {
                    let dtype = sa.map(|s| s.tensors[t].dtype).unwrap_or(crate::DType::F32);
                    let (mut va, mut vb) = (Vec::new(), Vec::new());
                    crate::codec::to_f32_into(dtype, &buf_a, &mut va);
                    crate::codec::to_f32_into(dtype, &buf_b, &mut vb);
                    let worst = va.iter().zip(&vb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                    if worst > tolerance.unwrap_or(0.0) || va.len() != vb.len() {
                        push(format!("sample {g} ({}), tensor {name}: values differ by up to {worst:e}", ra.sample_id));
                    }
                }
                Ok(()) if buf_a != buf_b => {
                    let first = buf_a.iter().zip(&buf_b).position(|(x, y)| x != y).unwrap_or(buf_a.len().min(buf_b.len()));
                    push(format!("sample {g} ({}), tensor {name}: bytes differ (first at byte {first})", ra.sample_id));
                }
                Ok(()) => {}
            }
        }
    }
    Ok(out)
}

/// `sr/hat u8 3×256×256 residual_u8(1)`: a tensor as a person reads it.
fn describe(t: &TensorSpec) -> String {
    let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×");
    format!("{} {} {shape} {}", t.name, t.dtype, t.codec)
}

/// The tensors and attributes in which two schemas differ, in words (A = the first dataset).
fn schema_differences(a: Option<&Schema>, b: Option<&Schema>) -> String {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (None, _) => return "A has no shards".into(),
        (_, None) => return "B has no shards".into(),
    };
    let mut parts = Vec::new();
    for t in &a.tensors {
        match b.tensors.iter().find(|o| o.name == t.name) {
            None => parts.push(format!("only in A: {}", describe(t))),
            Some(o) if o != t => parts.push(format!("{} in A, {} in B", describe(t), describe(o))),
            Some(_) => {}
        }
    }
    parts.extend(b.tensors.iter().filter(|t| a.index_of(&t.name).is_none()).map(|t| format!("only in B: {}", describe(t))));
    let keys: std::collections::BTreeSet<&String> = a.attrs.keys().chain(b.attrs.keys()).collect();
    for k in keys {
        let (x, y) = (a.attrs.get(k), b.attrs.get(k));
        if x != y {
            let show = |v: Option<&String>| {
                v.map(|v| if v.len() > 60 { format!("{}… ({} chars)", v.chars().take(60).collect::<String>(), v.len()) } else { v.clone() })
            };
            parts.push(format!("attr {k}: {} vs {}", show(x).unwrap_or_else(|| "absent".into()), show(y).unwrap_or_else(|| "absent".into())));
        }
    }
    if parts.is_empty() {
        parts.push("tensor order differs".into());
    }
    parts.join("; ")
}

/// The manifest columns in which two rows differ, with both values.
fn row_differences(a: &ManifestRow, b: &ManifestRow) -> String {
    let parts: Vec<String> = a.differences(b).into_iter().map(|(what, x, y)| format!("{what} {x} vs {y}")).collect();
    if parts.is_empty() {
        return "(a column not shown here)".into();
    }
    parts.join("; ")
}
