"""A whole srcache dataset: a plain dataset dir (shard-*.srs + manifest.parquet) or a MERGED ROOT
(`srcache merge OUT`: OUT/manifest.parquet whose `shard` column holds paths relative to OUT, e.g.
`parts/1-of-3/shard-00002.srs`, and key-value metadata `srcache.parts`). Either way row r of the manifest is
global sample r and lives in `root / row.shard` at `row.index`.

    from srcache.dataset import open_dataset
    ds = open_dataset("cache")            # CacheDataset
    len(ds), ds.schema, ds.experts
    ds.sample(7)                          # {tensor name: np.ndarray}
    ds.meta(7), ds.row(7)                 # shard metadata record, manifest row
    ds.pca("x"), ds.reconstruct_feat(ds.sample(7), "x")   # compact (PCA) features -> [C, h, w] float32

Shards are memory-mapped lazily, the first time a sample of theirs is read, in the process that reads it:
a CacheDataset pickles without its maps (DataLoader workers with spawn reopen them) and notices a fork
(workers with fork reopen theirs too, so no checksum bookkeeping is shared across processes).
"""
import json
import os
from pathlib import Path, PurePosixPath

import numpy as np

from .reader import Shard, ShardError, _reconstruct_feat, _schema_pca, manifest_metadata, read_manifest

MANIFEST_FILE = "manifest.parquet"
PARTS_KEY = "srcache.parts"
VERSION_KEY = "srcache.manifest_version"

__all__ = ["CacheDataset", "open_dataset", "MANIFEST_FILE", "PARTS_KEY"]


def open_dataset(root, verify="once"):
    """Opens a plain dataset dir or a merged root; see CacheDataset."""
    return CacheDataset(root, verify=verify)


