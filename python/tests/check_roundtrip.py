"""Called by formats/tests/python_roundtrip.rs: reads every tensor of a Rust-written dataset with the pure
Python reader and compares it byte-for-byte with `expected/<sample>__<tensor>.bin` written by Rust (every
codec, residual_u8 and affine_u8_zstd included). Then checks numpy's `bicubic_u8` (the residual base) against
Rust's on a real photo crop, and the PCA basis attr (exact values, reconstruction close to Rust's)."""
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from srcache.reader import Shard, read_manifest  # noqa: E402
from srcache import bicubic_u8, open_dataset  # noqa: E402

root = pathlib.Path(sys.argv[1])
exp = root / "expected"
checked = 0
for sp in sorted((root / "ds").glob("shard-*.srs")):
    s = Shard(sp)
    for i in range(len(s)):
        m = s.meta(i)
        for name, arr in s.sample(i).items():
            want = (exp / f"{m['id']}__{name.replace('/', '_')}.bin").read_bytes()
            got = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            assert got == want, f"{sp}: sample {i} tensor {name} ({s.spec(name)['codec']['kind']}) differs"
            checked += 1
t = read_manifest(root / "ds" / "manifest.parquet")
assert t.num_rows == int((root / "expected" / "count.txt").read_text()), t.num_rows
assert "psnr/bicubic" in t.column_names, t.column_names
print(f"ok {checked} tensors, {t.num_rows} manifest rows")

# A damaged lr makes its sample's residual tensors fail with an error naming both; other samples still read.
import shutil  # noqa: E402
import tempfile  # noqa: E402

first = sorted((root / "ds").glob("shard-*.srs"))[0]
with tempfile.TemporaryDirectory() as td:
    bad = pathlib.Path(td) / first.name
    shutil.copy(first, bad)
    s = Shard(bad)
    off = s._entries[1 * s.n_tensors + s.names.index("lr")][0]
    s.close()
    with open(bad, "r+b") as f:
        f.seek(off + 3)
        byte = f.read(1)
        f.seek(off + 3)
        f.write(bytes([byte[0] ^ 0x20]))
    s = Shard(bad)
    try:
        s.tensor(1, "sr/res")
        raise AssertionError("a residual over a damaged lr must not decode")
    except ValueError as e:
        msg = str(e)
        assert "sample 1, tensor sr/res" in msg and "base lr is unreadable" in msg and "tensor lr: payload checksum" in msg, msg
    want = (exp / f"{s.meta(0)['id']}__sr_res.bin").read_bytes()
    assert s.tensor(0, "sr/res").tobytes() == want, "sample 0 must still decode"
    s.close()
print("ok damaged lr reported through its residual tensor")

# B(lr): numpy against Rust, byte for byte, on a real photo crop.
bdir = exp / "bicubic"
(crop_path,) = bdir.glob("crop_*.bin")
bh, bw = (int(v) for v in crop_path.stem[5:].split("x"))
crop = np.frombuffer(crop_path.read_bytes(), np.uint8).reshape(3, bh, bw)
scales = sorted(int(p.stem[3:]) for p in bdir.glob("b_s*.bin"))
for sc in scales:
    got = bicubic_u8(crop, sc)
    want = np.frombuffer((bdir / f"b_s{sc}.bin").read_bytes(), np.uint8).reshape(3, sc * bh, sc * bw)
    assert got.shape == want.shape and np.array_equal(got, want), \
        f"bicubic_u8 s={sc}: {int((got != want).sum())} bytes differ (first at {np.argwhere(got != want)[:1].tolist()})"
assert scales == [1, 2, 3, 4, 5], scales
print(f"ok bicubic_u8 equals Rust on chelsea.png {bh}x{bw} for s = {scales[0]}..{scales[-1]}")

# PCA basis: attr read back exactly, reconstruction of the stored coefficients close to Rust's (float math).
ds = open_dataset(root / "ds")
b = ds.pca("p")
assert ds.pca("nope") is None
ref = json.loads((exp / "pca.json").read_text())
assert (b.k, b.channels) == (ref["k"], ref["channels"]) and b.fit == ref["fit"], (b, ref)
assert b.components.tobytes() == (exp / "pca_components.bin").read_bytes(), "components differ from Rust's f32"
assert b.mean.tobytes() == (exp / "pca_mean.bin").read_bytes(), "mean differs from Rust's f32"
for g in range(len(ds)):
    sample = ds.sample(g)
    rec = ds.reconstruct_feat(sample, "p")
    want = np.frombuffer((exp / f"{ds.meta(g)['id']}__feat_p.recon").read_bytes(), "<f4").reshape(rec.shape)
    assert rec.dtype == np.float32 and rec.shape == (b.channels,) + sample["feat/p"].shape[1:], rec.shape
    err = float(np.abs(rec - want).max())
    assert err < 1e-5, f"sample {g}: reconstruct differs from Rust by {err}"
    # Batched and from the bare array too; project inverts reconstruct on the span.
    assert np.allclose(ds.reconstruct_feat(sample["feat/p"][None], "p")[0], rec, atol=1e-6)
    assert np.allclose(b.project(rec), sample["feat/p"].astype(np.float32), atol=1e-4)
try:
    import torch

    tt = torch.from_numpy(ds.sample(0)["feat/p"])
    assert np.allclose(ds.reconstruct_feat(tt, "p").numpy(), ds.reconstruct_feat(ds.sample(0), "p"), atol=1e-5)
except ImportError:
    print("skipped: torch path of reconstruct_feat (no torch)")
print(f"ok pca basis feat/p k={b.k} C={b.channels} exact, reconstruct matches Rust on {len(ds)} samples")
