"""Checks srcache.torch.SRCacheDataset on a real dataset (plain dir or merged root), without distributed.

    .venv/bin/python python/tests/check_torch_dataset.py ROOT

* get(i, 0, 0, whole patch, d=0) returns exactly the stored tensors (uint8 lr/hr, float16 sr/feat), as fresh
  writable tensors that do not alias the shard mmap;
* the dihedral codes: d=4 is the transpose of d=0, d=2 / d=1 flip rows / columns, d=7 = rot180 of transpose;
* every tensor's crop box scales with its size (hr = s x lr; feat at half resolution needs even offsets);
* ds[i] is a pure function of (seed, epoch, i), different across epochs, crop boxes aligned;
* a DataLoader with 2 workers, started with fork and with spawn (the dataset is pickled and reopens its shards
  in each worker), delivers batches identical to collating ds[i] in this process;
* collate gives NCHW batches in stored dtypes; to_float gives float32 with uint8 / 255.
Prints `ok ...` lines, exits non-zero on the first failure.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from srcache.torch import SRCacheDataset, collate, to_float  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def flat(s):
    return [s["lr"], s["hr"], *s["sr"], *s["feat"]]


def same(a, b):
    return all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(flat(a), flat(b))) and torch.equal(
        torch.as_tensor(a["index"]), torch.as_tensor(b["index"]))


def main():
    root = sys.argv[1]
    ds = SRCacheDataset(root, crop=None, dihedral=True, seed=3)
    p = ds.plan
    n = len(ds)
    i = n // 2
    whole = ds.get(i, 0, 0, None, 0)
    stored = ds.data.sample(i)
    names = ["lr", "hr"] + [f"sr/{e}" for e in ds.experts] + [f"feat/{e}" for e in ds.feat_experts]
    for name, t in zip(names, flat(whole)):
        want = stored[name]
        if t.numpy().tobytes() != want.tobytes() or t.shape != want.shape:
            fail(f"get(d=0, whole patch) {name} differs from the stored tensor")
        if not t.numpy().flags.writeable or np.shares_memory(t.numpy(), want):
            fail(f"{name}: delivered tensor aliases the shard or is read-only")
    want_dt = {"u8": torch.uint8, "f16": torch.float16}
    for name, t, f in zip(names, flat(whole), p.fields()):
        if f.dtype in want_dt and t.dtype != want_dt[f.dtype]:
            fail(f"{name}: dtype {t.dtype}, stored {f.dtype}")
    print(f"ok get(whole, d=0) = stored tensors for {names}, fresh writable tensors in stored dtypes")

    c = p.crop
    base = ds.get(i, 0, 0, c, 0)
    for d, fn in [(4, lambda x: x.transpose(-1, -2)), (2, lambda x: x.flip(-2)), (1, lambda x: x.flip(-1)),
                  (3, lambda x: x.flip(-2, -1)), (7, lambda x: x.transpose(-1, -2).flip(-2, -1)),
                  (6, lambda x: x.transpose(-1, -2).flip(-2)), (5, lambda x: x.transpose(-1, -2).flip(-1))]:
        got = ds.get(i, 0, 0, c, d)
        for name, a, b in zip(names, flat(got), flat(base)):
            if not torch.equal(a, fn(b)):
                fail(f"d={d}: {name} is not the expected transform of d=0")
    print("ok dihedral codes 1..7 are the documented flips/transposes of d=0")

    if p.crop == min(p.h, p.w) and p.h >= 2 * p.align:
        small = (min(p.h, p.w) // 2) // p.align * p.align
        y0 = x0 = p.align
        sub = ds.get(i, y0, x0, small, 0)
        for name, a, b, f in zip(names, flat(sub), flat(whole), p.fields()):
            fy, fx, side = f.box(y0, x0, small)
            if not torch.equal(a, b[:, fy:fy + side, fx:fx + side]):
                fail(f"crop ({y0},{x0},{small}): {name} is not the matching box of the whole patch")
        try:
            ds.get(i, p.align + 1, 0, small, 0) if p.align > 1 else None
            if p.align > 1:
                fail("unaligned crop offset accepted")
        except ValueError:
            pass
        print(f"ok crop boxes scale per tensor (align {p.align}: {[f'{f.name} {f.num}/{f.den}' for f in p.fields()]})")

    cds = SRCacheDataset(root, crop=max(p.align, (min(p.h, p.w) // 2) // p.align * p.align), dihedral=True, seed=3)
    a, b = cds[i], cds[i]
    cds.set_epoch(1)
    boxes = {cds.transform(k) for k in range(n)}
    if not same(a, b):
        fail("ds[i] differs between two calls in the same epoch")
    if {cds.transform(k, 0) for k in range(n)} == boxes:
        fail("every transform identical across epochs 0 and 1")
    if any(y % p.align or x % p.align for y, x, _, _ in boxes):
        fail("unaligned random crop offset")
    print(f"ok ds[i] deterministic in (seed, epoch, i), {len({b[3] for b in boxes})} dihedral codes drawn over {n} samples")

    idx = list(range(min(n, 12)))
    want = [collate([cds[k] for k in idx[j:j + 4]]) for j in range(0, len(idx), 4)]
    for ctx in ("fork", "spawn"):
        dl = torch.utils.data.DataLoader(torch.utils.data.Subset(cds, idx), batch_size=4, num_workers=2,
                                         collate_fn=collate, multiprocessing_context=ctx)
        got = list(dl)
        if len(got) != len(want) or not all(same(g, w) for g, w in zip(got, want)):
            fail(f"DataLoader workers ({ctx}) deliver different batches than the main process")
    b = want[0]
    if b["lr"].dim() != 4 or b["lr"].dtype != torch.uint8 or any(s.dtype != torch.float16 for s in b["sr"]):
        fail(f"collate: lr {b['lr'].dtype}{tuple(b['lr'].shape)}, sr {[s.dtype for s in b['sr']]}")
    f = to_float(b)
    if f["lr"].dtype != torch.float32 or not torch.equal(f["lr"], b["lr"].float() * (1.0 / 255.0)):
        fail("to_float: lr is not u8 / 255 in float32")
    shapes = {k: tuple(v.shape) for k, v in b.items() if torch.is_tensor(v)}
    shapes.update({"sr": [tuple(s.shape) for s in b["sr"]], "feat": [tuple(s.shape) for s in b["feat"]]})
    print(f"ok DataLoader fork + spawn workers = in-process batches; collate NCHW {shapes}")


if __name__ == "__main__":
    main()
