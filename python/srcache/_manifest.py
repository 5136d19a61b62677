"""The manifest checked against the shards, as the Rust `Dataset::open` does (formats/src/dataset.rs,
`verify::cross_check`): the Python reader serves row r from `row.shard` at `row.index`, so a manifest that
lies (two rows' `index` swapped, ids swapped or duplicated, two shards swapped by name, a stale manifest) would
hand out another sample's tensors silently. Here every shard the dataset directory holds is opened (index
only: header, footer, table and metadata; no payload is read), and row r must be the r-th sample of the
dataset (shards in order, samples in shard order), field for field with what that shard's own metadata and
table say. Errors are ShardError naming the manifest, the row and the disagreement.
"""
import json
import os
from pathlib import PurePosixPath

import numpy as np

from . import _schema
from .reader import PcaBasis, ShardError

STRING_COLS = ("sample_id", "shard", "source", "variant")
U64_COLS = ("index", "bytes", "raw_bytes")
U32_COLS = ("x", "y", "w", "h")


def _shard_number(name):
    """N of `shard-NNNNN.srs` (at least 5 digits, a u32), else None: the names Rust `list_shards` takes."""
    if not (name.startswith("shard-") and name.endswith(".srs")):
        return None
    digits = name[6:-4]
    if len(digits) < 5 or not digits.isascii() or not digits.isdigit() or int(digits) >= 1 << 32:
        return None
    return int(digits)


def _list_shards(d):
    """Shard file names in directory d, in number order; ShardError if the numbering has a gap."""
    try:
        names = [e.name for e in os.scandir(d) if _shard_number(e.name) is not None]
    except OSError as e:
        raise ShardError(f"{d}: cannot list the dataset directory: {e.strerror or e}") from None
    names.sort(key=_shard_number)
    for want, n in enumerate(names):
        if _shard_number(n) != want:
            raise ShardError(f"{os.path.join(d, n)}: corrupt dataset: shard numbering has a gap: expected "
                             f"shard-{want:05}.srs, found {n}")
    return names


def _safe_relative(p):
    """Rust `is_safe_relative`: only normal components (an inner or trailing `.` is dropped, a leading one is not)."""
    if not isinstance(p, str) or not p or p.startswith("/"):
        return False
    segs = p.split("/")
    return segs[0] != "." and ".." not in segs and any(s not in ("", ".") for s in segs)


def parse_parts(text, mpath):
    """The part directories of a merged root (`srcache.parts`), each relative and inside the root."""
    try:
        parts = json.loads(text)
    except ValueError as e:
        raise ShardError(f"{mpath}: srcache.parts is not a JSON list of part directories: {e}") from None
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise ShardError(f"{mpath}: srcache.parts is not a JSON list of part directories")
    for p in parts:
        if not _safe_relative(p):
            raise ShardError(f"{mpath}: part {p!r} is not a relative path inside the dataset")
    return parts


def layout(root, parts):
    """Every shard of the dataset in dataset order, as the manifest names them (Rust `DatasetLayout`): a plain
    dataset's `shard-*.srs` in its root, or each part's in `srcache.parts` order (`parts/K-of-N/shard-...`)."""
    if parts is None:
        return _list_shards(root)
    names = []
    for p in parts:
        d = os.path.join(root, p)
        if not os.path.isdir(d):
            raise ShardError(f"{root}: part directory {p} listed in srcache.parts is missing")
        names += [f"{p.rstrip('/')}/{n}" for n in _list_shards(d)]
    return names


def check_columns(table, mpath):
    """The columns and types the Rust manifest reader requires, without nulls (psnr/* may be null)."""
    import pyarrow as pa

    want = {**{c: "string" for c in STRING_COLS}, **{c: "uint64" for c in U64_COLS}, **{c: "uint32" for c in U32_COLS}}
    for c, ty in want.items():
        if c not in table.column_names:
            raise ShardError(f"{mpath}: manifest has no column {c!r}")
        col = table.column(c)
        ok = pa.types.is_string(col.type) or pa.types.is_large_string(col.type) if ty == "string" else str(col.type) == ty
        if not ok:
            raise ShardError(f"{mpath}: manifest column {c!r} has type {col.type}, expected {ty}")
        if col.null_count:
            raise ShardError(f"{mpath}: manifest column {c!r} has {col.null_count} null values")
    for c in table.column_names:
        if c.startswith("psnr/") and str(table.column(c).type) != "float":
            raise ShardError(f"{mpath}: manifest column {c!r} has type {table.column(c).type}, expected float (f32)")


