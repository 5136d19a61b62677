"""Test fixture for check_loader_parity.py: writes a dump in its format from an INDEPENDENT reference of the
Rust loader's crop + dihedral semantics (element-by-element index formula of trainer/src/dihedral.rs's
`reference`, plan arithmetic of trainer/src/loader.rs written out here), not from srcache.augment/torch.
Only tensor decoding uses srcache.reader.Shard (its byte-exactness is checked by formats/tests/python_roundtrip.rs).

    .venv/bin/python python/tests/make_parity_dump.py ROOT DUMPDIR [--samples 12] [--crop C] [--seed 1]
                     [--corrupt]   # flips one delivered byte, so check_loader_parity.py must fail
"""
import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from srcache.reader import Shard  # noqa: E402


def reference(src, y0, x0, side, d):
    """out[c, i, j] per dihedral.rs `reference`: a/b from the flips, (y, x) swapped by the transpose."""
    t, fv, fh = d & 4 != 0, d & 2 != 0, d & 1 != 0
    i = np.arange(side)[:, None].repeat(side, 1)
    j = np.arange(side)[None, :].repeat(side, 0)
    a = side - 1 - i if fv else i
    b = side - 1 - j if fh else j
    y, x = (b, a) if t else (a, b)
    return src[:, y0 + y, x0 + x]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("dump")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corrupt", action="store_true")
    a = ap.parse_args()
    root = pathlib.Path(a.root).resolve()
    dump = pathlib.Path(a.dump)
    dump.mkdir(parents=True, exist_ok=True)
    (dump / "root").write_text(str(root) + "\n")
    table = pq.read_table(root / "manifest.parquet", columns=["shard", "index"]).to_pydict()
    shards = {}

    def shard(rel):
        if rel not in shards:
            shards[rel] = Shard(root / rel)
        return shards[rel]

    s0 = shard(table["shard"][0])
    spec = {t["name"]: t for t in s0.schema["tensors"]}
    h, w = spec["lr"]["shape"][1:]
    experts = sorted(n[3:] for n in spec if n.startswith("sr/"))
    names = ["lr", "hr"] + [f"sr/{e}" for e in experts] + [f"feat/{e}" for e in experts if f"feat/{e}" in spec]
    # Pixels per LR pixel: tensor height / lr height; offsets align to the coarsest tensor.
    align = max([1] + [h // spec[n]["shape"][1] for n in names if spec[n]["shape"][1] < h])
    crops = [a.crop] if a.crop else sorted({min(h, w), max(align, (min(h, w) // 2) // align * align)})
    rng = np.random.default_rng(a.seed)
    n = len(table["shard"])
    out = []
    for k in range(a.samples):
        g = int(rng.integers(0, n)) if k else n - 1
        c = crops[(k // 8) % len(crops)]
        y0 = int(rng.integers(0, (h - c) // align + 1)) * align
        x0 = int(rng.integers(0, (w - c) // align + 1)) * align
        d = k % 8
        sh = shard(table["shard"][g])
        j = table["index"][g]
        files = {}
        for name in names:
            src = sh.tensor(j, name)
            th = spec[name]["shape"][1]
            arr = reference(src, y0 * th // h, x0 * th // h, c * th // h, d)
            if spec[name]["dtype"] in ("u16", "f32"):
                arr = arr.astype(np.float32)
            rel = f"s{k}/{name.replace('/', '_')}.bin"
            (dump / rel).parent.mkdir(parents=True, exist_ok=True)
            data = bytearray(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
            if a.corrupt and k == a.samples - 1 and name == names[-1]:
                data[len(data) // 3] ^= 1
            (dump / rel).write_bytes(bytes(data))
            files[name] = rel
        out.append({"index": g, "y0": y0, "x0": x0, "crop": c, "d": d, "files": files})
    (dump / "aug.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {len(out)} samples x {len(names)} tensors to {dump} (crops {crops}, align {align})")


if __name__ == "__main__":
    main()
