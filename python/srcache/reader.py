"""Reader of srcache shards (`*.srs`, formats/FORMAT.md) on numpy + zstandard + xxhash.

    from srcache.reader import Shard, read_manifest
    s = Shard("ds/shard-00000.srs")
    s.sample(0)          # {name: np.ndarray}, CHW, stored dtype (bf16 as uint16 bit patterns)
    s.tensor(0, "lr")    # one tensor; `raw` payloads are zero-copy read-only views of the mmap
    s.meta(0)            # {"id", "source", "patch", "variant", "psnr"}
    s.pca("x")           # PcaBasis of feat/x (attr feat/x/pca) or None; s.reconstruct_feat(s.sample(0), "x")
    read_manifest("ds/manifest.parquet")   # pyarrow.Table

Codecs: raw, zstd, shuffle_zstd, affine_u8 (lossy), affine_u8_zstd (lossy, = zstd of the affine_u8 payload),
residual_u8 (lossless u8 sr stored as its difference from `bicubic_u8(lr, s)`, the exact integer bicubic of
FORMAT.md; decoding it reads the same sample's `lr`, checksum-checked like any read).

Integrity, as in the Rust reader: only regular files are opened (a FIFO or device is refused at once, never
blocked on); header, schema, index and footer checksums (xxh3-64) are checked on open, the schema and metadata
JSON must have the types Rust's serde structs give them (srcache._schema: no negative or string shapes, no
object where the record array belongs, no duplicate names or fields, no NaN literals, no nesting that
overflows the parser), and every table entry must lie in the payload area with the spec's sizes and, for the
zstd codecs, a content its stored bytes can hold; so a crafted shard is refused before anything is sized from
what it claims. Each payload's checksum is checked the first time that payload is read through an open `Shard`
(`verify="once"`, the default), on every read (`verify="always"`) or never (`verify=False`). Before each read
the file's size is compared with its size at open (a shard truncated under a reader is a ShardError, not a
SIGBUS), and non-raw payloads are read with pread. `Shard.check()` hashes every payload. Errors are `ShardError`
(a ValueError) naming the shard path and, where relevant, the sample index in the shard and the tensor name.
"""
import errno
import functools
import json
import mmap
import os
import stat
import struct

import numpy as np
import xxhash
import zstandard

from . import _schema

MAGIC = b"\x89SRS\r\n\x1a\n"
MAGIC_END = b"\x89SRSEND\n"
VERSION = 1
HEADER_LEN = 64
FOOTER_LEN = 64
ENTRY_LEN = 32
ALIGN = 64
DTYPES = {"u8": np.uint8, "u16": np.uint16, "f16": np.float16, "bf16": np.uint16, "f32": np.float32}
SIZES = {"u8": 1, "u16": 2, "f16": 2, "bf16": 2, "f32": 4}
CODECS = ("raw", "zstd", "shuffle_zstd", "affine_u8", "affine_u8_zstd", "residual_u8")

__all__ = ["Shard", "ShardError", "PcaBasis", "read_manifest", "manifest_metadata", "bf16_to_f32", "bicubic_u8", "xxh3_64"]


class ShardError(ValueError):
    """A shard that cannot be read as written: names the path, and the sample/tensor where relevant."""


def xxh3_64(data):
    """xxh3-64, seed 0, of any bytes-like object (the checksum the format uses)."""
    return xxhash.xxh3_64_intdigest(data)


