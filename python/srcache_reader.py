"""Backwards-compatible shim: the shard reader now lives in the `srcache` package (python/srcache/reader.py).

    from srcache_reader import Shard, read_manifest     # still works with python/ on sys.path
    from srcache.reader import Shard, read_manifest     # preferred (pip install ./python)

bf16 tensors are returned as uint16 bit patterns (numpy has no bf16); `bf16_to_f32` converts them.
Payload checksums (xxh3-64) are now verified, once per payload per open Shard (Shard(path, verify=False) skips).
"""
import pathlib
import sys

try:
    from srcache.reader import *  # noqa: F401,F403
    from srcache.reader import MAGIC, MAGIC_END, VERSION, DTYPES, SIZES, _f32_to_bf16_bits  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "srcache":
        raise
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from srcache.reader import *  # noqa: F401,F403
    from srcache.reader import MAGIC, MAGIC_END, VERSION, DTYPES, SIZES, _f32_to_bf16_bits  # noqa: F401
