"""Samples/s of srcache.torch.SRCacheDataset behind a torch DataLoader (not a test: prints figures only), set up
like `srcache bench loader`'s Rust side: batch 8, 2 workers, stored dtypes, whole patches, all 8 dihedral codes.

    .venv/bin/python python/tests/bench_torch_loader.py ROOT [--batch 8] [--workers 2] [--epochs 3] [--crop C]

First epoch of fresh workers (payload checksums verified on first read), then the best of --epochs further
epochs through the same persistent workers (their shards stay open and verified, as the Rust loader's do).
Workers run torch single-threaded; the main process only receives batches.
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from srcache.torch import SRCacheDataset, collate  # noqa: E402


def _one_thread(_):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--format", default="srcache", choices=["srcache", "basicsr"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = SRCacheDataset(a.root, crop=a.crop, dihedral=True, sample_format=a.format)
    sampler = ds.sampler(shuffle=True)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=a.workers, collate_fn=collate,
                                     persistent_workers=a.workers > 0, drop_last=True, worker_init_fn=_one_thread,
                                     prefetch_factor=2 if a.workers > 0 else None)
    times, nbytes = [], 0
    for e in range(1 + a.epochs):
        sampler.set_epoch(e)
        t0 = time.perf_counter()
        n = 0
        for b in dl:
            n += len(b["index"])
            if e == 0:
                nbytes += sum(t.numel() * t.element_size() for k, v in b.items() for t in (v if isinstance(v, list) else [v]))
        times.append((time.perf_counter() - t0, n))
    (t_first, n_first), rest = times[0], times[1:]
    best = min(t / n for t, n in rest)
    mb = nbytes / max(n_first, 1) / 1e6
    print(f"{a.root}: {len(ds)} samples, {mb:.2f} MB/sample delivered ({a.format}), batch {a.batch}, {a.workers} workers: "
          f"first epoch {n_first / t_first:.0f} samples/s, then best of {a.epochs} epochs {1 / best:.0f} samples/s "
          f"({mb / best / 1e3:.2f} GB/s)")


if __name__ == "__main__":
    main()
