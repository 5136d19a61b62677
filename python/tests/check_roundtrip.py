"""Called by formats/tests/python_roundtrip.rs: reads every tensor of a Rust-written dataset with the pure
Python reader and compares it byte-for-byte with `expected/<sample>__<tensor>.bin` written by Rust."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from srcache_reader import Shard, read_manifest  # noqa: E402

root = pathlib.Path(sys.argv[1])
exp = root / "expected"
checked = 0
for sp in sorted((root / "ds").glob("shard-*.srs")):
    s = Shard(sp)
    for i in range(len(s)):
        m = s.meta(i)
        for name, arr in s.sample(i).items():
            want = (exp / f"{m['id']}__{name.replace('/', '_')}.bin").read_bytes()
            got = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            assert got == want, f"{sp}: sample {i} tensor {name} differs"
            checked += 1
t = read_manifest(root / "ds" / "manifest.parquet")
assert t.num_rows == int((root / "expected" / "count.txt").read_text()), t.num_rows
assert "psnr/bicubic" in t.column_names, t.column_names
print(f"ok {checked} tensors, {t.num_rows} manifest rows")
