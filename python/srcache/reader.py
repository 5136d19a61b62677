"""Reader of srcache shards (`*.srs`, formats/FORMAT.md) on numpy + zstandard + xxhash.

    from srcache.reader import Shard, read_manifest
    s = Shard("ds/shard-00000.srs")
    s.sample(0)          # {name: np.ndarray}, CHW, stored dtype (bf16 as uint16 bit patterns)
    s.tensor(0, "lr")    # one tensor; `raw` payloads are zero-copy read-only views of the mmap
    s.meta(0)            # {"id", "source", "patch", "variant", "psnr"}
    read_manifest("ds/manifest.parquet")   # pyarrow.Table

Integrity, as in the Rust reader: header, schema, index and footer checksums (xxh3-64) and the table's
consistency are checked on open; each payload's checksum is checked the first time that payload is read through
an open `Shard` (`verify="once"`, the default), on every read (`verify="always"`) or never (`verify=False`).
`Shard.check()` hashes every payload. Errors are `ShardError` (a ValueError) naming the shard path and, where
relevant, the sample index in the shard and the tensor name.
"""
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
CODECS = ("raw", "zstd", "shuffle_zstd", "affine_u8")

__all__ = ["Shard", "ShardError", "read_manifest", "manifest_metadata", "bf16_to_f32", "xxh3_64"]


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
            if kind in ("zstd", "shuffle_zstd"):
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
                else:
                    arr = np.frombuffer(data, dtype)
            else:  # affine_u8
                c = shape[0] if shape else 1
                params = np.frombuffer(self.buf, "<f4", count=2 * c, offset=off).reshape(c, 2)
                q = np.frombuffer(self.buf, np.uint8, count=numel, offset=off + 8 * c).reshape(c, -1).astype(np.float32)
                vals = params[:, 1:2] + params[:, 0:1] * q  # offset + scale * q in f32, no FMA, like Rust
                if dt == "f16":
                    arr = vals.astype("<f2")
                elif dt == "bf16":
                    arr = _f32_to_bf16_bits(vals).astype("<u2")
                elif dt == "f32":
                    arr = vals.astype("<f4")
                else:
                    raise self._err(f"{where}: affine_u8 on non-float dtype {dt}")
        except zstandard.ZstdError as e:
            raise self._err(f"{where}: zstd decode failed: {e}") from None
        finally:
            payload.release()
        return arr.reshape(shape)

    def sample(self, i, verify=None):
        return {n: self.tensor(i, n, verify) for n in self.names}

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
