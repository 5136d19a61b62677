"""Read throughput of the Python side on one or more datasets (not a test: prints figures only).

    .venv/bin/python python/tests/bench_dataset.py ROOT [ROOT ...] [--repeat 3] [--crop C]

Per root: CacheDataset.sample over every sample (all tensors decoded; `raw` ones are mmap views, their u8
pages touched) with payload checksums verified once (a fresh dataset per pass) and with verify=False; then
SRCacheDataset[i] (crop + dihedral + copy into torch tensors, what a DataLoader worker does per sample).
Best of --repeat passes, one thread, single process.
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from srcache import open_dataset  # noqa: E402
from srcache.torch import SRCacheDataset  # noqa: E402


def best(fn, n, repeat):
    t = min(fn() for _ in range(repeat))
    return n / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--crop", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for root in a.roots:
        probe = open_dataset(root)
        n = len(probe)
        codecs = sorted({t["codec"]["kind"] for t in probe.schema["tensors"]})
        mb = sum(v.nbytes for v in probe.sample(0).values()) / 1e6

        def read(verify):
            def run():
                ds = open_dataset(root, verify=verify)
                t0 = time.perf_counter()
                for i in range(n):
                    for v in ds.sample(i).values():
                        if v.dtype == np.uint8:
                            v.sum()
                return time.perf_counter() - t0
            return run

        def items():
            ds = SRCacheDataset(root, crop=a.crop, dihedral=True)
            t0 = time.perf_counter()
            for i in range(n):
                ds[i]
            return time.perf_counter() - t0

        r1, r2, r3 = best(read("once"), n, a.repeat), best(read(False), n, a.repeat), best(items, n, a.repeat)
        print(f"{root}: {n} samples, {mb:.2f} MB/sample decoded, codecs {codecs}: sample() {r1:.0f}/s verified, "
              f"{r2:.0f}/s unverified ({r2 * mb:.0f} MB/s); SRCacheDataset[i] {r3:.0f}/s")


if __name__ == "__main__":
    main()
