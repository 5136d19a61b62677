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

Integrity, as in the Rust reader: header, schema, index and footer checksums (xxh3-64) and the table's
consistency are checked on open; each payload's checksum is checked the first time that payload is read through
an open `Shard` (`verify="once"`, the default), on every read (`verify="always"`) or never (`verify=False`).
`Shard.check()` hashes every payload. Errors are `ShardError` (a ValueError) naming the shard path and, where
relevant, the sample index in the shard and the tensor name.
"""
import functools
import json
import mmap
import os
import struct

import numpy as np
import xxhash
import zstandard

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


def _fixed_stored_len(spec, numel):
    kind = spec["codec"]["kind"]
    if kind == "raw":
        return numel * SIZES[spec["dtype"]]
    if kind == "affine_u8":
        c = spec["shape"][0] if spec["shape"] else 1
        return 8 * c + numel
    return None


class Shard:
    """One open shard. `verify`: "once" (default), "always" or False, for payload checksums."""

    def __init__(self, path, verify="once"):
        if verify not in ("once", "always", False, None, True):
            raise ValueError(f"verify must be 'once', 'always' or False, not {verify!r}")
        self.path = os.fspath(path)
        self.verify = "once" if verify is True else (verify or False)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ShardError(f"{self.path}: truncated: empty file")
                self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ShardError(f"{self.path}: cannot open shard: {e}") from e
        self._parse()
        self._verified = np.zeros(len(self._entries), dtype=bool)
        self._base_cache = None  # ((sample, lr position, s), B(lr)) of the last residual decoded
        self._dctx = zstandard.ZstdDecompressor()

    # ---- opening -------------------------------------------------------------------------------------------
    def _err(self, what):
        return ShardError(f"{self.path}: {what}")

    def _parse(self):
        b = self.buf
        n = len(b)
        if n < 8 or b[:8] != MAGIC:
            raise self._err("not an srcache shard (bad magic)" if n >= 8 else "truncated (no magic)")
        version = struct.unpack_from("<I", b, 8)[0] if n >= 12 else None
        if version is None:
            raise self._err("truncated (no version)")
        if version != VERSION:
            raise self._err(f"unsupported format version {version} (this reader knows {VERSION})")
        if n < HEADER_LEN + FOOTER_LEN:
            raise self._err(f"truncated: {n} bytes, header and footer need {HEADER_LEN + FOOTER_LEN}")
        header = b[:HEADER_LEN]
        hsum = xxh3_64(header[:56])
        if hsum != struct.unpack_from("<Q", header, 56)[0]:
            raise self._err("header checksum mismatch")
        schema_len, schema_sum = struct.unpack_from("<QQ", header, 16)
        schema_end = HEADER_LEN + schema_len
        if schema_end > n:
            raise self._err(f"truncated: schema ends at {schema_end}, file has {n} bytes")
        schema_bytes = b[HEADER_LEN:schema_end]
        if xxh3_64(schema_bytes) != schema_sum:
            raise self._err("schema checksum mismatch")
        try:
            self.schema = json.loads(schema_bytes)
            tensors = self.schema["tensors"]
            for t in tensors:
                if t["dtype"] not in SIZES:
                    raise ValueError(f"tensor {t['name']}: unknown dtype {t['dtype']}")
                if t["codec"]["kind"] not in CODECS:
                    raise ValueError(f"tensor {t['name']}: unknown codec {t['codec']['kind']}")
        except (ValueError, KeyError, TypeError) as e:
            raise self._err(f"corrupt schema: {e}") from None
        payload_start = -(-schema_end // ALIGN) * ALIGN
        foot = b[n - FOOTER_LEN :]
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
        index = b[index_off : index_off + table_len + meta_len]
        if xxh3_64(index) != index_sum:
            raise self._err("index checksum mismatch")
        try:
            self.metas = json.loads(index[table_len:])
        except ValueError as e:
            raise self._err(f"corrupt sample metadata: {e}") from None
        if len(self.metas) != n_samples:
            raise self._err(f"corrupt sample metadata: {len(self.metas)} records for {n_samples} samples")
        try:
            self._residual = {t: _residual_base(tensors, t) for t, s in enumerate(tensors) if s["codec"]["kind"] == "residual_u8"}
        except ValueError as e:
            raise self._err(f"corrupt schema: {e}") from None
        self.n_tensors = n_tensors
        self.names = [t["name"] for t in tensors]
        self._pos = {name: k for k, name in enumerate(self.names)}
        self._numel = [int(np.prod(t["shape"], dtype=np.int64)) if t["shape"] else 1 for t in tensors]
        entries = np.frombuffer(index, dtype="<u8", count=table_len // 8).reshape(-1, 4).astype(np.uint64)
        off, ln, raw = entries[:, 0], entries[:, 1], entries[:, 2]
        bad = (off < payload_start) | (off % ALIGN != 0) | (ln > index_off) | (off + ln > index_off)
        want_raw = np.tile(np.array([self._numel[t] * SIZES[s["dtype"]] for t, s in enumerate(tensors)], np.uint64), int(n_samples))
        bad |= raw != want_raw
        fixed = [_fixed_stored_len(s, self._numel[t]) for t, s in enumerate(tensors)]
        for t, f in enumerate(fixed):
            if f is not None:
                bad[t::n_tensors] |= ln[t::n_tensors] != f
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            i, t = divmod(k, n_tensors)
            raise self._err(f"sample {i}, tensor {self.names[t]}: corrupt table entry "
                            f"(offset {int(off[k])}, stored {int(ln[k])}, raw {int(raw[k])} bytes)")
        self._entries = [tuple(int(x) for x in e) for e in entries]

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

    def _payload(self, i, t, verify):
        k = i * self.n_tensors + t
        off, ln, raw_len, checksum = self._entries[k]
        payload = memoryview(self.buf)[off : off + ln]
        if verify == "always" or (verify == "once" and not self._verified[k]):
            actual = xxh3_64(payload)
            if actual != checksum:
                raise self._err(f"sample {i}, tensor {self.names[t]}: payload checksum mismatch "
                                f"(expected {checksum:016x}, got {actual:016x})")
            self._verified[k] = True
        return off, payload, raw_len

    def tensor(self, i, name, verify=None):
        """Tensor `name` of sample `i` as a CHW numpy array in its stored dtype (bf16 as uint16 bits).
        Read-only zero-copy view of the mmap for `raw` payloads, a fresh array otherwise."""
        self._check_index(i)
        t = self._tensor_pos(name)
        spec = self.schema["tensors"][t]
        off, payload, raw_len = self._payload(i, t, self.verify if verify is None else verify)
        dt, shape, kind = spec["dtype"], spec["shape"], spec["codec"]["kind"]
        dtype = np.dtype(DTYPES[dt]).newbyteorder("<")
        numel = self._numel[t]
        where = f"sample {i}, tensor {name}"
        if kind == "raw":
            payload.release()
            return np.frombuffer(self.buf, dtype, count=numel, offset=off).reshape(shape)
        try:
            if kind in ("zstd", "shuffle_zstd", "residual_u8"):
                data = self._dctx.decompress(payload, max_output_size=raw_len)
                if len(data) != raw_len:
                    raise self._err(f"{where}: decoded {len(data)} bytes, expected {raw_len}")
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
                want = 8 * c + numel
                data = self._dctx.decompress(payload, max_output_size=want)
                if len(data) != want:
                    raise self._err(f"{where}: affine_u8_zstd frame holds {len(data)} bytes, expected {want}")
                arr = _affine_decode(data, 0, c, numel, dt)
            else:  # affine_u8
                arr = _affine_decode(self.buf, off, shape[0] if shape else 1, numel, dt)
        except ValueError as e:
            if isinstance(e, ShardError):
                raise
            raise self._err(f"{where}: {e}") from None
        except zstandard.ZstdError as e:
            raise self._err(f"{where}: zstd decode failed: {e}") from None
        finally:
            payload.release()
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
        return {n: self.tensor(i, n, verify) for n in self.names}

    def pca(self, expert):
        """The PcaBasis of `feat/<expert>` (schema attr `feat/<expert>/pca`), or None when it is stored as is."""
        return _schema_pca(self.schema, expert, self.path)

    def reconstruct_feat(self, x, expert):
        """Features [..., C, h, w] (float32) from the stored coefficients of `feat/<expert>`: `x` is a sample
        dict (from `sample`) or the coefficient array/tensor [..., k, h, w]."""
        return _reconstruct_feat(self.schema, self.pca(expert), x, expert, self.path)

    def check(self):
        """Hashes every payload (like `srcache verify` for one shard); raises ShardError at the first bad one."""
        for i in range(len(self)):
            for t in range(self.n_tensors):
                self._payload(i, t, "always")[1].release()

    def close(self):
        """Unmaps the file unless numpy views of it are still alive (then the GC unmaps it later)."""
        try:
            self.buf.close()
        except BufferError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_manifest(path):
    """The manifest as a pyarrow.Table (its key-value metadata: `manifest_metadata`)."""
    import pyarrow.parquet as pq

    return pq.read_table(os.fspath(path))


def manifest_metadata(path):
    """The manifest's Parquet key-value metadata (file footer) as {str: str}, e.g. srcache.manifest_version,
    srcache.rows_xxh3, srcache.parts; pyarrow's own ARROW:schema entry left out."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(os.fspath(path)).metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if not k.startswith(b"ARROW:")}
