"""PyTorch map-style dataset over an srcache cache (plain dataset dir or merged root), delivering per sample
exactly what the Rust trainer's loader puts in a batch before `Batch::to_device`: stored dtypes (uint8 lr/hr,
float16 sr/feat), CHW, after the same crop and dihedral transform (see srcache.augment for the semantics).

    from srcache.torch import SRCacheDataset, collate
    ds = SRCacheDataset("cache", crop=24, dihedral=True, seed=0)
    sampler = torch.utils.data.DistributedSampler(ds)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, num_workers=4, collate_fn=collate)
    for epoch in range(E):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)   # with persistent_workers, set_epoch does not reach workers
        for b in dl:  # b["lr"] uint8 [B,3,h,w], b["hr"] uint8, b["sr"][k] f16 [B,3,H,W], b["feat"][k], b["index"] int64 [B]
            ...

`ds.get(i, y0, x0, crop, d)` applies an explicit box (LR pixels) and dihedral code; `ds[i]` draws
(y0, x0, d) from numpy's Generator seeded with (seed, epoch, i) — reproducible, but not the Rust loader's
ChaCha stream. To float like `Batch::to_device`: `to_float(b)` (u8 / 255, float16 -> float32).
"""
import numpy as np
import torch

from .augment import Plan
from .dataset import CacheDataset

__all__ = ["SRCacheDataset", "collate", "to_float"]


def _to_torch(arr, dtype):
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == "bf16" else t


class SRCacheDataset(torch.utils.data.Dataset):
    """Map-style dataset: `ds[i]` -> {"lr", "hr", "sr": [per expert], "feat": [per expert with feats], "index"}.

    experts: expert names (`sr/<name>`), default every one in the schema, sorted. load_feats: deliver
    `feat/<name>` for the experts that have one. crop: square crop side in LR pixels (None = whole patch;
    must be a multiple of `align`). dihedral: draw one of the 8 transforms per sample. verify: payload checksums
    "once" per payload per worker process (default), "always", or False.
    Picklable: shards are mapped lazily in each DataLoader worker.
    """

    def __init__(self, root, experts=None, load_feats=True, crop=None, dihedral=True, seed=0, verify="once"):
        self.data = root if isinstance(root, CacheDataset) else CacheDataset(root, verify=verify)
        if self.data.schema is None:
            raise ValueError(f"{self.data.root}: dataset has no shards")
        self.plan = Plan(self.data.schema, experts, load_feats, crop)
        self.dihedral = bool(dihedral)
        self.seed = int(seed)
        self.epoch = 0

    @property
    def experts(self):
        return self.plan.experts

    @property
    def feat_experts(self):
        return self.plan.feat_experts

    @property
    def feat_channels(self):
        """Per expert: feature channels delivered, 0 when it has none (or load_feats is off)."""
        return self.plan.feat_channels

    @property
    def crop(self):
        return self.plan.crop

    @property
    def align(self):
        return self.plan.align

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.data)

    def transform(self, i, epoch=None):
        """(y0, x0, crop, d) that `ds[i]` uses in `epoch` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, e, int(i)])
        y0, x0, d = self.plan.random(rng, self.dihedral)
        return y0, x0, self.plan.crop, d

    def __getitem__(self, i):
        y0, x0, crop, d = self.transform(i)
        return self.get(i, y0, x0, crop, d)

    def get_numpy(self, i, y0=0, x0=0, crop=None, d=0):
        """As `get`, but numpy arrays (bf16 as uint16 bit patterns) and `index` an int."""
        p = self.plan
        y0, x0, crop = p.check_box(y0, x0, p.crop if crop is None else crop)
        i = int(i)
        one = lambda f: p.apply(f, self.data.tensor(i, f.name), y0, x0, crop, d)  # noqa: E731
        return {"lr": one(p.lr), "hr": one(p.hr), "sr": [one(f) for f in p.sr], "feat": [one(f) for f in p.feat], "index": i}

    def get(self, i, y0=0, x0=0, crop=None, d=0):
        """Sample i cropped at LR (y0, x0) with side `crop` (None = the dataset's crop) and dihedral code d."""
        s = self.get_numpy(i, y0, x0, crop, d)
        p = self.plan
        return {
            "lr": _to_torch(s["lr"], p.lr.dtype),
            "hr": _to_torch(s["hr"], p.hr.dtype),
            "sr": [_to_torch(a, f.dtype) for a, f in zip(s["sr"], p.sr)],
            "feat": [_to_torch(a, f.dtype) for a, f in zip(s["feat"], p.feat)],
            "index": torch.tensor(s["index"], dtype=torch.int64),
        }


def collate(samples):
    """Stacks samples into NCHW batches: {"lr", "hr", "sr": [...], "feat": [...], "index": int64 [B]}."""
    return {
        "lr": torch.stack([s["lr"] for s in samples]),
        "hr": torch.stack([s["hr"] for s in samples]),
        "sr": [torch.stack(t) for t in zip(*[s["sr"] for s in samples])] if samples[0]["sr"] else [],
        "feat": [torch.stack(t) for t in zip(*[s["feat"] for s in samples])] if samples[0]["feat"] else [],
        "index": torch.stack([torch.as_tensor(s["index"], dtype=torch.int64) for s in samples]),
    }


def to_float(batch, device=None, non_blocking=False):
    """The batch as float32 on `device`, like Rust `Batch::to_device`: uint8 scaled by 1/255, others cast."""

    def mv(t):
        t = t.to(device, non_blocking=non_blocking) if device is not None else t
        return t.float().mul_(1.0 / 255.0) if t.dtype == torch.uint8 else t.float()

    return {
        "lr": mv(batch["lr"]),
        "hr": mv(batch["hr"]),
        "sr": [mv(t) for t in batch["sr"]],
        "feat": [mv(t) for t in batch["feat"]],
        "index": batch["index"],
    }
