"""The Python reader on hostile input (issue 25: D3, D13, D14, D15). Run by tests/tests/crafted_shards.rs and
tests/tests/python_reader_hostile.rs; exits 1 with one FAIL line per case that does not hold.

    check_crafted.py corpus CASES KINDS.json   # the crafted-shard corpus the Rust test builds, plus the
                                               # Python-only hostile schemas/metadata crafted here (D15)
    check_crafted.py tamper CACHE WORK         # a real cache: manifest rewritten with pyarrow (D13), a FIFO
                                               # in place of a shard or manifest (D3), a shard truncated under
                                               # an open dataset (D14, in a subprocess: SIGBUS is a crash)

A refusal must be a ShardError (no other exception) whose message names the file; the crafted shards are refused
at open and before anything is allocated for what they claim (tracemalloc peak per case under 64 MiB).
"""
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import tracemalloc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import xxhash  # noqa: E402

from srcache import ShardError, open_dataset  # noqa: E402
from srcache.reader import Shard  # noqa: E402

PEAK = 64 << 20
FAILS = []
OKS = []


def fail(case, what):
    FAILS.append(case)
    print(f"FAIL {case}: {what}", flush=True)


def ok(case, what):
    OKS.append(case)
    print(f"ok {case}: {what}", flush=True)


def refused(case, fn, names, stage="open"):
    """fn() must raise ShardError naming one of `names` (paths), allocating < PEAK on the way."""
    tracemalloc.reset_peak()
    try:
        fn()
    except ShardError as e:
        peak = tracemalloc.get_traced_memory()[1]
        if not any(str(n) in str(e) for n in names):
            return fail(case, f"ShardError does not name {[str(n) for n in names]}: {e}")
        if peak > PEAK:
            return fail(case, f"refused, but after allocating {peak / 2**20:.0f} MiB: {e}")
        return ok(case, f"{stage}: {e}")
    except BaseException as e:  # noqa: BLE001 - any other exception is the defect
        return fail(case, f"{type(e).__name__} instead of ShardError: {e}"[:400])
    fail(case, f"accepted at {stage}")


def accepted(case, fn):
    try:
        what = fn()
    except BaseException as e:  # noqa: BLE001
        return fail(case, f"valid data refused: {type(e).__name__}: {e}"[:400])
    ok(case, what)


# ---- corpus: the Rust crafted shards + Python-crafted hostile JSON ------------------------------------------
def read_all(ds):
    for i in range(len(ds)):
        ds.sample(i)
    ds.check()
    return f"{len(ds)} samples read and checked"


def torch_items(root):
    from srcache.torch import SRCacheDataset

    ds = SRCacheDataset(root, dihedral=True)
    for i in range(len(ds)):
        ds[i]
    return len(ds)


def corpus_case(name, kind, d):
    shard = d / "shard-00000.srs"
    if kind == "Open":
        refused(f"{name}/Shard", lambda: Shard(shard), [shard])
        refused(f"{name}/dataset", lambda: open_dataset(d), [d])
    elif kind == "Schema":
        accepted(f"{name}/Shard", lambda: f"container accepts it ({len(Shard(shard))} samples), as Rust Shard::open")
        refused(f"{name}/dataset", lambda: open_dataset(d), [d])
    elif kind == "Payload":
        ds = open_dataset(d)
        refused(f"{name}/sample", lambda: ds.sample(0), [shard], "read")
        refused(f"{name}/check", lambda: open_dataset(d).check(), [shard], "check")
    elif kind in ("Untrainable", "Valid"):
        accepted(f"{name}/dataset", lambda: read_all(open_dataset(d)))
        if kind == "Valid":
            accepted(f"{name}/torch", lambda: f"SRCacheDataset served {torch_items(d)} items")
    else:
        fail(name, f"unknown kind {kind}")


