"""PyTorch side of srcache: a map-style Dataset over a cache (plain dataset dir or merged root), a resumable
epoch sampler, and the trainer's fusion model (`FusionNet`, see srcache.fusion).

Per sample, by default, exactly what the Rust trainer's loader puts in a batch before `Batch::to_device`:
stored dtypes (uint8 lr/hr, float16 sr/feat), CHW, after the same crop and dihedral transform (srcache.augment).
`sample_format="basicsr"` gives BasicSR's keys instead: `lq`, `gt` float32 in [0,1], expert outputs `sr`
likewise, features `feat` float32.

    from srcache.torch import SRCacheDataset, collate
    ds = SRCacheDataset("cache", crop=24, dihedral=True, seed=0)
    sampler = ds.sampler(shuffle=True)      # DDP: ranks from torch.distributed, split like DistributedSampler
    dl = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=4, persistent_workers=True, collate_fn=collate)
    for epoch in range(start_epoch, E):
        sampler.set_epoch(epoch)            # before iter(dl); reaches persistent workers
        for b in dl:                        # b["lr"] uint8 [B,3,h,w], b["sr"][k], b["feat"][k], b["index"]
            ...; sampler.advance(b)         # counts consumed samples: state_dict() resumes after them
    ckpt["data"] = ds.state_dict()          # later: ds.load_state_dict(ckpt["data"]) -> same remaining order

The epoch reaches DataLoader workers two ways, both safe with `persistent_workers=True` and any start method:
the sampler yields (epoch, index) pairs, and `ds.set_epoch` writes a shared-memory value the workers read (so a
stock `DistributedSampler` + `ds.set_epoch(e)` before `iter(dl)` works too). `ds[i]` draws (y0, x0, d) from
numpy's Generator seeded with (seed, epoch, i): reproducible, but not the Rust loader's ChaCha stream.
`ds.get(i, y0, x0, crop, d)` applies an explicit box (LR pixels) and dihedral code. `to_float(b)` floats a
default batch like `Batch::to_device` (u8 / 255, float16 -> float32).
"""
import multiprocessing
import multiprocessing.context

import numpy as np
import torch

from .augment import Plan
from .dataset import CacheDataset
from .fusion import FusionConfig, FusionNet, upsample_bicubic

__all__ = ["SRCacheDataset", "EpochSampler", "collate", "to_float", "FusionNet", "FusionConfig", "upsample_bicubic",
           "SAMPLE_FORMATS"]

SAMPLE_FORMATS = ("srcache", "basicsr")


def _to_torch(arr, dtype):
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype == "bf16" else t


def _unit_float(t):
    """BasicSR convention: images float32 in [0,1] (u8 / 255), float tensors as float32."""
    return t.float().mul_(1.0 / 255.0) if t.dtype == torch.uint8 else t.float()


# Delivered dtype per stored dtype (augment.py): bf16 is filled as int16 bit patterns, then viewed as bf16.
_STORE_DTYPES = {"u8": torch.uint8, "f16": torch.float16, "bf16": torch.int16, "u16": torch.float32, "f32": torch.float32}


