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

Opening checks the manifest as Rust `Dataset::open` does: every shard of the directory (or parts) is opened
(its index, not its payloads) and row r must be the r-th sample of the dataset, field for field with the
shard's own metadata and table (ids, patch, psnr, byte counts; no duplicate ids), so a manifest with swapped
`index`, ids or shard names is a ShardError naming it and the row, never another sample's tensors.
Shards are then memory-mapped lazily, the first time a sample of theirs is read, in the process that reads it
(and must be the files checked: same size, index checksum and sample count, or ShardError):
a CacheDataset pickles without its maps (DataLoader workers with spawn reopen them) and notices a fork
(workers with fork reopen theirs too, so no checksum bookkeeping is shared across processes).
"""
import os
import re
from pathlib import Path

import numpy as np

from . import _manifest
from .reader import Shard, ShardError, _reconstruct_feat, _schema_pca, read_manifest, read_manifest_and_metadata

MANIFEST_FILE = "manifest.parquet"
PARTS_KEY = "srcache.parts"
VERSION_KEY = "srcache.manifest_version"

__all__ = ["CacheDataset", "open_dataset", "local_path", "MANIFEST_FILE", "PARTS_KEY"]


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(root):
    """`root` as a local Path; `file://` URLs are accepted, any other URL (s3://, gs://, http://...) is refused
    in one line: shards are memory-mapped, which needs a local (or mounted) file system."""
    text = os.fspath(root)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if _URL.match(text):
        raise ShardError(f"srcache reads local paths only: {text!r} is a URL; copy or mount the dataset "
                         "(e.g. s3fs, gcsfuse, rclone mount) and pass its local directory")
    return Path(text)


def open_dataset(root, verify="once"):
    """Opens a plain dataset dir or a merged root; see CacheDataset."""
    return CacheDataset(root, verify=verify)


class CacheDataset:
    """Read access to every sample of a dataset, in manifest row order.

    `verify`: payload checksums checked "once" per payload per open shard (default, as in Rust), "always", or
    False (skip). Errors are ShardError naming the dataset sample, the shard, its in-shard index and tensor.
    """

    def __init__(self, root, verify="once"):
        self.root = local_path(root)
        self.verify = verify
        mpath = self.root / MANIFEST_FILE
        if not os.path.lexists(mpath):
            raise ShardError(f"{self.root}: no {MANIFEST_FILE} (not a finished srcache dataset or merged root)")
        table, self.metadata = read_manifest_and_metadata(mpath)  # a FIFO or directory there: refused at once
        if self.metadata.get(VERSION_KEY) != "1":
            raise ShardError(f"{mpath}: missing or unsupported {VERSION_KEY} {self.metadata.get(VERSION_KEY)!r} (want '1')")
        parts = self.metadata.get(PARTS_KEY)
        self.parts = _manifest.parse_parts(parts, mpath) if parts is not None else None
        # Every shard of the directory (or of the parts), in dataset order; each row is checked against them
        # (ids, patch, psnr, byte counts, order) as Rust `Dataset::open` does, so a manifest that lies about
        # which sample sits where is an error here, not another sample's tensors later.
        self.shard_paths = _manifest.layout(str(self.root), self.parts)  # relative to root
        self._shards = {}
        self._pid = os.getpid()
        # Each shard is closed after its check: its table and metadata need not stay in memory (or in forked
        # workers); it is mapped again on first use, in the process that reads it.
        shard_of, self._index, facts = _manifest.cross_check(
            table, mpath, self.root, self.shard_paths, lambda k: Shard(self.root / self.shard_paths[k], verify=self.verify))
        self._shard_of = shard_of.astype(np.int32)
        # What each shard was when checked: a process that opens it later (a DataLoader worker) must find the
        # same file, or the rows checked here would not describe it.
        self._fingerprints = [(size, isum, n) for _, n, size, isum in facts]
        starts = np.cumsum([0] + [n for _, n, _, _ in facts])
        self._rows_of = [np.arange(starts[k], starts[k + 1]) for k in range(len(facts))]
        self.schema = facts[0][0] if facts else None
        self._manifest = table
        self.names = [t["name"] for t in self.schema["tensors"]] if self.schema else []

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
            fp = (s.file_size, s.index_checksum, len(s))
            if fp != self._fingerprints[k] or s.schema != self.schema:
                s.close()
                raise ShardError(f"{s.path}: changed on disk since the dataset was opened (size, index checksum, samples "
                                 f"{fp}, were {self._fingerprints[k]}); shards must not change while in use")
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
