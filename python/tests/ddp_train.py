"""Multi-process DDP training smoke test over an srcache cache with srcache.torch.SRCacheDataset (CPU, gloo).

    torchrun --nproc_per_node 2 python/tests/ddp_train.py ROOT --steps 3 [--batch 4] [--crop C] [--workers 1]

Each rank: SRCacheDataset (random crop + dihedral) under a DistributedSampler, a DataLoader whose workers
are started with "spawn" (so the dataset really is pickled and reopens its shards in the worker), a tiny
fusion model (per-pixel softmax gate over the experts' SR outputs, computed from the bicubic-upsampled LR and
the SR outputs) wrapped in DistributedDataParallel, and --steps optimizer steps. Checks, gathered to rank 0
with all_gather_object: over one epoch the ranks read disjoint sample indices that together cover the dataset
(apart from the padding DistributedSampler adds when the dataset size is not a multiple of the world size),
and every rank ends with identical parameters. Rank 0 prints one `ok ...` line; any failure exits non-zero.
`--negative-control` makes every rank sample as rank 0, so the coverage check must print FAIL and exit 1.
"""
import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from srcache.torch import SRCacheDataset, collate, to_float  # noqa: E402


class Gate(torch.nn.Module):
    """out = sum_k softmax_k(conv([up(lr), sr_1..sr_K])) * sr_k, per pixel."""

    def __init__(self, experts, hidden=8):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3 * (experts + 1), hidden, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(hidden, experts, 3, padding=1),
        )

    def forward(self, lr, srs):
        up = F.interpolate(lr, size=srs[0].shape[-2:], mode="bicubic", align_corners=False)
        w = torch.softmax(self.net(torch.cat([up, *srs], 1)), 1)
        return sum(w[:, k : k + 1] * s for k, s in enumerate(srs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negative-control", action="store_true",
                    help="every rank samples as rank 0: the coverage check must FAIL (tests the test)")
    a = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    ds = SRCacheDataset(a.root, crop=a.crop, dihedral=True, seed=a.seed, load_feats=False)
    if not ds.experts:
        raise SystemExit(f"{a.root}: no sr/<expert> tensors to fuse")
    sampler = DistributedSampler(ds, num_replicas=world, rank=0 if a.negative_control else rank, shuffle=True, seed=a.seed)
    dl = DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=a.workers, collate_fn=collate,
                    multiprocessing_context="spawn" if a.workers > 0 else None)
    model = DDP(Gate(len(ds.experts)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    # Epoch 0: train on the first --steps batches, keep reading to the end to record what this rank saw.
    sampler.set_epoch(0)
    ds.set_epoch(0)
    seen, losses, steps = [], [], 0
    for b in dl:
        seen.extend(b["index"].tolist())
        # Stored dtypes, as the Rust loader hands them over: u8 images, sr u8 (the default) or f16 (--lossless).
        if b["lr"].dtype != torch.uint8 or any(s.dtype not in (torch.uint8, torch.float16) for s in b["sr"]):
            raise SystemExit(f"rank {rank}: batch dtypes lr {b['lr'].dtype}, sr {[s.dtype for s in b['sr']]}")
        if steps < a.steps:
            f = to_float(b)
            loss = F.l1_loss(model(f["lr"], f["sr"]), f["hr"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
    if steps < a.steps:
        raise SystemExit(f"rank {rank}: only {steps} batches in an epoch, wanted {a.steps} steps (smaller --batch?)")

    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [None] * world
    dist.all_gather_object(gathered, {"seen": seen, "params": params, "losses": losses})
    errors, line = [], ""
    if rank == 0:
        n = len(ds)
        per = [g["seen"] for g in gathered]
        total = sum(len(s) for s in per)
        padded = -(-n // world) * world  # DistributedSampler pads by repeating the first indices
        union = set().union(*map(set, per))
        dup = sum(len(s) - len(set(s)) for s in per) + sum(
            len(set(per[r]) & set(per[q])) for r in range(world) for q in range(r + 1, world))
        if total != padded:
            errors.append(f"ranks read {total} samples, expected {padded}")
        if union != set(range(n)):
            errors.append(f"union of rank indices misses {sorted(set(range(n)) - union)[:10]}")
        if dup != padded - n:
            errors.append(f"{dup} repeated indices across ranks, DistributedSampler pads only {padded - n}")
        for r, g in enumerate(gathered[1:], 1):
            if not torch.equal(g["params"], gathered[0]["params"]):
                errors.append(f"rank {r} parameters differ from rank 0 after DDP steps")
        l0 = sum(g["losses"][0] for g in gathered) / world
        l1 = sum(g["losses"][-1] for g in gathered) / world
        line = (f"ok ddp world {world}: {n} samples, epoch split {[len(s) for s in per]} disjoint and covering "
                f"(padding {padded - n}), experts {ds.experts}, crop {ds.crop}, {a.steps} steps, "
                f"l1 {l0:.4f} -> {l1:.4f}, params identical on all ranks, {time.perf_counter() - t0:.1f}s")
    verdict = [errors]
    dist.broadcast_object_list(verdict, src=0)
    dist.destroy_process_group()
    if verdict[0]:
        if rank == 0:
            print("FAIL: " + "; ".join(verdict[0]), flush=True)
        sys.exit(1)
    if rank == 0:
        print(line, flush=True)


if __name__ == "__main__":
    from srcache.launch import run_and_exit

    run_and_exit(main)