def craft(schema, payloads, metas, n_tensors=None, entries=None):
    """A shard straight from FORMAT.md with every checksum valid (reliability_common::craft_shard): `schema`
    and `metas` as given (bytes or str, not validated), payloads [[(bytes, raw_len)]] per sample; `entries`
    overrides the table ([(offset, stored, raw, checksum)])."""
    schema = schema.encode() if isinstance(schema, str) else schema
    metas = metas.encode() if isinstance(metas, str) else metas
    pad = lambda b: b.extend(bytes(-len(b) % 64))  # noqa: E731
    b = bytearray(64)
    b[0:8] = b"\x89SRS\r\n\x1a\n"
    struct.pack_into("<IIQQ", b, 8, 1, 64, len(schema), xxhash.xxh3_64_intdigest(schema))
    struct.pack_into("<Q", b, 56, xxhash.xxh3_64_intdigest(bytes(b[:56])))
    b += schema
    pad(b)
    table = bytearray()
    for sample in payloads:
        for p, raw in sample:
            pad(b)
            table += struct.pack("<QQQQ", len(b), len(p), raw, xxhash.xxh3_64_intdigest(p))
            b += p
    pad(b)
    if entries is not None:
        table = b"".join(struct.pack("<QQQQ", *e) for e in entries)
    index_off = len(b)
    index = bytes(table) + metas
    b += index
    nt = n_tensors if n_tensors is not None else (len(payloads[0]) if payloads else 1)
    f = bytearray(64)
    struct.pack_into("<QQQQQII", f, 0, index_off, len(table), len(metas), len(payloads), xxhash.xxh3_64_intdigest(index), 1, nt)
    struct.pack_into("<Q", f, 48, xxhash.xxh3_64_intdigest(bytes(f[:48])))
    f[56:64] = b"\x89SRSEND\n"
    return bytes(b + f)


def meta(k=0):
    return {"id": f"img{k}_000", "source": f"img{k}.png", "patch": {"x": 0, "y": 0, "w": 16, "h": 16}, "variant": "clean",
            "psnr": {"a": 30.0}}


def one(shape, dtype="u8", codec='{"kind":"raw"}', name="lr"):
    return f'{{"tensors":[{{"name":"{name}","dtype":"{dtype}","shape":{shape},"codec":{codec}}}],"attrs":{{}}}}'


