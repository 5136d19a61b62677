"""Checks the epoch, resumption, BasicSR and URL behaviour of srcache.torch.SRCacheDataset on a real cache.

    .venv/bin/python python/tests/check_dataset_resume.py ROOT            # one process, DataLoader workers
    torchrun --standalone --nproc_per_node 2 python/tests/check_dataset_resume.py ROOT --ddp

* persistent_workers=True (fork and spawn workers): epochs 0 and 1 deliver different crops, each equal to
  ds.transform(i, epoch) computed in this process, both through a stock DistributedSampler + ds.set_epoch
  (shared-memory epoch) and through ds.sampler() (the epoch travels with each index);
* EpochSampler orders equal DistributedSampler's (same seed, epoch, ranks, padding);
* state_dict() taken after k batches of epoch 1, loaded into a new dataset + sampler + DataLoader (2 workers),
  yields exactly the rest of that epoch: same indices, same pixels, in order; a state for another world size is
  refused;
* sample_format="basicsr": lq/gt float32 in [0,1] equal to lr/hr / 255, expert outputs likewise, feats float32;
* s3:// / gs:// / http:// roots are refused in one line starting "srcache reads local paths only".
With --ddp (2 ranks, gloo): each rank resumes its own remainder; ranks are disjoint and the remainders are the
uninterrupted epoch's. Prints `ok ...` lines (rank 0), exits non-zero on the first failure.
"""
import argparse
import pathlib
import os
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from srcache import ShardError, open_dataset  # noqa: E402
from srcache.torch import SRCacheDataset, collate  # noqa: E402

RANK = 0


def fail(msg):
    print(f"FAIL (rank {RANK}): {msg}", flush=True)
    sys.exit(1)


def ok(msg):
    if RANK == 0:
        print(f"ok {msg}", flush=True)


def crop_of(ds, i, epoch):
    y0, x0, c, d = ds.transform(i, epoch)
    return ds.get(i, y0, x0, c, d)["lr"]


def epochs(root, ctx, via_sampler):
    ds = SRCacheDataset(root, crop=12, dihedral=True, seed=5, load_feats=False)
    n = min(len(ds), 16)
    sub = list(range(n))
    if via_sampler:
        sampler = ds.sampler(shuffle=False, indices=sub)
    else:
        sampler = DistributedSampler(torch.utils.data.Subset(ds, sub), num_replicas=1, rank=0, shuffle=False)
        ds_sub = torch.utils.data.Subset(ds, sub)
    dl = DataLoader(ds if via_sampler else ds_sub, batch_size=4, sampler=sampler, num_workers=2, persistent_workers=True,
                    collate_fn=collate, multiprocessing_context=ctx)
    got = []
    for e in range(2):
        sampler.set_epoch(e)
        if not via_sampler:
            ds.set_epoch(e)
        lr = torch.cat([b["lr"] for b in dl])
        idx = torch.cat([b["index"] for b in dl]).tolist()
        want = torch.stack([crop_of(ds, i, e) for i in idx])
        if not torch.equal(lr, want):
            fail(f"{ctx}, {'EpochSampler' if via_sampler else 'DistributedSampler + set_epoch'}: epoch {e} crops from "
                 "persistent workers differ from ds.transform(i, epoch)")
        got.append(lr)
    if torch.equal(got[0], got[1]):
        fail(f"{ctx}: epochs 0 and 1 gave identical crops with persistent workers")
    return n


def take(dl, k=None):
    out = []
    for b in dl:
        out.append(b)
        if k is not None and len(out) == k:
            break
    return out