class CacheDataset:
    """Read access to every sample of a dataset, in manifest row order.

    `verify`: payload checksums checked "once" per payload per open shard (default, as in Rust), "always", or
    False (skip). Errors are ShardError naming the dataset sample, the shard, its in-shard index and tensor.
    """

    def __init__(self, root, verify="once"):
        self.root = Path(root)
        self.verify = verify
        mpath = self.root / MANIFEST_FILE
        if not mpath.is_file():
            raise ShardError(f"{self.root}: no {MANIFEST_FILE} (not a finished srcache dataset or merged root)")
        table = read_manifest(mpath)
        self.metadata = manifest_metadata(mpath)
        if self.metadata.get(VERSION_KEY) != "1":
            raise ShardError(f"{mpath}: missing or unsupported {VERSION_KEY} {self.metadata.get(VERSION_KEY)!r} (want '1')")
        for col in ("sample_id", "shard", "index"):
            if col not in table.column_names:
                raise ShardError(f"{mpath}: no column {col!r}")
        parts = self.metadata.get(PARTS_KEY)
        self.parts = json.loads(parts) if parts is not None else None
        self._index = table.column("index").to_numpy().astype(np.int64)
        enc = table.column("shard").combine_chunks().dictionary_encode()  # dictionary in order of first appearance
        self.shard_paths = enc.dictionary.to_pylist()  # relative to root
        shard_of = enc.indices.to_numpy().astype(np.int32)
        for s in self.shard_paths:
            p = PurePosixPath(s)
            if not s or p.is_absolute() or ".." in p.parts:
                raise ShardError(f"{mpath}: shard path {s!r} must be relative to the root, without '..'")
        self._shard_of = shard_of
        # Rows of each shard, for the consistency check when the shard is opened.
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.shard_paths) + 1))
        self._rows_of = [order[bounds[k] : bounds[k + 1]] for k in range(len(self.shard_paths))]
        self._check_files()
        self._manifest = table
        self._shards = {}
        self._pid = os.getpid()
        self.schema = None
        self.schema = self.shard(0).schema if self.shard_paths else None
        self.names = [t["name"] for t in self.schema["tensors"]] if self.schema else []

    def _check_files(self):
        """Every shard file on disk is in the manifest and vice versa (a stale manifest is an error)."""
        dirs = {PurePosixPath(s).parent for s in self.shard_paths}
        for p in self.parts or []:
            if not (self.root / p).is_dir():
                raise ShardError(f"{self.root}: part directory {p} listed in {PARTS_KEY} is missing")
            dirs.add(PurePosixPath(p))
        on_disk = set()
        for d in dirs:
            names = sorted(p.name for p in (self.root / d).glob("shard-*.srs"))
            nums = sorted(int(n[6:-4]) for n in names if n[6:-4].isdigit())
            if nums != list(range(len(names))):
                raise ShardError(f"{self.root / d}: shard files are not numbered 0..{len(names) - 1} without gaps: {names[:8]}")
            on_disk |= {str(d / n) for n in names}
        on_disk = {s[2:] if s.startswith("./") else s for s in on_disk}
        listed = set(self.shard_paths)
        if listed != on_disk:
            missing, extra = sorted(listed - on_disk), sorted(on_disk - listed)
            raise ShardError(f"{self.root}: manifest and shard files disagree (stale manifest?): "
                             f"missing on disk {missing[:5]}, not in manifest {extra[:5]}")

    # ---- pickling / processes --------------------------------------------------------------------------------
    def __getstate__(self):
        st = self.__dict__.copy()
        st["_shards"] = {}
        st["_manifest"] = None
        return st

    def __setstate__(self, st):
        self.__dict__.update(st)
        self._pid = os.getpid()

    def close(self):
        for s in self._shards.values():
            s.close()
        self._shards = {}

    # ---- access ---------------------------------------------------------------------------------------------
    def __len__(self):
        return len(self._shard_of)

    def __repr__(self):
        kind = f"merged root of {len(self.parts)} parts" if self.parts is not None else "dataset"
        return f"CacheDataset({str(self.root)!r}: {kind}, {len(self)} samples in {len(self.shard_paths)} shards)"

    @property
    def manifest(self):
        """The manifest as a pyarrow.Table (re-read lazily after unpickling)."""
        if self._manifest is None:
            self._manifest = read_manifest(self.root / MANIFEST_FILE)
        return self._manifest

    @property
    def experts(self):
        """Every `sr/<name>` of the schema, sorted (the Rust loader's default expert list)."""
        return sorted(n[3:] for n in self.names if n.startswith("sr/"))

    def spec(self, name):
        for t in self.schema["tensors"]:
            if t["name"] == name:
                return t
        raise KeyError(f"{self.root}: schema has no tensor {name!r} (has {self.names})")

    def shard(self, k):
        """Shard k (of shard_paths), opened on first use in this process."""
        if self._pid != os.getpid():
            self._shards = {}
            self._pid = os.getpid()
        s = self._shards.get(k)
        if s is None:
            rel = self.shard_paths[k]
            s = Shard(self.root / rel, verify=self.verify)
            rows = self._rows_of[k]
            if len(s) != len(rows) or not np.array_equal(np.sort(self._index[rows]), np.arange(len(s))):
                raise ShardError(f"{s.path}: holds {len(s)} samples but the manifest lists {len(rows)} rows "
                                 f"for it with other indices (stale manifest?)")
            if self.schema is not None and s.schema != self.schema:
                raise ShardError(f"{s.path}: schema differs from {self.root / self.shard_paths[0]}")
            self._shards[k] = s
        return s

    def locate(self, i):
        """Global sample i -> (shard path relative to root, index in that shard)."""
        i = self._check(i)
        return self.shard_paths[self._shard_of[i]], int(self._index[i])

    def _check(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.root}: sample {i} out of range (dataset holds {len(self)})")
        return i

    def _where(self, i):
        return f"{self.root}: dataset sample {i}"

    def tensor(self, i, name, verify=None):
        i = self._check(i)
        try:
            s = self.shard(int(self._shard_of[i]))
            return s.tensor(int(self._index[i]), name, verify)
        except ShardError as e:
            raise ShardError(f"{self._where(i)}: {e}") from None

    def sample(self, i, verify=None):
        """{tensor name: np.ndarray} of global sample i, CHW in the stored dtypes (bf16 as uint16 bits)."""
        i = self._check(i)
        try:
            s = self.shard(int(self._shard_of[i]))
            return s.sample(int(self._index[i]), verify)
        except ShardError as e:
            raise ShardError(f"{self._where(i)}: {e}") from None

    def pca(self, expert):
        """The PcaBasis of `feat/<expert>` (schema attr `feat/<expert>/pca`), or None when stored as is."""
        return _schema_pca(self.schema or {}, expert, self.root)

    def reconstruct_feat(self, x, expert):
        """Features [..., C, h, w] float32 from `feat/<expert>`'s PCA coefficients: `x` is a sample dict (from
        `sample`) or the coefficients [..., k, h, w] (numpy array, or torch tensor computed on its device)."""
        return _reconstruct_feat(self.schema or {"tensors": []}, self.pca(expert), x, expert, self.root)

    def meta(self, i):
        """The shard's metadata record of sample i: {"id", "source", "patch", "variant", "psnr"}."""
        i = self._check(i)
        return self.shard(int(self._shard_of[i])).meta(int(self._index[i]))

    def row(self, i):
        """Manifest row i as a dict."""
        i = self._check(i)
        return {k: v[0] for k, v in self.manifest.slice(i, 1).to_pydict().items()}

    def check(self):
        """Opens every shard, hashes every payload, and checks shard metadata ids against the manifest."""
        ids = self.manifest.column("sample_id").to_pylist()
        for k, rel in enumerate(self.shard_paths):
            s = self.shard(k)
            try:
                s.check()
            except ShardError as e:
                raise ShardError(f"{self.root}: {e}") from None
            for r in self._rows_of[k]:
                got = s.meta(int(self._index[r]))["id"]
                if got != ids[r]:
                    raise ShardError(f"{self._where(int(r))}: manifest sample_id {ids[r]!r} but {rel} index "
                                     f"{int(self._index[r])} holds {got!r}")