def extra_cases():
    """(name, shard bytes): hostile schemas and metadata with valid checksums, each refused by Rust's serde types
    or Schema::validate, so the Python reader must refuse them too."""
    lr = bytes(range(256)) * 3  # u8 [3, 16, 16]
    good = [[(lr, 768)]]
    m1 = json.dumps([meta()])
    deep = "[" * 100000 + "]" * 100000
    cases = [
        ("neg_shape", one("[-3,16,16]"), good, m1),
        ("string_shape", one('"3x16x16"'), good, m1),
        ("string_dims", one('["3","16","16"]'), good, m1),
        ("float_dims", one("[3.0,16,16]"), good, m1),
        ("bool_dims", one("[true,16,16]"), good, m1),
        ("dim_past_u64", one("[18446744073709551616]"), good, m1),
        ("overflow_then_zero", one("[4294967296,4294967296,0]"), [[(b"", 0)]], m1),
        ("meta_object", one("[3,16,16]"), good, json.dumps(meta())),
        ("meta_integer", one("[3,16,16]"), good, "42"),
        ("meta_record_integer", one("[3,16,16]"), good, "[1]"),
        ("meta_id_integer", one("[3,16,16]"), good, json.dumps([{**meta(), "id": 7}])),
        ("meta_patch_negative", one("[3,16,16]"), good, json.dumps([{**meta(), "patch": {"x": -1, "y": 0, "w": 16, "h": 16}}])),
        ("meta_patch_missing", one("[3,16,16]"), good, json.dumps([{**meta(), "patch": {"x": 0}}])),
        ("meta_psnr_string", one("[3,16,16]"), good, json.dumps([{**meta(), "psnr": {"a": "30"}}])),
        ("meta_psnr_nan_literal", one("[3,16,16]"), good, m1.replace("30.0", "NaN")),
        ("meta_psnr_past_f64", one("[3,16,16]"), good, m1.replace("30.0", "1e400")),
        ("meta_deep", one("[3,16,16]"), good, m1[:-2] + f', "z": {deep}}}]'),
        ("meta_not_utf8", one("[3,16,16]"), good, m1.encode().replace(b"clean", b"cl\xffan")),
        ("schema_deep", one("[3,16,16]").replace('"attrs":{}', f'"attrs":{{"x":{deep}}}'), good, m1),
        ("schema_utf16", one("[3,16,16]").encode("utf-16"), good, m1),
        ("schema_object_attr", one("[3,16,16]").replace('"attrs":{}', '"attrs":{"scale":{"x":2}}'), good, m1),
        ("schema_integer_attr", one("[3,16,16]").replace('"attrs":{}', '"attrs":{"scale":2}'), good, m1),
        ("schema_tensors_object", '{"tensors":{"lr":1},"attrs":{}}', good, m1),
        ("schema_integer", "42", good, m1),
        ("schema_no_tensors", '{"tensors":[],"attrs":{}}', [[]], m1),
        ("duplicate_tensor_names", '{"tensors":[{"name":"lr","dtype":"u8","shape":[3,16,16],"codec":{"kind":"raw"}},'
         '{"name":"lr","dtype":"u8","shape":[3,16,16],"codec":{"kind":"raw"}}],"attrs":{}}', [[(lr, 768), (lr, 768)]], m1),
        ("duplicate_field", one("[3,16,16]").replace('"dtype":"u8"', '"dtype":"u8","dtype":"f32"'), good, m1),
        ("empty_name", one("[3,16,16]", name=""), good, m1),
        ("unknown_dtype", one("[3,16,16]", dtype="f64"), good, m1),
        ("unknown_codec", one("[3,16,16]", codec='{"kind":"lz4"}'), good, m1),
        ("codec_string", one("[3,16,16]", codec='"raw"'), good, m1),
        ("zstd_no_level", one("[3,16,16]", codec='{"kind":"zstd"}'), good, m1),
        ("zstd_level_99", one("[3,16,16]", codec='{"kind":"zstd","level":99}'), good, m1),
        ("zstd_level_float", one("[3,16,16]", codec='{"kind":"zstd","level":1.0}'), good, m1),
        ("affine_on_u8", one("[3,16,16]", codec='{"kind":"affine_u8"}'), [[(bytes(24) + lr, 768)]], m1),
        ("giant_zstd_unknown_size", one("[3,100000,100000]", codec='{"kind":"zstd","level":1}'),
         [[(b"\x28\xb5\x2f\xfd\x00\x00" + bytes(58), 30_000_000_000)]], m1),
    ]
    out = [(n, craft(s, p, m)) for n, s, p, m in cases]
    # An entry whose offset wraps past 2^64 onto the payload area (offset + length overflows a u64).
    wrap = ((1 << 64) - 64, 768, 768, xxhash.xxh3_64_intdigest(lr))
    out.append(("offset_wraps", craft(one("[3,16,16]"), good, m1, entries=[wrap])))
    return out


def corpus(cases_dir, kinds_json):
    kinds = json.loads(pathlib.Path(kinds_json).read_text())
    tracemalloc.start()
    for name, kind in sorted(kinds.items()):
        corpus_case(name, kind, pathlib.Path(cases_dir) / name)
    work = pathlib.Path(cases_dir).parent / "python_extra"
    work.mkdir(exist_ok=True)
    extra = extra_cases()
    for name, data in extra:
        p = work / f"{name}.srs"
        p.write_bytes(data)
        refused(f"extra/{name}", lambda: Shard(p), [p])
    tracemalloc.stop()
    # D14 on mapped (raw) payloads: a valid case with raw tensors, truncated under the open dataset after its
    # tensors were read (zero-copy views of the map); a real cache stores every tensor compressed (pread path).
    for name in [k for k in ("no_scale_attr", "psnr_inf") if k in kinds][:1]:
        for verify in ("once", False):
            d = work / f"truncate_raw_{verify}"
            shutil.copytree(pathlib.Path(cases_dir) / name, d)
            rows = list(range(len(open_dataset(d))))
            truncated(f"D14/{name}_raw_verify_{verify}", d, d / "shard-00000.srs", rows, True, verify, False)
    n = len(kinds) + len(extra)
    print(f"python reader, crafted shards: {n} datasets/shards ({len(kinds)} Rust corpus + {len(extra)} Python), "
          f"{len(OKS)} checks held, {len(FAILS)} failed")