def bf16_to_f32(a):
    """bf16 bit patterns (uint16) -> float32 values."""
    return (np.asarray(a, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(v):
    b = v.astype(np.float32).view(np.uint32)
    return ((b + (((b >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


# ---- residual_u8 base: the exact integer bicubic of FORMAT.md ("Residual base B") --------------------------
_ONE = 256  # weight scale per axis
_SHIFT = 16  # log2(_ONE ** 2)


@functools.lru_cache(maxsize=64)
def _phase_weights(s):
    """[(weights[4], offset)] per phase r in 0..s, in exact integer arithmetic (Python ints)."""
    d = 2 * s
    d3 = d ** 3

    def k(x):  # Keys kernel, a = -1/2, scaled by 2 D^3, at distance x / D
        if x <= d:
            return 3 * x ** 3 - 5 * x * x * d + 2 * d3
        if x < 2 * d:
            return -x ** 3 + 5 * x * x * d - 8 * x * d * d + 4 * d3
        return 0

    out = []
    for r in range(s):
        num = 2 * r + 1 - s
        t, off = (num, 0) if num >= 0 else (num + d, -1)
        w = [(_ONE * k(x) + d3) // (2 * d3) for x in (d + t, t, d - t, 2 * d - t)]  # floor division
        big = max(range(4), key=lambda j: (w[j], -j))  # the largest, first of equals
        w[big] += _ONE - sum(w)
        out.append((w, off))
    return tuple((tuple(w), off) for w, off in out)


def _upsample_axis(x, s, axis, bias=0):
    """One pass of B along `axis` of int32 `x`: output index s*m + r gets sum_k W[r][k] * x[clamp(m + off_r - 1 + k)]
    (+ bias), unnormalised int32. Edge padding by 2 is the clamp; each phase is 4 shifted slices, no gather."""
    n = x.shape[axis]

    def at(a, b=None, step=None):
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(a, b, step)
        return tuple(idx)

    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = np.pad(x, pad, mode="edge")  # xp[i + 2] = x[clamp(i, 0, n - 1)]
    shape = list(x.shape)
    shape[axis] = n * s
    out = np.empty(shape, np.int32)
    tmp = np.empty(x.shape, np.int32)
    for r, (w, off) in enumerate(_phase_weights(s)):
        st = off + 1  # padded index of the first tap m + off - 1
        acc = np.multiply(xp[at(st, st + n)], w[0], dtype=np.int32)
        for k in range(1, 4):
            if w[k]:
                np.multiply(xp[at(st + k, st + k + n)], w[k], out=tmp, dtype=np.int32)
                acc += tmp
        if bias:
            acc += bias
        out[at(r, None, s)] = acc
    return out


def bicubic_u8(lr, s):
    """The residual base B(lr): exact integer bicubic upscale by `s` of a uint8 [C, h, w] array (CHW),
    -> uint8 [C, s*h, s*w]. Byte-identical to Rust's `srcache_formats::residual::bicubic_u8`."""
    lr = np.asarray(lr)
    if lr.dtype != np.uint8 or lr.ndim != 3:
        raise ValueError(f"bicubic_u8 needs a uint8 [C, h, w] array, got {lr.dtype} {lr.shape}")
    s = int(s)
    if s < 1 or lr.shape[1] == 0 or lr.shape[2] == 0:
        raise ValueError(f"bicubic_u8 needs s >= 1 and a non-empty image, got s={s}, shape {lr.shape}")
    # Horizontal then vertical pass, all int32 and exact (|V| < 2^25). The vertical weights of every phase sum
    # to 256, so adding 128 to every H adds 128 * 256 = 2^15 to V: the rounding term, on the smaller array.
    v = _upsample_axis(_upsample_axis(lr.astype(np.int32), s, 2, bias=_ONE // 2), s, 1)
    v >>= _SHIFT  # arithmetic shift: floor
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8)


def _residual_base(tensors, t):
    """(lr position, h, w, s) of residual tensor t, or raises ValueError with the reason."""
    spec = tensors[t]
    name = spec["name"]
    why = f"tensor {name!r}: residual_u8"
    if not (name.startswith("sr/") and len(name) > 3 and "/" not in name[3:]):
        raise ValueError(f"{why} is only for SR outputs named sr/<expert>")
    if spec["dtype"] != "u8" or len(spec["shape"]) != 3 or spec["shape"][0] != 3:
        raise ValueError(f"{why} needs a u8 [3, s*h, s*w] tensor, got {spec['dtype']} {spec['shape']}")
    lr = next((k for k, o in enumerate(tensors) if o["name"] == "lr"), None)
    if lr is None:
        raise ValueError(f"{why} needs an `lr` tensor (u8 [3, h, w]) in the schema as its base")
    ls = tensors[lr]
    if ls["dtype"] != "u8" or len(ls["shape"]) != 3 or ls["shape"][0] != 3:
        raise ValueError(f"{why} needs lr u8 [3, h, w], got {ls['dtype']} {ls['shape']}")
    (_, sh, sw), (_, h, w) = spec["shape"], ls["shape"]
    if h == 0 or w == 0 or sh == 0 or sh % h or sw % w or sh // h != sw // w:
        raise ValueError(f"{why} needs shape [3, s*{h}, s*{w}] for a whole s >= 1, got {spec['shape']}")
    return lr, h, w, sh // h


def _affine_decode(buf, off, c, numel, dt):
    """Values of an affine_u8 payload at `off` of `buf` (C x (scale, offset) f32, then numel u8)."""
    params = np.frombuffer(buf, "<f4", count=2 * c, offset=off).reshape(c, 2)
    q = np.frombuffer(buf, np.uint8, count=numel, offset=off + 8 * c).reshape(c, -1).astype(np.float32)
    vals = params[:, 1:2] + params[:, 0:1] * q  # offset + scale * q in f32, no FMA, like Rust
    if dt == "f16":
        return vals.astype("<f2")
    if dt == "bf16":
        return _f32_to_bf16_bits(vals).astype("<u2")
    if dt == "f32":
        return vals.astype("<f4")
    raise ValueError(f"affine_u8 on non-float dtype {dt}")


# ---- compact features: PCA basis in the schema attrs ---------------------------------------------------------
class PcaBasis:
    """An expert's PCA basis (schema attr `feat/<expert>/pca`, FORMAT.md "Compact features (PCA)"): the
    expert's C feature channels are stored as k coefficient channels. Arrays are float32:
    `mean` [C], `components` [k, C] (orthonormal rows), `explained_variance_ratio` [k]; `fit` a {str: str}."""

    def __init__(self, channels, k, mean, components, explained_variance_ratio, fit=None):
        self.channels, self.k = int(channels), int(k)
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.explained_variance_ratio = np.asarray(explained_variance_ratio, np.float32)
        self.fit = dict(fit or {})
        c, k = self.channels, self.k
        if not (1 <= k <= c):
            raise ValueError(f"PCA basis: needs 1 <= k <= channels, got k = {k}, channels = {c}")
        if self.mean.shape != (c,) or self.components.size != k * c or self.explained_variance_ratio.shape != (k,):
            raise ValueError(f"PCA basis: sizes do not match channels = {c}, k = {k}: mean {self.mean.shape}, "
                             f"components {self.components.size} values, ratios {self.explained_variance_ratio.shape}")
        self.components = self.components.reshape(k, c)
        for what in ("mean", "components", "explained_variance_ratio"):
            if not np.isfinite(getattr(self, what)).all():
                raise ValueError(f"PCA basis: {what} has non-finite values")
        gram = self.components.astype(np.float64) @ self.components.T.astype(np.float64)
        if np.abs(gram - np.eye(k)).max() > 1e-3:
            raise ValueError("PCA basis: component rows are not orthonormal")

    @classmethod
    def from_json(cls, text):
        try:
            d = json.loads(text)
            return cls(d["channels"], d["k"], d["mean"], d["components"], d["explained_variance_ratio"], d.get("fit"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"PCA basis: {e}") from None

    def __repr__(self):
        return f"PcaBasis(channels={self.channels}, k={self.k}, explained={float(self.explained_variance_ratio.sum()):.4f})"

    def _mats(self, x):
        """(components, mean) as arrays/tensors matching x (a numpy array or a torch tensor)."""
        if hasattr(x, "detach"):  # torch, without importing it here
            import torch

            comp = torch.as_tensor(self.components, device=x.device)
            return comp, torch.as_tensor(self.mean, device=x.device), torch
        return self.components, self.mean, np

    def project(self, feat):
        """Coefficients [..., k, h, w] of features [..., C, h, w]: components @ (x - mean) per pixel (float32)."""
        comp, mean, xp = self._mats(feat)
        x = feat.float() if xp is not np else np.asarray(feat, np.float32)
        if x.shape[-3] != self.channels:
            raise ValueError(f"PCA basis: features have {x.shape[-3]} channels, the basis {self.channels}")
        return xp.einsum("kc,...chw->...khw", comp, x - mean[:, None, None])

    def reconstruct(self, coeffs):
        """Features [..., C, h, w] from coefficients [..., k, h, w]: components.T @ c + mean (float32).
        Accepts numpy arrays (float16/float32) and torch tensors (computed on their device)."""
        comp, mean, xp = self._mats(coeffs)
        c = coeffs.float() if xp is not np else np.asarray(coeffs, np.float32)
        if c.shape[-3] != self.k:
            raise ValueError(f"PCA basis: coefficients have {c.shape[-3]} channels, the basis k = {self.k}")
        return xp.einsum("kc,...khw->...chw", comp, c) + mean[:, None, None]


def _schema_pca(schema, expert, where):
    text = schema.get("attrs", {}).get(f"feat/{expert}/pca")
    if text is None:
        return None
    try:
        return PcaBasis.from_json(text)
    except ValueError as e:
        raise ShardError(f"{where}: attr feat/{expert}/pca: {e}") from None


def _reconstruct_feat(schema, basis, x, expert, where):
    if basis is None:
        raise ShardError(f"{where}: feat/{expert} has no PCA basis (no attr feat/{expert}/pca)")
    if isinstance(x, dict):
        x = x[f"feat/{expert}"]
    spec = next((t for t in schema["tensors"] if t["name"] == f"feat/{expert}"), None)
    if spec is not None and spec["dtype"] == "bf16" and isinstance(x, np.ndarray) and x.dtype == np.uint16:
        x = bf16_to_f32(x)
    return basis.reconstruct(x)


def open_regular(path):
    """A read-only descriptor of `path` if it is a regular file (symlinks followed), else OSError at once.

    Opened with O_NONBLOCK, so a FIFO put where a shard or manifest belongs is refused instead of blocking the
    reader until a writer appears (forever), then fstat-ed: the check is on the file opened, not on a name that
    could be swapped between a stat and the open (Rust `srcache_formats::regular`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
            raise OSError(errno.EINVAL, f"{kind} where a regular file was expected; not read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


_PREAD_MAX = 0x7FFF0000  # the most one read returns on Linux


def _pread(fd, n, off):
    """n bytes at off, or fewer when the file ends first (a single read returns at most ~2 GiB on Linux)."""
    if n <= _PREAD_MAX:
        return os.pread(fd, n, off)
    out = bytearray()
    while len(out) < n:
        part = os.pread(fd, min(n - len(out), _PREAD_MAX), off + len(out))
        if not part:
            break
        out += part
    return bytes(out)


class Shard:
    """One open shard. `verify`: "once" (default), "always" or False, for payload checksums.

    Everything read on open (header, schema, footer, index) comes through pread and is validated before anything
    is sized from it: a crafted shard is refused with ShardError naming its path, never a bare Python error or
    an allocation of what it claims. Payloads: `raw` ones are zero-copy views of a read-only mmap, the others are
    pread (they are decoded into fresh arrays anyway). Before each tensor the file's size is compared with its
    size at open: a shard truncated under an open reader is a ShardError, not a SIGBUS from the map (only a
    truncation racing the microseconds between that check and the first touch of a raw view, or a raw view kept
    by the caller across one, can still fault: the map is the zero-copy path)."""

    def __init__(self, path, verify="once"):
        if verify not in ("once", "always", False, None, True):
            raise ValueError(f"verify must be 'once', 'always' or False, not {verify!r}")
        self.path = os.fspath(path)
        self.verify = "once" if verify is True else (verify or False)
        self._fd = -1
        self.buf = None
        try:
            self._fd = open_regular(self.path)
            self.file_size = os.fstat(self._fd).st_size
        except OSError as e:
            self.close()
            raise ShardError(f"{self.path}: cannot open shard: {e.strerror or e}") from None
        try:
            self._parse()
            self.buf = mmap.mmap(self._fd, self.file_size, access=mmap.ACCESS_READ)
        except OSError as e:
            self.close()
            raise ShardError(f"{self.path}: cannot read shard: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise
        self._verified = np.zeros(len(self._table), dtype=bool)
        self._base_cache = None  # ((sample, lr position, s), B(lr)) of the last residual decoded
        self._dctx = zstandard.ZstdDecompressor()

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    # ---- opening -------------------------------------------------------------------------------------------
    def _err(self, what):
        return ShardError(f"{self.path}: {what}")

    def _read(self, off, n, what):
        data = _pread(self._fd, n, off)
        if len(data) != n:
            raise self._short(what, off, n, len(data))
        return data

    def _short(self, what, off, n, got):
        return self._err(f"changed on disk while being read ({what}: {got} of {n} bytes at {off}; the file had "
                         f"{self.file_size} bytes when opened); shards must not change while in use")

    def _parse(self):
        n = self.file_size
        b = self._read(0, min(n, HEADER_LEN), "header")
        if n < 8 or b[:8] != MAGIC:
            raise self._err("not an srcache shard (bad magic)" if n >= 8 else f"truncated (no magic): {n} bytes")
        version = struct.unpack_from("<I", b, 8)[0] if n >= 12 else None
        if version is None:
            raise self._err("truncated (no version)")
        if version != VERSION:
            raise self._err(f"unsupported format version {version} (this reader knows {VERSION})")
        if n < HEADER_LEN + FOOTER_LEN:
            raise self._err(f"truncated: {n} bytes, header and footer need {HEADER_LEN + FOOTER_LEN}")
        header = b
        hsum = xxh3_64(header[:56])
        if hsum != struct.unpack_from("<Q", header, 56)[0]:
            raise self._err("header checksum mismatch")
        schema_len, schema_sum = struct.unpack_from("<QQ", header, 16)
        schema_end = HEADER_LEN + schema_len
        if schema_end > n:
            raise self._err(f"truncated: schema ends at {schema_end}, file has {n} bytes")
        schema_bytes = self._read(HEADER_LEN, schema_len, "schema")
        if xxh3_64(schema_bytes) != schema_sum:
            raise self._err("schema checksum mismatch")
        try:
            self.schema = _schema.parse_json(schema_bytes)
            _schema.check_schema(self.schema)
            self.schema.setdefault("attrs", {})
        except ValueError as e:
            raise self._err(f"corrupt schema: {e}") from None
        tensors = self.schema["tensors"]
        payload_start = -(-schema_end // ALIGN) * ALIGN
        foot = self._read(n - FOOTER_LEN, FOOTER_LEN, "footer")
        if foot[56:64] != MAGIC_END:
            raise self._err("truncated: no footer end magic (the shard was cut short or has trailing bytes)")
        if xxh3_64(foot[:48]) != struct.unpack_from("<Q", foot, 48)[0]:
            raise self._err("footer checksum mismatch")
        index_off, table_len, meta_len, n_samples, index_sum = struct.unpack_from("<QQQQQ", foot, 0)
        fversion, n_tensors = struct.unpack_from("<II", foot, 40)
        if fversion != version:
            raise self._err(f"corrupt footer: footer version {fversion} != header version {version}")
        if n_tensors != len(tensors):
            raise self._err(f"footer says {n_tensors} tensors per sample, schema has {len(tensors)}")
        if index_off < payload_start or index_off + table_len + meta_len != n - FOOTER_LEN:
            raise self._err(f"corrupt footer: index at {index_off} (+{table_len} +{meta_len}) does not end at the footer")
        if n_samples * n_tensors * ENTRY_LEN != table_len:
            raise self._err(f"corrupt footer: {n_samples} samples x {n_tensors} tensors do not fill a {table_len}-byte table")
        index = self._read(index_off, table_len + meta_len, "index")
        if xxh3_64(index) != index_sum:
            raise self._err("index checksum mismatch")
        self.index_checksum = index_sum
        try:
            meta_bytes = memoryview(index)[table_len:]
            self.metas = _schema.parse_json(meta_bytes, struct_fields=False)
            _schema.check_metas(self.metas, n_samples, _schema.SURROGATE_ESCAPE.search(meta_bytes) is not None)
        except ValueError as e:
            raise self._err(f"corrupt sample metadata: {e}") from None
        try:
            self._residual = {t: _residual_base(tensors, t) for t, s in enumerate(tensors) if s["codec"]["kind"] == "residual_u8"}
        except ValueError as e:
            raise self._err(f"corrupt schema: {e}") from None
        self.n_tensors = n_tensors
        self.names = [t["name"] for t in tensors]
        self._pos = {name: k for k, name in enumerate(self.names)}
        self._numel = [int(np.prod(t["shape"], dtype=object)) if t["shape"] else 1 for t in tensors]
        self._raw = [t["codec"]["kind"] == "raw" for t in tensors]
        self._dtypes = [np.dtype(DTYPES[t["dtype"]]).newbyteorder("<") for t in tensors]
        self._check_entries(index, table_len, n_samples, payload_start, index_off)

    def _check_entries(self, index, table_len, n_samples, payload_start, index_off):
        """Every table entry inside the payload area, 64-aligned, with the spec's raw length, the fixed stored
        length of raw/affine_u8, and for the zstd codecs a content the stored bytes can hold (zstd expands at most
        32768x): what a payload claims is bounded by the file before any read allocates for it."""
        tensors, nt = self.schema["tensors"], self.n_tensors
        e = np.frombuffer(index, dtype="<u8", count=table_len // 8).reshape(-1, 4)
        off, ln, raw = e[:, 0], e[:, 1], e[:, 2]
        # off > index_off first: `index_off - off` below would wrap for those (they are bad anyway).
        bad = (off < payload_start) | (off % ALIGN != 0) | (off > index_off) | (ln > np.uint64(index_off) - off)
        why = {}
        for t, spec in enumerate(tensors):
            raw_len = _schema.raw_len(spec)  # validated: < 2^64
            bad[t::nt] |= raw[t::nt] != np.uint64(raw_len)
            kind, numel = spec["codec"]["kind"], self._numel[t]
            c = spec["shape"][0] if spec["shape"] else 1
            affine = 8 * c + numel
            fixed = raw_len if kind == "raw" else affine if kind == "affine_u8" else None
            if fixed is not None:
                bad[t::nt] |= (ln[t::nt] != np.uint64(fixed)) if fixed < _schema.USIZE else True
                why[t] = f"{kind} payload must be {fixed} bytes"
            else:
                content = affine if kind == "affine_u8_zstd" else raw_len
                need = -(-content // 32768)
                bad[t::nt] |= ln[t::nt] < np.uint64(need)  # need < 2^49
                why[t] = f"claims {content} bytes of content: more than zstd can expand (needs >= {need} stored bytes)"
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            i, t = divmod(k, nt)
            o, s, r = int(off[k]), int(ln[k]), int(raw[k])
            if o < payload_start or o % ALIGN or o > index_off or s > index_off - o:
                reason = f"payload [{o}, +{s}) outside the payload area [{payload_start}, {index_off}) or not 64-aligned"
            elif r != _schema.raw_len(tensors[t]):
                reason = f"raw length {r} does not match {tensors[t]['dtype']} {tensors[t]['shape']}"
            else:
                reason = f"{why[t]} (stored {s})"
            raise self._err(f"sample {i}, tensor {self.names[t]}: corrupt table entry: {reason}")
        self._table = e
        self._entries_list = None

    @property
    def _entries(self):
        """[offset, stored, raw, checksum] per entry as Python ints (faster per read than numpy scalars), made on
        first use: a dataset opens every shard to check its rows without reading a payload."""
        if self._entries_list is None:
            self._entries_list = self._table.tolist()
        return self._entries_list

    # ---- access --------------------------------------------------------------------------------------------
    def __len__(self):
        return len(self.metas)

    def __repr__(self):
        return f"Shard({self.path!r}, {len(self)} samples, {self.n_tensors} tensors)"

    def meta(self, i):
        return self.metas[self._check_index(i)]

    def spec(self, name):
        return self.schema["tensors"][self._tensor_pos(name)]

    def _check_index(self, i):
        if not 0 <= i < len(self.metas):
            raise IndexError(f"{self.path}: sample {i} out of range (shard holds {len(self.metas)})")
        return i

    def _tensor_pos(self, name):
        try:
            return self._pos[name]
        except KeyError:
            raise KeyError(f"{self.path}: schema has no tensor {name!r} (has {self.names})") from None

    def check_unchanged(self):
        """ShardError if the file is shorter than when it was opened (reading the map past its end would fault)."""
        if self._fd < 0:
            raise self._err("shard is closed")
        try:
            now = os.lseek(self._fd, 0, os.SEEK_END)  # the size, 3x cheaper than fstat; reads are pread (no offset)
        except OSError as e:
            raise self._err(f"cannot check the shard's size: {e.strerror or e}") from None
        if now < self.file_size:
            raise self._err(f"changed on disk while being read ({self.file_size} bytes when opened, {now} now); "
                            "shards must not change while in use: run `srcache verify` on the dataset")

    def sample_sizes(self):
        """(stored payload bytes, logical bytes) of every sample, two uint64 arrays (the manifest's bytes and
        raw_bytes columns)."""
        t = self._table.reshape(len(self.metas), self.n_tensors, 4)
        return t[:, :, 1].sum(axis=1, dtype=np.uint64), t[:, :, 2].sum(axis=1, dtype=np.uint64)

    def sample_bytes(self, i):
        """(stored payload bytes, logical bytes) of sample i, from the table (the manifest's bytes/raw_bytes)."""
        nt = self.n_tensors
        rows = self._entries[i * nt : (i + 1) * nt]
        return sum(r[1] for r in rows), sum(r[2] for r in rows)

    def _payload(self, i, t, verify, checked=False):
        """(offset, payload bytes, raw length): a view of the map for raw payloads, pread bytes otherwise.
        `checked`: the caller has just run check_unchanged (one size check per sample, not per tensor)."""
        k = i * self.n_tensors + t
        off, ln, raw_len, checksum = self._entries[k]
        if not checked:
            self.check_unchanged()
        if self._raw[t]:
            payload = memoryview(self.buf)[off : off + ln]
        else:
            payload = os.pread(self._fd, ln, off) if ln <= _PREAD_MAX else _pread(self._fd, ln, off)
            if len(payload) != ln:
                raise self._short(f"sample {i}, tensor {self.names[t]}", off, ln, len(payload))
        if verify == "always" or (verify == "once" and not self._verified[k]):
            actual = xxh3_64(payload)
            if actual != checksum:
                raise self._err(f"sample {i}, tensor {self.names[t]}: payload checksum mismatch "
                                f"(expected {checksum:016x}, got {actual:016x})")
            self._verified[k] = True
        return off, payload, raw_len

    def _zstd(self, payload, want, where):
        """The frame's content, exactly `want` bytes: a frame header claiming another size is refused before
        anything is allocated for it (the table bounds `want` by the stored length)."""
        claimed = zstandard.frame_content_size(payload)
        if claimed >= 0 and claimed != want:
            raise self._err(f"{where}: zstd frame claims {claimed} bytes of content, expected {want}")
        data = self._dctx.decompress(payload, max_output_size=want)
        if len(data) != want:
            raise self._err(f"{where}: decoded {len(data)} bytes, expected {want}")
        return data

    def tensor(self, i, name, verify=None):
        """Tensor `name` of sample `i` as a CHW numpy array in its stored dtype (bf16 as uint16 bits).
        Read-only zero-copy view of the mmap for `raw` payloads, a fresh array otherwise."""
        self._check_index(i)
        return self._tensor(i, self._tensor_pos(name), verify, False)

    def _tensor(self, i, t, verify, checked):
        spec = self.schema["tensors"][t]
        name = self.names[t]
        where = f"sample {i}, tensor {name}"
        try:
            off, payload, raw_len = self._payload(i, t, self.verify if verify is None else verify, checked)
        except OSError as e:
            raise self._err(f"{where}: cannot read: {e.strerror or e}") from None
        dt, shape, kind = spec["dtype"], spec["shape"], spec["codec"]["kind"]
        dtype = self._dtypes[t]
        numel = self._numel[t]
        if kind == "raw":
            payload.release()
            return np.frombuffer(self.buf, dtype, count=numel, offset=off).reshape(shape)
        try:
            if kind in ("zstd", "shuffle_zstd", "residual_u8"):
                data = self._zstd(payload, raw_len, where)
                k = SIZES[dt]
                if kind == "shuffle_zstd" and k > 1:
                    planes = np.frombuffer(data, np.uint8).reshape(k, numel)
                    out = np.empty((numel, k), np.uint8)
                    for j in range(k):  # column writes: ~10x faster than a transposed copy
                        out[:, j] = planes[j]
                    arr = out.view(dtype).reshape(numel)
                elif kind == "residual_u8":
                    q = np.frombuffer(data, np.uint8).reshape(shape)
                    arr = np.add(q, self._residual_base_of(i, t, verify, where), dtype=np.uint8)  # (q + B(lr)) mod 256
                else:
                    arr = np.frombuffer(data, dtype)
            elif kind == "affine_u8_zstd":
                c = shape[0] if shape else 1
                arr = _affine_decode(self._zstd(payload, 8 * c + numel, where), 0, c, numel, dt)
            else:  # affine_u8
                arr = _affine_decode(payload, 0, shape[0] if shape else 1, numel, dt)
        except ValueError as e:
            if isinstance(e, ShardError):
                raise
            raise self._err(f"{where}: {e}") from None
        except zstandard.ZstdError as e:
            raise self._err(f"{where}: zstd decode failed: {e}") from None
        except MemoryError:
            raise self._err(f"{where}: cannot allocate {raw_len} bytes") from None
        return arr.reshape(shape)

    def _residual_base_of(self, i, t, verify, where):
        """B(lr) of sample i for residual tensor t. The last one is kept: a sample's residual experts share it."""
        lr_pos, _, _, s = self._residual[t]
        key = (i, lr_pos, s)
        cached = self._base_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            lr = self.tensor(i, self.names[lr_pos], verify)
        except ShardError as e:
            raise self._err(f"{where}: cannot decode residual_u8: its base lr is unreadable: {e}") from None
        base = bicubic_u8(lr, s)
        base.flags.writeable = False
        self._base_cache = (key, base)
        return base

    def sample(self, i, verify=None):
        self._check_index(i)
        self.check_unchanged()
        return {n: self._tensor(i, t, verify, True) for t, n in enumerate(self.names)}

    def pca(self, expert):
        """The PcaBasis of `feat/<expert>` (schema attr `feat/<expert>/pca`), or None when it is stored as is."""
        return _schema_pca(self.schema, expert, self.path)

    def reconstruct_feat(self, x, expert):
        """Features [..., C, h, w] (float32) from the stored coefficients of `feat/<expert>`: `x` is a sample
        dict (from `sample`) or the coefficient array/tensor [..., k, h, w]."""
        return _reconstruct_feat(self.schema, self.pca(expert), x, expert, self.path)

    def check(self):
        """Hashes and decodes every payload (like `srcache verify` for one shard); raises ShardError at the first
        bad one."""
        for i in range(len(self)):
            self.sample(i, "always")  # hashes and, like Rust `Shard::verify`, decodes every payload

    def close(self):
        """Closes the file and unmaps it unless numpy views of it are still alive (then the GC unmaps it later)."""
        try:
            if self.buf is not None:
                self.buf.close()
        except BufferError:
            pass
        self.__del__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _parquet(path, read):
    """(ParquetFile, Table or None) of the manifest, opened only if it is a regular file (see open_regular).
    pyarrow takes no descriptor, so it opens /proc/self/fd/N: the file checked, not a name that could have been
    swapped for a FIFO since. (pyarrow 22 over a Python file object or an in-memory buffer aborts the
    interpreter at exit now and then; by path it does not.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = os.fspath(path)
    try:
        fd = open_regular(name)
    except OSError as e:
        raise ShardError(f"{name}: cannot open manifest: {e.strerror or e}") from None
    try:
        via = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else name
        pf = pq.ParquetFile(via)
        return pf, (pf.read() if read else None)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ShardError(f"{name}: manifest is not a readable Parquet file: {e}") from None
    finally:
        os.close(fd)


def _kv(path, pf):
    try:
        md = pf.metadata.metadata or {}
        return {k.decode(): v.decode() for k, v in md.items() if not k.startswith(b"ARROW:")}
    except UnicodeDecodeError as e:
        raise ShardError(f"{os.fspath(path)}: manifest key-value metadata is not UTF-8: {e}") from None


def read_manifest_and_metadata(path):
    """(pyarrow.Table, key-value metadata as in `manifest_metadata`) from one read of a regular file; a file that
    is no Parquet is a ShardError naming it."""
    pf, table = _parquet(path, read=True)
    return table, _kv(path, pf)


def read_manifest(path):
    """The manifest as a pyarrow.Table (its key-value metadata: `manifest_metadata`)."""
    return read_manifest_and_metadata(path)[0]


def manifest_metadata(path):
    """The manifest's Parquet key-value metadata (file footer) as {str: str}, e.g. srcache.manifest_version,
    srcache.rows_xxh3, srcache.parts; pyarrow's own ARROW:schema entry left out."""
    return _kv(path, _parquet(path, read=False)[0])