def _empty(shape, dtype):
    """An uninitialised tensor, in shared memory when made in a DataLoader worker (as default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for s in shape:
        numel *= s
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class _Collated(list):
    """Samples that are views of one batch (`batch`), from `SRCacheDataset.__getitems__`."""

    batch = None


class _SharedEpoch:
    """An int64 in shared memory: written by `set_epoch` in the main process, read by DataLoader workers
    (forked, spawned or forkserver, persistent or not). Pickled outside a process start it travels as a
    plain int, so a dataset still pickles for other purposes."""

    def __init__(self, value=0):
        self._v = multiprocessing.RawValue("q", int(value))

    @property
    def value(self):
        return int(self._v.value)

    @value.setter
    def value(self, v):
        self._v.value = int(v)

    def __getstate__(self):
        if multiprocessing.context.get_spawning_popen() is not None:
            return {"shared": self._v}
        return {"value": self.value}

    def __setstate__(self, st):
        self._v = st["shared"] if "shared" in st else multiprocessing.RawValue("q", st["value"])


class SRCacheDataset(torch.utils.data.Dataset):
    """Map-style dataset: `ds[i]` -> {"lr", "hr", "sr": [per expert], "feat": [per expert with feats], "index",
    "epoch"} (`sample_format="basicsr"`: "lq", "gt", "sr", "feat" float32, "index", "epoch").

    experts: expert names (`sr/<name>`), default every one in the schema, sorted. load_feats: deliver
    `feat/<name>` for the experts that have one. crop: square crop side in LR pixels (None = whole patch;
    must be a multiple of `align`). dihedral: draw one of the 8 transforms per sample. verify: payload checksums
    "once" per payload per worker process (default), "always", or False. Picklable: shards are mapped lazily in
    each DataLoader worker. `ds[(epoch, i)]` (what EpochSampler yields) uses that epoch's transform.
    """

    def __init__(self, root, experts=None, load_feats=True, crop=None, dihedral=True, seed=0, verify="once",
                 sample_format="srcache"):
        if sample_format not in SAMPLE_FORMATS:
            raise ValueError(f"sample_format {sample_format!r}: not one of {SAMPLE_FORMATS}")
        self.data = root if isinstance(root, CacheDataset) else CacheDataset(root, verify=verify)
        if self.data.schema is None:
            raise ValueError(f"{self.data.root}: dataset has no shards")
        self.plan = Plan(self.data.schema, experts, load_feats, crop)
        self.dihedral = bool(dihedral)
        self.seed = int(seed)
        self.sample_format = sample_format
        self._epoch = _SharedEpoch(0)
        self._sampler = None

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

    @property
    def scale(self):
        """HR pixels per LR pixel."""
        return self.plan.hr.shape[1] // max(self.plan.h, 1)

    @property
    def epoch(self):
        return self._epoch.value

    def set_epoch(self, epoch):
        """Sets the epoch every worker draws transforms for; call it before `iter(dataloader)`."""
        self._epoch.value = int(epoch)

    def __len__(self):
        return len(self.data)

    def transform(self, i, epoch=None):
        """(y0, x0, crop, d) that `ds[i]` uses in `epoch` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, e, int(i)])
        y0, x0, d = self.plan.random(rng, self.dihedral)
        return y0, x0, self.plan.crop, d

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            epoch, i = int(item[0]), int(item[1])
        else:
            epoch, i = self.epoch, int(item)
        y0, x0, crop, d = self.transform(i, epoch)
        s = self.get(i, y0, x0, crop, d)
        s["epoch"] = torch.tensor(epoch, dtype=torch.int64)
        return s

    def get_numpy(self, i, y0=0, x0=0, crop=None, d=0):
        """As `get` in the default format, but numpy arrays (bf16 as uint16 bit patterns) and `index` an int."""
        p = self.plan
        y0, x0, crop = p.check_box(y0, x0, p.crop if crop is None else crop)
        i = int(i)
        one = lambda f: p.apply(f, self.data.tensor(i, f.name), y0, x0, crop, d)  # noqa: E731
        return {"lr": one(p.lr), "hr": one(p.hr), "sr": [one(f) for f in p.sr], "feat": [one(f) for f in p.feat], "index": i}

    def get(self, i, y0=0, x0=0, crop=None, d=0):
        """Sample i cropped at LR (y0, x0) with side `crop` (None = the dataset's crop) and dihedral code d."""
        s = self.get_numpy(i, y0, x0, crop, d)
        p = self.plan
        lr, hr = _to_torch(s["lr"], p.lr.dtype), _to_torch(s["hr"], p.hr.dtype)
        sr = [_to_torch(a, f.dtype) for a, f in zip(s["sr"], p.sr)]
        feat = [_to_torch(a, f.dtype) for a, f in zip(s["feat"], p.feat)]
        index = torch.tensor(s["index"], dtype=torch.int64)
        if self.sample_format == "basicsr":
            return {"lq": _unit_float(lr), "gt": _unit_float(hr), "sr": [_unit_float(t) for t in sr],
                    "feat": [t.float() for t in feat], "index": index}
        return {"lr": lr, "hr": hr, "sr": sr, "feat": feat, "index": index}

    def __getitems__(self, items):
        """Batched fetch, what a DataLoader calls with a batch's indices: every sample's crop is copied once,
        straight into one batch tensor per tensor name (in shared memory inside a worker, so nothing is copied
        again on the way to the main process). Returns the samples as views of that batch, which `collate`
        hands over as is (any other collate_fn still sees ordinary samples)."""
        if self.sample_format != "srcache" or not items:
            return [self[it] for it in items]
        p = self.plan
        parsed = [(int(it[0]), int(it[1])) if isinstance(it, (tuple, list)) else (self.epoch, int(it)) for it in items]
        boxes = [self.transform(i, e) for e, i in parsed]
        fields = [p.lr, p.hr, *p.sr, *p.feat]
        n = len(parsed)
        outs = []
        for f in fields:
            side = p.crop * f.num // f.den
            outs.append(_empty((n, f.shape[0], side, side), _STORE_DTYPES[f.dtype]))
        views = [t.numpy() for t in outs]
        for k, ((_, i), (y0, x0, crop, d)) in enumerate(zip(parsed, boxes)):
            for f, v in zip(fields, views):
                p.apply_into(f, self.data.tensor(i, f.name), y0, x0, crop, d, v[k])
        outs = [t.view(torch.bfloat16) if f.dtype == "bf16" else t for f, t in zip(fields, outs)]
        ns, nf = len(p.sr), len(p.feat)
        batch = {"lr": outs[0], "hr": outs[1], "sr": outs[2 : 2 + ns], "feat": outs[2 + ns : 2 + ns + nf],
                 "index": _empty((n,), torch.int64).copy_(torch.tensor([i for _, i in parsed])),
                 "epoch": _empty((n,), torch.int64).copy_(torch.tensor([e for e, _ in parsed]))}
        samples = _Collated({k: (v[j] if torch.is_tensor(v) else [t[j] for t in v]) for k, v in batch.items()} for j in range(n))
        samples.batch = batch
        return samples

    # ---- order and resumption -------------------------------------------------------------------------------
    def sampler(self, shuffle=True, num_replicas=None, rank=None, drop_last=False, seed=None, indices=None):
        """An EpochSampler over this dataset (or the sample `indices` of it; seed default: the dataset's),
        attached so that `state_dict` / `load_state_dict` carry its position."""
        self._sampler = EpochSampler(self, shuffle=shuffle, seed=self.seed if seed is None else seed,
                                     num_replicas=num_replicas, rank=rank, drop_last=drop_last, indices=indices)
        return self._sampler

    def state_dict(self):
        """Epoch, seed, size and (with an attached sampler) the position in this rank's epoch order."""
        st = {"epoch": self.epoch, "seed": self.seed, "len": len(self)}
        if self._sampler is not None:
            st["sampler"] = self._sampler.state_dict()
        return st

    def load_state_dict(self, st):
        if int(st["len"]) != len(self) or int(st["seed"]) != self.seed:
            raise ValueError(f"{self.data.root}: state is for a dataset of {st['len']} samples, seed {st['seed']}; "
                             f"this one has {len(self)} samples, seed {self.seed}")
        self.set_epoch(st["epoch"])
        if "sampler" in st:
            if self._sampler is None:
                raise ValueError("state holds a sampler position: create the sampler with ds.sampler(...) first")
            self._sampler.load_state_dict(st["sampler"])

    def __getstate__(self):
        st = self.__dict__.copy()
        st["_sampler"] = None  # the order lives in the main process only
        return st