# ---- tamper: a real cache with its manifest rewritten, a FIFO, truncation ----------------------------------
def rewrite_manifest(root, edit):
    """Rewrites root/manifest.parquet with `edit(dict of column lists)` applied, same schema and key-value
    metadata (so only the rows lie, as a hand edit with pyarrow would)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "manifest.parquet"
    t = pq.read_table(path)
    md = pq.ParquetFile(path).metadata.metadata
    cols = t.to_pydict()
    edit(cols)
    new = pa.Table.from_pydict(cols, schema=t.schema.with_metadata(md))
    pq.write_table(new, path, compression="zstd")


def swap(col, a, b):
    col[a], col[b] = col[b], col[a]


def copy_cache(cache, work, name):
    d = work / name
    shutil.copytree(cache, d)
    return d


def run_py(code, timeout):
    """Runs `code` in a fresh interpreter: (returncode or 'timeout', output)."""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])})
    except subprocess.TimeoutExpired:
        return "timeout", ""
    return r.returncode, r.stdout + r.stderr


def sig_name(rc):
    return f"killed by {signal.Signals(-rc).name}" if isinstance(rc, int) and rc < 0 else f"rc {rc}"


TRUNCATE = """
import json, os
from srcache import open_dataset, ShardError
a = json.loads(ARGS)
if a["torch"]:
    from srcache.torch import SRCacheDataset
    ds = SRCacheDataset(a["root"], verify=a["verify"])
    read = lambda i: ds[i]
else:
    ds = open_dataset(a["root"], verify=a["verify"])
    read = lambda i: [v.sum() for v in ds.sample(i).values()]  # touches every byte of raw (mapped) tensors
if a["warm"]:
    for i in a["rows"]:
        read(i)