def resume(root, world, rank, k=2, batch=3):
    """(indices of the uninterrupted epoch 1, indices after resuming at batch k) for this rank, pixels checked."""
    mk = lambda: SRCacheDataset(root, crop=12, dihedral=True, seed=9)  # noqa: E731
    ds = mk()
    sampler = ds.sampler(shuffle=True, num_replicas=world, rank=rank)
    ref = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=9)
    for e in (0, 3):
        sampler.set_epoch(e)
        ref.set_epoch(e)
        if sampler.order() != list(ref):
            fail(f"EpochSampler order differs from DistributedSampler's in epoch {e}")
    kw = dict(batch_size=batch, num_workers=2, collate_fn=collate, persistent_workers=True)
    dl = DataLoader(ds, sampler=sampler, **kw)
    sampler.set_epoch(1)
    full = take(dl)
    sampler.set_epoch(1)
    for b in take(dl, k):
        sampler.advance(b)
    state = ds.state_dict()
    if state["sampler"]["consumed"] != k * batch or state["epoch"] != 1:
        fail(f"state after {k} batches: {state}")
    ds2 = mk()
    s2 = ds2.sampler(shuffle=True, num_replicas=world, rank=rank)
    ds2.load_state_dict(state)
    rest = take(DataLoader(ds2, sampler=s2, **kw))
    a = torch.cat([b["index"] for b in full])[k * batch :]
    b = torch.cat([b["index"] for b in rest])
    if not torch.equal(a, b):
        fail(f"resumed order {b.tolist()} differs from the rest of the epoch {a.tolist()}")
    fa = torch.cat([b["lr"] for b in full])[k * batch :]
    fb = torch.cat([b["lr"] for b in rest])
    if not torch.equal(fa, fb) or not all(int(e) == 1 for bb in rest for e in bb["epoch"]):
        fail("resumed samples differ in pixels or epoch from the uninterrupted epoch's")
    other = ds2.state_dict()
    other["sampler"] = dict(other["sampler"], num_replicas=world + 1)
    try:
        d3 = mk()
        d3.sampler(num_replicas=world, rank=rank)
        d3.load_state_dict(other)
        fail("a state for another world size was accepted")
    except ValueError as e:
        if "world size" not in str(e):
            fail(f"wrong refusal: {e}")
    return torch.cat([b["index"] for b in full]).tolist(), b.tolist()


def basicsr(root):
    a = SRCacheDataset(root, crop=12, seed=2)
    b = SRCacheDataset(root, crop=12, seed=2, sample_format="basicsr")
    x, y = a[3], b[3]
    if set(y) != {"lq", "gt", "sr", "feat", "index", "epoch"}:
        fail(f"basicsr keys {sorted(y)}")
    for name, t, ref in [("lq", y["lq"], x["lr"]), ("gt", y["gt"], x["hr"])] + [("sr", t, r) for t, r in zip(y["sr"], x["sr"])]:
        want = ref.float() / 255.0 if ref.dtype == torch.uint8 else ref.float()
        if t.dtype != torch.float32 or not torch.allclose(t, want, atol=1e-7) or t.min() < 0 or t.max() > 1:
            fail(f"basicsr {name}: {t.dtype}, not the default sample in [0,1]")
    if any(t.dtype != torch.float32 for t in y["feat"]) or len(y["feat"]) != len(x["feat"]):
        fail("basicsr feat not float32")
    bt = collate([b[0], b[1]])
    ok(f"basicsr samples: lq {tuple(bt['lq'].shape)} gt {tuple(bt['gt'].shape)} float32 in [0,1], "
       f"{len(bt['sr'])} sr, {len(bt['feat'])} feat")


def urls():
    for url in ("s3://bucket/cache", "gs://b/c", "http://host/cache", "https://host/c", "hf://datasets/x"):
        for fn in (open_dataset, SRCacheDataset):
            try:
                fn(url)
                fail(f"{url} accepted")
            except ShardError as e:
                msg = str(e)
                if not msg.startswith("srcache reads local paths only: ") or "\n" in msg or url not in msg:
                    fail(f"{url}: message {msg!r}")
    ok(f"non-local URLs refused in one line: {msg}")


def main():
    global RANK
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--ddp", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.ddp:
        dist.init_process_group("gloo")
        RANK, world = dist.get_rank(), dist.get_world_size()
        full, rest = resume(a.root, world, RANK)
        got = [None] * world
        dist.all_gather_object(got, (full, rest))
        if RANK == 0:
            n = len(open_dataset(a.root))
            if set().union(*[set(f) for f, _ in got]) != set(range(n)):
                fail("ranks' epochs do not cover the dataset")
            if any(set(got[r][1]) & set(got[q][1]) for r in range(world) for q in range(r + 1, world)) and n % world == 0:
                fail("resumed remainders overlap across ranks")
        ok(f"ddp world {world}: every rank resumed epoch 1 after 2 batches with its own remainder "
           f"({[len(r) for _, r in got]} samples), same indices and pixels as uninterrupted")
        dist.destroy_process_group()
        return
    for ctx in ("fork", "spawn"):
        for via in (False, True):
            n = epochs(a.root, ctx, via)
    ok(f"persistent workers (fork, spawn) see set_epoch: epochs 0/1 differ and equal ds.transform over {n} samples, "
       "via DistributedSampler + ds.set_epoch and via ds.sampler()")
    full, rest = resume(a.root, 1, 0)
    ok(f"state_dict after 2 of {len(full) // 3} batches -> load_state_dict (new dataset, 2 workers) yields the "
       f"remaining {len(rest)} samples in the same order, same pixels; other world size refused")
    basicsr(a.root)
    urls()


if __name__ == "__main__":
    from srcache.launch import run_and_exit

    run_and_exit(main)