class EpochSampler(torch.utils.data.Sampler):
    """Per epoch a permutation of the dataset or of `indices` (torch.Generator seeded with seed + epoch, padded
    and split over ranks exactly as `DistributedSampler`), yielding (epoch, index) pairs so the epoch reaches
    every worker.

    `advance(n_or_batch)` counts samples the training consumed; `state_dict()` records (epoch, consumed) and
    `load_state_dict` makes the next iteration yield the rest of that epoch's order (with the same world size),
    whatever the DataLoader had prefetched when the state was taken. `set_epoch` starts an epoch from its start.
    """

    def __init__(self, dataset, shuffle=True, seed=0, num_replicas=None, rank=None, drop_last=False, indices=None):
        import torch.distributed as dist

        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in 0..{num_replicas - 1}")
        self.dataset = dataset
        self.indices = None if indices is None else [int(i) for i in indices]  # a subset (e.g. a training split)
        self.n = len(dataset) if indices is None else len(self.indices)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        if self.drop_last and self.n % self.num_replicas:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = -(-self.n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self.consumed = 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.consumed = int(epoch), 0
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def order(self, epoch=None):
        """This rank's sample indices for `epoch` (default: the current one), in order."""
        e = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + e)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if not self.drop_last:
            pad = self.total_size - len(idx)
            idx += (idx * (-(-pad // max(len(idx), 1))))[:pad] if pad > 0 else []
        else:
            idx = idx[: self.total_size]
        idx = idx[self.rank : self.total_size : self.num_replicas]
        return idx if self.indices is None else [self.indices[j] for j in idx]

    def __iter__(self):
        e = self.epoch
        return iter([(e, i) for i in self.order(e)[self.consumed :]])

    def __len__(self):
        return self.num_samples - self.consumed

    def advance(self, n):
        """Counts `n` consumed samples (an int, or a batch: its "index" length)."""
        if isinstance(n, dict):
            n = len(n["index"])
        self.consumed = min(self.consumed + int(n), self.num_samples)

    def state_dict(self):
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "shuffle": self.shuffle,
                "num_replicas": self.num_replicas, "drop_last": self.drop_last, "len": self.n}

    def load_state_dict(self, st):
        for k in ("seed", "shuffle", "num_replicas", "drop_last", "len"):
            if st[k] != getattr(self, "n" if k == "len" else k):
                raise ValueError(f"sampler state has {k} = {st[k]!r}, this sampler {getattr(self, 'n' if k == 'len' else k)!r}: "
                                 "resume with the same dataset, seed and world size")
        self.epoch, self.consumed = int(st["epoch"]), int(st["consumed"])
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)


def _stack(ts):
    """torch.stack; in a DataLoader worker straight into shared memory (as default_collate does), so the batch
    is not copied again when it is sent to the main process."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(ts)
    storage = ts[0]._typed_storage()._new_shared(sum(t.numel() for t in ts), device=ts[0].device)
    out = ts[0].new(storage).resize_(len(ts), *ts[0].shape)
    return torch.stack(ts, 0, out=out)


def collate(samples):
    """Stacks samples into NCHW batches, key by key: tensors stacked, lists of tensors (sr, feat) stacked
    element-wise, e.g. {"lr", "hr", "sr": [...], "feat": [...], "index": int64 [B], "epoch": int64 [B]}."""
    if isinstance(samples, _Collated) and samples.batch is not None:
        return samples.batch
    out = {}
    for k, v in samples[0].items():
        if isinstance(v, (list, tuple)):
            out[k] = [_stack(list(t)) for t in zip(*[s[k] for s in samples])] if v else []
        else:
            out[k] = _stack([torch.as_tensor(s[k]) for s in samples])
    return out


def to_float(batch, device=None, non_blocking=False):
    """A default-format batch as float32 on `device`, like Rust `Batch::to_device`: uint8 / 255, others cast."""

    def mv(t):
        t = t.to(device, non_blocking=non_blocking) if device is not None else t
        return _unit_float(t)

    out = {"lr": mv(batch["lr"]), "hr": mv(batch["hr"]), "sr": [mv(t) for t in batch["sr"]],
           "feat": [mv(t) for t in batch["feat"]]}
    for k, v in batch.items():
        out.setdefault(k, v)
    return out