os.truncate(a["target"], os.path.getsize(a["target"]) // 3)
errors, msg = 0, ""
for i in a["rows"]:
    try:
        read(i)
    except ShardError as e:
        errors, msg = errors + 1, str(e)
print("ERRORS", errors, "OF", len(a["rows"]))
print("MSG", msg)
"""


def truncated(case, root, target, rows, warm, verify, torch):
    """In a subprocess: open `root`, read `rows` if warm, cut `target` to a third, read them again: every read a
    ShardError naming the shard, and the process alive (SIGBUS shows as its return code)."""
    args = json.dumps({"root": str(root), "target": str(target), "rows": rows, "warm": warm, "verify": verify, "torch": torch})
    rc, out = run_py(TRUNCATE.replace("ARGS", repr(args)), 60)
    if rc == 0 and f"ERRORS {len(rows)} OF {len(rows)}" in out and str(target) in out:
        ok(case, out.strip().splitlines()[-1][:300])
    else:
        fail(case, f"{sig_name(rc)}: {out.strip()[-400:]}")


def tamper(cache, work):
    cache, work = pathlib.Path(cache), pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    base = open_dataset(cache)
    n = len(base)
    shards = base.shard_paths
    if n < 4 or len(shards) < 2:
        fail("setup", f"need a cache of >= 2 shards and >= 4 samples, got {n} samples in {shards}")
        return
    ok("untampered", read_all(base))
    mani = lambda d: [d / "manifest.parquet"]  # noqa: E731
    k0 = 0
    k1 = next(r for r in range(n) if base.locate(r)[0] != base.locate(0)[0])  # first row of the second shard

    def case(name, edit):
        d = copy_cache(cache, work, name)
        rewrite_manifest(d, edit)
        refused(f"D13/{name}", lambda: open_dataset(d), mani(d))
        return d

    case("swap_index", lambda c: swap(c["index"], 0, 1))
    case("swap_ids", lambda c: swap(c["sample_id"], 0, 1))
    case("swap_rows", lambda c: [swap(v, 0, 1) for v in c.values()])
    case("duplicate_id", lambda c: c["sample_id"].__setitem__(1, c["sample_id"][0]))
    other = {shards[0]: shards[1], shards[1]: shards[0]}
    case("swap_shard_names", lambda c: c.__setitem__("shard", [other.get(s, s) for s in c["shard"]]))
    case("row_bytes", lambda c: c["bytes"].__setitem__(0, c["bytes"][0] + 1))
    case("row_patch", lambda c: c["x"].__setitem__(0, c["x"][0] + 1))
    case("row_psnr", lambda c: [v.__setitem__(0, (v[0] or 0) + 1.0) for k, v in c.items() if k.startswith("psnr/")])
    case("row_dropped", lambda c: [v.pop(k1) for v in c.values()])
    case("row_repeated", lambda c: [v.insert(1, v[0]) for v in c.values()])
    case("row_other_shard", lambda c: c["index"].__setitem__(k0, c["index"][k1]) or c["shard"].__setitem__(k0, c["shard"][k1]))

    # Two shard files swapped on disk under an unchanged manifest (counts equal or not, ids must catch it).
    d = copy_cache(cache, work, "swap_shard_files")
    a, b = d / shards[0], d / shards[1]
    tmp = d / "tmp.swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    refused("D13/swap_shard_files", lambda: open_dataset(d), mani(d))

    # A shard file the manifest does not list (a stale manifest), and a shard replaced after the dataset was
    # opened (what a DataLoader worker would map later must be the file whose rows were checked).
    d = copy_cache(cache, work, "extra_shard_file")
    last = shards[-1]
    extra = d / f"{last[:-9]}{int(last[-9:-4]) + 1:05}.srs"
    shutil.copy(d / last, extra)
    refused("D13/extra_shard_file", lambda: open_dataset(d), [extra])
    d = copy_cache(cache, work, "replaced_after_open")
    ds = open_dataset(d)
    shutil.copy(d / shards[1], d / "replacement")
    os.replace(d / "replacement", d / shards[0])
    refused("D13/replaced_after_open", lambda: ds.sample(0), [d / shards[0]], "read")

    # D3: a FIFO in place of a shard or the manifest, in a subprocess under a timeout (it used to block forever).
    for what, rel in (("shard", shards[0]), ("manifest", "manifest.parquet")):
        d = copy_cache(cache, work, f"fifo_{what}")
        (d / rel).unlink()
        os.mkfifo(d / rel)
        code = (f"from srcache import open_dataset, ShardError\ntry:\n    open_dataset({str(d)!r})\n"
                f"except ShardError as e:\n    print('REFUSED', e)\nelse:\n    print('ACCEPTED')")
        rc, out = run_py(code, 20)
        if rc == 0 and "REFUSED" in out and str(d / rel) in out and "FIFO" in out:
            ok(f"D3/fifo_{what}", out.strip())
        else:
            fail(f"D3/fifo_{what}", f"{'hung (20 s)' if rc == 'timeout' else sig_name(rc)}: {out.strip()[-300:]}")
        (d / rel).unlink()

    # D14: the shard truncated under an open dataset; each read must raise ShardError, never SIGBUS.
    rows = [r for r in range(n) if base.locate(r)[0] == shards[0]]
    for name, warm, verify in (("after_read", True, "once"), ("after_read_unverified", True, False),
                               ("before_read", False, "once"), ("torch", True, "once")):
        d = copy_cache(cache, work, f"truncate_{name}")
        target = d / shards[0]
        truncated(f"D14/truncate_{name}", d, target, rows, warm, verify, name == "torch")
    print(f"python reader, tampered cache: {len(OKS)} checks held, {len(FAILS)} failed")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "corpus":
        corpus(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "tamper":
        tamper(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
