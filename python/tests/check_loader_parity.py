"""Checks srcache.torch.SRCacheDataset.get() against tensors dumped by the Rust trainer loader, byte for byte.

    .venv/bin/python python/tests/check_loader_parity.py DUMPDIR

DUMP FORMAT (written by the Rust side; all paths relative to DUMPDIR):

  DUMPDIR/root       UTF-8 text: the dataset path (plain dataset dir or merged root), absolute or relative to
                     DUMPDIR; surrounding whitespace/newline ignored.
  DUMPDIR/aug.json   JSON list, one object per delivered sample:
                       {"index": i,        # global dataset sample index (manifest row)
                        "y0": y, "x0": x,  # crop offset in LR pixels (multiples of the loader's align)
                        "crop": c,         # crop side in LR pixels (the loader's crop; whole patch = min(h, w))
                        "d": d,            # dihedral code 0..7: bit 2 transpose, bit 1 vertical flip, bit 0 horizontal
                        "files": {"lr": "s0/lr.bin", "hr": "s0/hr.bin",
                                  "sr/<expert>": "s0/sr_<expert>.bin", ...,      # one per loaded expert
                                  "feat/<expert>": "s0/feat_<expert>.bin", ...}} # one per loaded feature map
  each .bin          the raw bytes of that tensor of that sample as the loader delivered it with the default
                     LoaderConfig (stored_dtype = true): stored dtype (u8 lr/hr, f16 sr/feat; bf16 as its
                     u16 bits; u16/f32 tensors as f32), little-endian, C-contiguous CHW of shape
                     [C, crop*num/den, crop*num/den] after crop + dihedral, i.e. the bytes of
                     batch.lr.get(k) (etc.) for the sample's row k in the batch.
  Tensor names are schema names; every name in "files" must be one the dataset delivers with its default
  experts (every sr/<name> sorted) and load_feats = true. "files" may list any subset; lr and hr are required.

On the Rust side this means recording, per sample, the (y0, x0, d) the worker drew (or forcing explicit ones)
and writing each batch tensor's slice; the Python side recomputes with get(index, y0, x0, crop, d).
Prints `ok N samples, M tensors, ...` (and which d codes were covered); exits non-zero on the first mismatch,
naming sample, tensor, transform and the first differing byte.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

from srcache.torch import SRCacheDataset  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def delivered_bytes(t):
    import torch

    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return np.ascontiguousarray(t.numpy()).astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def main():
    if len(sys.argv) != 2:
        fail("usage: check_loader_parity.py DUMPDIR")
    dump = pathlib.Path(sys.argv[1])
    root = pathlib.Path((dump / "root").read_text().strip())
    if not root.is_absolute():
        root = dump / root
    entries = json.loads((dump / "aug.json").read_text())
    if not isinstance(entries, list) or not entries:
        fail(f"{dump / 'aug.json'}: expected a non-empty JSON list")
    ds = SRCacheDataset(root)
    tensors = 0
    codes = set()
    crops = set()
    for e in entries:
        i, y0, x0, c, d = (int(e[k]) for k in ("index", "y0", "x0", "crop", "d"))
        files = e["files"]
        for req in ("lr", "hr"):
            if req not in files:
                fail(f"sample {i}: files lacks {req!r}")
        got = ds.get(i, y0, x0, c, d)
        named = {"lr": got["lr"], "hr": got["hr"]}
        named.update({f"sr/{x}": t for x, t in zip(ds.experts, got["sr"])})
        named.update({f"feat/{x}": t for x, t in zip(ds.feat_experts, got["feat"])})
        for name, rel in files.items():
            if name not in named:
                fail(f"sample {i}: dump has {name!r}, the dataset delivers {sorted(named)}")
            want = (dump / rel).read_bytes()
            have = delivered_bytes(named[name])
            where = f"sample {i} tensor {name} (y0={y0} x0={x0} crop={c} d={d}, {tuple(named[name].shape)} {named[name].dtype})"
            if len(want) != len(have):
                fail(f"{where}: dump holds {len(want)} bytes, Python delivers {len(have)}")
            if want != have:
                k = next(k for k in range(len(want)) if want[k] != have[k])
                fail(f"{where}: first difference at byte {k} (rust {want[k]}, python {have[k]})")
            tensors += 1
        codes.add(d)
        crops.add(c)
    print(f"ok {len(entries)} samples, {tensors} tensors match the Rust loader byte for byte "
          f"(dihedral codes {sorted(codes)}, crops {sorted(crops)}, root {root})")


if __name__ == "__main__":
    main()