def cross_check(table, mpath, root, names, open_shard):
    """Opens every shard in turn (`open_shard(k)` -> Shard, for names[k]; one open at a time, so a dataset of
    many shards needs no more descriptors than one) and checks the manifest rows against them.

    Returns (shard_of, index, facts): per row its position in `names` and its index in that shard, and per shard
    (schema, len, file_size, index_checksum) as checked."""
    check_columns(table, mpath)
    enc = table.column("shard").combine_chunks().dictionary_encode()
    pos = {n: k for k, n in enumerate(names)}
    code_pos = np.array([pos.get(n, -1) for n in enc.dictionary.to_pylist()], np.int64)
    shard_of = code_pos[enc.indices.to_numpy()] if len(table) else np.zeros(0, np.int64)
    index = table.column("index").to_numpy().astype(np.uint64)
    rows = len(shard_of)
    where = lambda r, what: _mismatch(table, mpath, root, r, what)  # noqa: E731
    facts, lens, start, first = [], [], 0, None
    for k in range(len(names)):
        s = open_shard(k)
        try:
            if first is None:
                why = _schema.sr_layout_problem(s.schema, PcaBasis.from_json)
                if why is not None:
                    raise ShardError(f"{s.path}: schema mismatch: {why}")
                first = (s.schema, s.path)
            elif s.schema != first[0]:
                raise ShardError(f"{s.path}: schema mismatch: schema differs from {first[1]}")
            n = len(s)
            lens.append(n)
            end = min(start + n, rows)
            # Row start + i must be sample i of this shard: the manifest lists the samples in shard order.
            bad = np.flatnonzero((shard_of[start:end] != k) | (index[start:end] != np.arange(end - start, dtype=np.uint64)))
            if len(bad):
                r = start + int(bad[0])
                raise where(r, _order_fault(r, shard_of, index, lens, names))
            if end < start + n:
                i = end - start
                raise ShardError(f"{s.path}: sample {i} ({s.meta(i)['id']!r}) has no manifest row in {mpath}; "
                                 f"run `srcache verify {root}`")
            _check_fields(table, s, start, where)
            facts.append((s.schema, n, s.file_size, s.index_checksum))
        finally:
            s.close()
        start += n
    if rows > start:
        raise where(start, _order_fault(start, shard_of, index, lens, names))
    ids = table.column("sample_id")
    if len(ids) and len(ids.unique()) != len(ids):
        seen = {}
        for r, v in enumerate(ids.to_pylist()):
            if v in seen:
                raise where(r, f"duplicate sample id: row {seen[v]} has the same id")
            seen[v] = r
    return shard_of, index.astype(np.int64), facts


def _order_fault(r, shard_of, index, lens, names):
    """Why row r is not the sample the order says (lens: the samples of the shards opened so far)."""
    k, i = int(shard_of[r]), int(index[r])
    if k < 0:
        return "shard file does not exist"
    if k < len(lens) and i >= lens[k]:
        return f"shard has only {lens[k]} samples"
    prev = np.flatnonzero((shard_of[:r] == k) & (index[:r] == i))
    if len(prev):
        return f"same shard sample as row {int(prev[0])}"
    return "out of order: the manifest must list samples in shard order"


def _mismatch(table, mpath, root, r, what):
    row = {c: table.column(c)[r].as_py() for c in ("sample_id", "shard", "index")}
    return ShardError(f"{mpath}: manifest does not match the shards: row {r} (sample {row['sample_id']!r}, "
                      f"{row['shard']} #{row['index']}): {what}; run `srcache verify {root}`")


def _check_fields(table, shard, start, where):
    """Rows start..start+len(shard) against the shard's metadata and table (Rust `row_diffs`)."""
    n = len(shard)
    if n == 0:
        return
    sl = table.slice(start, n)
    metas = shard.metas
    for col, key in (("sample_id", "id"), ("source", "source"), ("variant", "variant")):
        got = sl.column(col).to_pylist()
        want = [m[key] for m in metas]
        if got != want:
            i = next(j for j in range(n) if got[j] != want[j])
            raise where(start + i, f"{col} is {got[i]!r} in the manifest but {want[i]!r} in the shard")
    patch = np.array([[m["patch"][f] for f in U32_COLS] for m in metas], np.int64).reshape(n, 4)
    got = np.stack([sl.column(c).to_numpy().astype(np.int64) for c in U32_COLS], axis=1)
    bad = np.flatnonzero((got != patch).any(axis=1))
    if len(bad):
        i = int(bad[0])
        raise where(start + i, f"patch is {tuple(got[i].tolist())} in the manifest but {tuple(patch[i].tolist())} in the shard")
    nbytes, raw = shard.sample_sizes()
    for col, want in (("bytes", nbytes), ("raw_bytes", raw)):
        got = sl.column(col).to_numpy().astype(np.uint64)
        bad = np.flatnonzero(got != want)
        if len(bad):
            i = int(bad[0])
            raise where(start + i, f"{col} is {int(got[i])} in the manifest but {int(want[i])} in the shard")
    cols = [c[5:] for c in sl.column_names if c.startswith("psnr/")]
    for i, m in enumerate(metas):
        extra = [e for e in m.get("psnr", {}) if e not in cols]
        if extra:
            raise where(start + i, f"psnr has no manifest column for expert {extra[0]!r} of the shard")
    with np.errstate(over="ignore"):
        for e in cols:
            col = sl.column(f"psnr/{e}")
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            got = col.fill_null(0).to_numpy().astype(np.float32)
            has = np.array([e in m.get("psnr", {}) for m in metas], bool)
            # serde reads an f32 as the f64 of the JSON number rounded to f32 (1e39 -> inf).
            want = np.array([m.get("psnr", {}).get(e, 0) for m in metas], np.float64).astype(np.float32)
            bad = np.flatnonzero((valid != has) | (has & (got != want)))
            if len(bad):
                i = int(bad[0])
                g = float(got[i]) if valid[i] else None
                w = float(want[i]) if has[i] else None
                raise where(start + i, f"psnr/{e} is {g} in the manifest but {w} in the shard")


def safe_shard_path(s):
    p = PurePosixPath(s)
    return bool(s) and not p.is_absolute() and ".." not in p.parts
