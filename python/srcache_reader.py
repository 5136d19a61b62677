"""Independent reader of srcache shards (formats/FORMAT.md) using numpy + zstandard + pyarrow only.

    from srcache_reader import Shard, read_manifest
    s = Shard("ds/shard-00000.srs"); sample = s.sample(0)   # {name: np.ndarray}, s.meta(0) -> dict
    rows = read_manifest("ds/manifest.parquet")              # pyarrow.Table

bf16 tensors are returned as uint16 bit patterns (numpy has no bf16); `bf16_to_f32` converts them.
Payload checksums (xxh3-64) are not verified here: the Python standard library has no xxh3; use
`srcache verify` for integrity checks.
"""
import json
import mmap
import struct

import numpy as np
import zstandard

MAGIC = b"\x89SRS\r\n\x1a\n"
MAGIC_END = b"\x89SRSEND\n"
VERSION = 1
DTYPES = {"u8": np.uint8, "u16": np.uint16, "f16": np.float16, "bf16": np.uint16, "f32": np.float32}
SIZES = {"u8": 1, "u16": 2, "f16": 2, "bf16": 2, "f32": 4}


def bf16_to_f32(a):
    return (a.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(v):
    b = v.astype(np.float32).view(np.uint32)
    return ((b + (((b >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


class Shard:
    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        b = self.buf
        if len(b) < 128 or b[:8] != MAGIC:
            raise ValueError(f"{self.path}: not an srcache shard (bad magic or truncated)")
        version, _hlen, schema_len = struct.unpack_from("<IIQ", b, 8)
        if version != VERSION:
            raise ValueError(f"{self.path}: unsupported version {version}")
        self.schema = json.loads(bytes(b[64 : 64 + schema_len]))
        foot = b[len(b) - 64 :]
        if foot[56:64] != MAGIC_END:
            raise ValueError(f"{self.path}: truncated (no footer magic)")
        index_off, table_len, meta_len, n = struct.unpack_from("<QQQQ", foot, 0)
        self.n_tensors = len(self.schema["tensors"])
        self.table = np.frombuffer(b, dtype="<u8", count=table_len // 8, offset=index_off).reshape(-1, 4)
        self.metas = json.loads(bytes(b[index_off + table_len : index_off + table_len + meta_len]))
        self.names = [t["name"] for t in self.schema["tensors"]]
        self._dctx = zstandard.ZstdDecompressor()

    def __len__(self):
        return len(self.metas)

    def meta(self, i):
        return self.metas[i]

    def tensor(self, i, name):
        t = self.names.index(name)
        spec = self.schema["tensors"][t]
        off, ln, raw_len, _checksum = (int(x) for x in self.table[i * self.n_tensors + t])
        dt, shape, kind = spec["dtype"], spec["shape"], spec["codec"]["kind"]
        k = SIZES[dt]
        numel = int(np.prod(shape)) if shape else 1
        payload = self.buf[off : off + ln]
        if kind == "raw":
            data = payload
        elif kind == "zstd":
            data = self._dctx.decompress(payload, max_output_size=raw_len)
        elif kind == "shuffle_zstd":
            planes = self._dctx.decompress(payload, max_output_size=raw_len)
            data = np.frombuffer(planes, np.uint8).reshape(k, numel).T.copy().tobytes() if k > 1 else planes
        elif kind == "affine_u8":
            c = shape[0] if shape else 1
            params = np.frombuffer(payload, "<f4", count=2 * c).reshape(c, 2)
            q = np.frombuffer(payload, np.uint8, offset=8 * c).reshape(c, -1).astype(np.float32)
            vals = params[:, 1:2] + params[:, 0:1] * q  # offset + scale * q, in f32 like the Rust decoder
            if dt == "f16":
                data = vals.astype("<f2").tobytes()
            elif dt == "bf16":
                data = _f32_to_bf16_bits(vals).astype("<u2").tobytes()
            else:
                data = vals.astype("<f4").tobytes()
        else:
            raise ValueError(f"{self.path}: sample {i}, tensor {name}: unknown codec {kind}")
        if len(data) != raw_len:
            raise ValueError(f"{self.path}: sample {i}, tensor {name}: decoded {len(data)} bytes, expected {raw_len}")
        return np.frombuffer(data, np.dtype(DTYPES[dt]).newbyteorder("<")).reshape(shape)

    def sample(self, i):
        return {n: self.tensor(i, n) for n in self.names}


def read_manifest(path):
    import pyarrow.parquet as pq

    return pq.read_table(str(path))
