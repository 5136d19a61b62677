"""Reads every sample of an srcache dataset (plain dir or merged root) with the `srcache` package and checks
it; then checks that a flipped payload byte is reported naming the shard, the sample and the tensor.

    .venv/bin/python python/tests/check_dataset.py ROOT [--skip-corruption]

Checks: every shard opens (header/schema/index/footer checksums, table consistency), the manifest rows match
the shards (counts, indices, sample ids), every payload checksum (Shard.check), every tensor of every sample
decodes to its schema shape and dtype, read-only zero-copy views for `raw` payloads; the dataset pickles and
reads the same after unpickling. Corruption (on a copy in a temp dir: the manifest and the victim shard
copied, every other shard symlinked): one byte flipped in the payload of a `raw` tensor (and, if the dataset has
one, of a compressed tensor) of a sample in the middle; reading that sample must raise ShardError whose message
names the shard path, the in-shard sample index, the dataset sample index and the tensor; `verify=False` must
read the raw tensor without complaint (the option skips hashing). Prints `ok ...` lines; exits non-zero on any
failure. Also prints read throughput (samples/s, all tensors, checksums verified once) per codec mix.
"""
import argparse
import os
import pathlib
import pickle
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from srcache import ShardError, open_dataset  # noqa: E402
from srcache.reader import DTYPES  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def read_all(root):
    ds = open_dataset(root)
    if len(ds) == 0:
        fail(f"{root}: dataset is empty")
    specs = {t["name"]: t for t in ds.schema["tensors"]}
    codecs = sorted({t["codec"]["kind"] for t in specs.values()})
    t0 = time.perf_counter()
    nbytes = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        if list(s) != ds.names:
            fail(f"sample {i}: tensors {list(s)} != schema {ds.names}")
        for name, a in s.items():
            spec = specs[name]
            if list(a.shape) != list(spec["shape"]) or a.dtype != np.dtype(DTYPES[spec["dtype"]]):
                fail(f"sample {i} {name}: {a.dtype}{list(a.shape)} != schema {spec['dtype']}{spec['shape']}")
            if spec["codec"]["kind"] == "raw" and (a.flags.writeable or a.flags.owndata):
                fail(f"sample {i} {name}: raw tensor is not a read-only view of the mmap")
            nbytes += a.nbytes
    dt = time.perf_counter() - t0
    print(f"ok read {len(ds)} samples x {len(ds.names)} tensors ({nbytes / 1e6:.1f} MB decoded, codecs {codecs}) "
          f"in {dt:.2f}s: {len(ds) / dt:.0f} samples/s, {nbytes / dt / 1e6:.0f} MB/s")
    t0 = time.perf_counter()
    ds.check()
    print(f"ok every payload checksum and manifest sample_id ({len(ds.shard_paths)} shards) in {time.perf_counter() - t0:.2f}s")
    again = pickle.loads(pickle.dumps(ds))
    for i in sorted({0, len(ds) // 2, len(ds) - 1}):
        a, b = ds.sample(i), again.sample(i)
        if any(not np.array_equal(a[n], b[n]) for n in a) or again.meta(i) != ds.meta(i):
            fail(f"sample {i} differs after pickling the dataset")
    rows = ds.manifest.num_rows
    if rows != len(ds):
        fail(f"manifest rows {rows} != len {len(ds)}")
    kind = f"merged root of {len(ds.parts)} parts" if ds.parts is not None else "plain dataset"
    print(f"ok {kind}: {len(ds)} samples, manifest rows match, pickles ({len(pickle.dumps(ds))} bytes)")
    return ds


def payload_offset(shard_path, n_tensors, i, t):
    with open(shard_path, "rb") as f:
        f.seek(-64, os.SEEK_END)
        index_off = struct.unpack("<Q", f.read(8))[0]
        f.seek(index_off + (i * n_tensors + t) * 32)
        off, ln, _raw, _sum = struct.unpack("<QQQQ", f.read(32))
    return off, ln


def corrupt_copy(ds, tmp, g, name):
    """Copy of ds under tmp with one payload byte of (sample g, tensor name) flipped; returns (root, shard rel, j)."""
    rel, j = ds.locate(g)
    root = pathlib.Path(tmp) / "ds"
    for p in ds.root.rglob("*"):
        if p.is_dir():
            continue
        q = root / p.relative_to(ds.root)
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".srs" and p.relative_to(ds.root).as_posix() != rel:
            os.symlink(p.resolve(), q)
        else:
            shutil.copyfile(p, q)
    shard = root / rel
    off, ln = payload_offset(shard, len(ds.names), j, ds.names.index(name))
    with open(shard, "r+b") as f:
        f.seek(off + ln // 2)
        byte = f.read(1)
        f.seek(off + ln // 2)
        f.write(bytes([byte[0] ^ 0x5A]))
    return root, rel, j


def check_corruption(ds):
    specs = ds.schema["tensors"]
    g = len(ds) // 2
    raw = [t["name"] for t in specs if t["codec"]["kind"] == "raw"]
    packed = [t["name"] for t in specs if t["codec"]["kind"] != "raw"]
    victims = ([raw[-1]] if raw else []) + ([packed[-1]] if packed else [])
    for name in victims:
        with tempfile.TemporaryDirectory(prefix="srcache-corrupt-") as tmp:
            root, rel, j = corrupt_copy(ds, tmp, g, name)
            bad = open_dataset(root)
            try:
                bad.sample(g)
            except ShardError as e:
                msg = str(e)
                want = [rel, f"sample {j}", f"tensor {name}", f"dataset sample {g}", "checksum"]
                missing = [w for w in want if w not in msg]
                if missing:
                    fail(f"corruption error lacks {missing}: {msg}")
                print(f"ok flipped byte in {name} ({dict((t['name'], t['codec']['kind']) for t in specs)[name]}) reported: {msg}")
            else:
                fail(f"flipped byte in {rel} sample {j} tensor {name} went unnoticed")
            # Other samples of the same shard still read; the check covers the whole dataset.
            if len(bad) > 1:
                bad.sample(g - 1 if g > 0 else g + 1)
            try:
                bad.check()
                fail("Dataset.check() missed the flipped byte")
            except ShardError:
                pass
            if ds.spec(name)["codec"]["kind"] == "raw":
                fast = open_dataset(root, verify=False)
                a = fast.tensor(g, name)
                b = ds.tensor(g, name)
                if np.array_equal(a, b):
                    fail("verify=False read the original bytes: the flip did not land in the payload")
                print("ok verify=False skips the payload checksum")
    if not victims:
        print("skipped: corruption check: schema has no tensors")
    # A shard cut short: reported on open as truncated, naming the shard.
    rel, j = ds.locate(g)
    with tempfile.TemporaryDirectory(prefix="srcache-trunc-") as tmp:
        root, rel, j = corrupt_copy(ds, tmp, g, ds.names[0])
        with open(root / rel, "r+b") as f:
            f.truncate(os.path.getsize(root / rel) - 100)
        try:
            open_dataset(root).sample(g)
            fail(f"truncated {rel} went unnoticed")
        except ShardError as e:
            if rel not in str(e) or "truncated" not in str(e):
                fail(f"truncation error does not name the shard and the fault: {e}")
            print(f"ok truncated shard reported: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--skip-corruption", action="store_true")
    a = ap.parse_args()
    ds = read_all(a.root)
    if a.skip_corruption:
        print("skipped: corruption check (--skip-corruption)")
    else:
        check_corruption(ds)


if __name__ == "__main__":
    main()
