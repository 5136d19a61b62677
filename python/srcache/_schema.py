"""What the Rust reader accepts in a shard's JSON, checked in Python before anything is sized from it.

The Rust reader parses the schema and the sample metadata into typed structs (serde: `Schema`, `TensorSpec`,
`Codec`, `SampleMeta`, formats/src/lib.rs) and then runs `Schema::validate`; `Dataset::open` adds
`Schema::check_sr_layout` (formats/src/names.rs). `json.loads` alone accepts far more (negative or string
shapes, NaN literals, an object where a list belongs, duplicate fields, nesting deep enough to overflow the
stack), so every rule here mirrors one of those: a shard either reads the same in both readers or is refused by
both with a reason. Errors are ValueError with the reason; reader.py adds the path.
"""
import json
import math
import re

SIZES = {"u8": 1, "u16": 2, "f16": 2, "bf16": 2, "f32": 4}
FLOATS = ("f16", "bf16", "f32")
ZSTD_KINDS = ("zstd", "shuffle_zstd", "affine_u8_zstd", "residual_u8")
CODECS = ("raw", "affine_u8") + ZSTD_KINDS
U32 = 1 << 32
USIZE = 1 << 64  # the Rust reader's usize (64-bit targets)
_WHOLE = re.compile(r"\+?[0-9]+\Z")  # what Rust's u32::from_str accepts (no spaces, no '_')


class _Obj(dict):
    """A JSON object that had a duplicate key: serde refuses a repeated struct field."""

    dup = None


def _pairs(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        d = _Obj(d)
        d.dup = next(k for k, _ in pairs if k in seen or seen.add(k))
    return d


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(data, struct_fields=True):
    """JSON from UTF-8 bytes as serde_json reads it: strict UTF-8, no NaN/Infinity literals; a nesting too deep
    for the parser is a ValueError like any other malformed input (RecursionError otherwise). `struct_fields`:
    mark objects with a repeated key (serde refuses a repeated struct field); it costs a Python call per object,
    so the sample metadata (one object per sample) is parsed without it and a repeated field there keeps its
    last value, every value still type-checked."""
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs if struct_fields else None, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("bad JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"bad JSON: {e}") from None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _struct(obj, what, fields):
    """obj as a struct with these required fields (extra fields are ignored, as serde does)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: expected an object, got {type(obj).__name__}")
    if getattr(obj, "dup", None) is not None:
        raise ValueError(f"{what}: duplicate field {obj.dup!r}")
    for f in fields:
        if f not in obj:
            raise ValueError(f"{what}: missing field {f!r}")


def _str(v, what):
    if not isinstance(v, str):
        raise ValueError(f"{what}: expected a string, got {type(v).__name__}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: lone surrogate in string") from None
    return v


def _uint(v, what, limit):
    if not _is_int(v) or not 0 <= v < limit:
        raise ValueError(f"{what}: expected a whole number in 0..{limit - 1}, got {v!r}")
    return v


def raw_len(spec):
    """Logical bytes of a tensor, or None when the product overflows a 64-bit usize at any step (as Rust's
    `TensorSpec::raw_len` checks it: a later 0 does not undo an overflow)."""
    n = SIZES[spec["dtype"]]
    for d in spec["shape"]:
        n *= d
        if n >= USIZE:
            return None
    return n


def check_schema(s):
    """Raises ValueError unless `s` (parsed JSON) is a schema the Rust reader accepts: serde's types, then
    `Schema::validate` (non-empty, unique non-empty names, no overflowing shape, affine codecs on floats only,
    zstd levels in -7..=22, residual tensors with their lr base)."""
    _struct(s, "schema", ("tensors",))
    tensors = s["tensors"]
    if not isinstance(tensors, list):
        raise ValueError(f"schema: tensors must be a list, got {type(tensors).__name__}")
    attrs = s.get("attrs", {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
        raise ValueError("schema: attrs must be an object of strings")
    for k, v in attrs.items():
        _str(k, "schema attr key")
        _str(v, f"schema attr {k!r}")
    if not tensors:
        raise ValueError("schema has no tensors")
    names = set()
    for i, t in enumerate(tensors):
        _struct(t, f"tensor #{i}", ("name", "dtype", "shape", "codec"))
        name = _str(t["name"], f"tensor #{i} name")
        what = f"tensor {name!r}"
        if t["dtype"] not in SIZES:
            raise ValueError(f"{what}: unknown dtype {t['dtype']!r} (u8, u16, f16, bf16, f32)")
        if not isinstance(t["shape"], list):
            raise ValueError(f"{what}: shape must be a list of whole numbers, got {t['shape']!r}")
        for d in t["shape"]:
            _uint(d, f"{what}: shape {t['shape']!r}", USIZE)
        c = t["codec"]
        _struct(c, f"{what}: codec", ("kind",))
        if c["kind"] not in CODECS:
            raise ValueError(f"{what}: unknown codec {c['kind']!r}")
        if c["kind"] in ZSTD_KINDS:
            if "level" not in c:
                raise ValueError(f"{what}: codec {c['kind']} has no level")
            if not _is_int(c["level"]) or not -7 <= c["level"] <= 22:
                raise ValueError(f"{what}: zstd level {c['level']!r} outside -7..=22")
        if not name:
            raise ValueError(f"tensor #{i} has an empty name")
        if name in names:
            raise ValueError(f"duplicate tensor name {name!r}")
        names.add(name)
        if raw_len(t) is None:
            raise ValueError(f"{what}: shape {t['shape']} overflows")
        if c["kind"] in ("affine_u8", "affine_u8_zstd") and t["dtype"] not in FLOATS:
            raise ValueError(f"{what}: {c['kind']} needs a float dtype, got {t['dtype']}")


def check_metas(metas, n, surrogates=True):
    """Raises ValueError unless `metas` is the JSON array of n `SampleMeta` records Rust reads:
    {"id", "source", "variant": str, "patch": {x, y, w, h: u32}, "psnr": {str: number} (optional)}.
    `surrogates`: the JSON had \\uD8xx-style escapes, so strings may hold lone surrogates (serde refuses them):
    every string is checked then; otherwise one fast pass of type tests per record."""
    if not isinstance(metas, list):
        raise ValueError(f"expected a JSON array of records, got {type(metas).__name__}")
    if len(metas) != n:
        raise ValueError(f"{len(metas)} records for {n} samples")
    isfinite = math.isfinite
    for i, m in enumerate(metas):
        try:
            p = m["patch"]
            x, y, w, h = p["x"], p["y"], p["w"], p["h"]
            good = (type(m["id"]) is str and type(m["source"]) is str and type(m["variant"]) is str and type(p) is dict
                    and type(x) is int and type(y) is int and type(w) is int and type(h) is int
                    and 0 <= x < U32 and 0 <= y < U32 and 0 <= w < U32 and 0 <= h < U32)
            psnr = m.get("psnr", {})
            good = good and type(psnr) is dict and all(type(v) is int or (type(v) is float and isfinite(v))
                                                       for v in psnr.values())
        except (KeyError, TypeError):
            good = False
        if not good or surrogates:
            _check_meta(m, i)


def _check_meta(m, i):
    """One record, slowly, with the reason it is refused."""
    what = f"record {i}"
    _struct(m, what, ("id", "source", "patch", "variant"))
    for f in ("id", "source", "variant"):
        _str(m[f], f"{what}: {f}")
    p = m["patch"]
    _struct(p, f"{what}: patch", ("x", "y", "w", "h"))
    for f in ("x", "y", "w", "h"):
        _uint(p[f], f"{what}: patch.{f}", U32)
    psnr = m.get("psnr", {})
    if not isinstance(psnr, dict):
        raise ValueError(f"{what}: psnr must be an object of numbers, got {type(psnr).__name__}")
    for k, v in psnr.items():
        # serde reads an f32 from any JSON number (1e39 becomes inf) but not from one past f64 (1e400).
        if not (_is_int(v) or (isinstance(v, float) and math.isfinite(v))):
            raise ValueError(f"{what}: psnr {k!r} is {v!r}, not a number")
        _str(k, f"{what}: psnr key")


SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _whole_attr(attrs, key):
    v = attrs.get(key)
    if v is None:
        return None
    if not _WHOLE.match(v) or int(v) >= U32:
        raise ValueError(f"attr {key} = {v!r} is not a whole number")
    return int(v)


def _expert(name, prefix):
    """The expert of `sr/<e>` / `feat/<e>` (TensorName), None when malformed or another prefix."""
    if not name.startswith(prefix):
        return None
    e = name[len(prefix) :]
    return e if e and "/" not in e else None


def sr_layout_problem(schema, pca_from_json):
    """Why `schema` is not a consistent SR layout (Rust `Schema::check_sr_layout`, which `Dataset::open` runs),
    or None. `pca_from_json` parses a `feat/<e>/pca` attr (raises ValueError)."""
    tensors = schema["tensors"]
    attrs = schema.get("attrs", {})
    by_name = {t["name"]: t for t in tensors}
    for key in attrs:
        if not (key.startswith("feat/") and key.endswith("/pca")):
            continue
        e = key[5:-4]
        if not e or "/" in e or len(key) < 9:
            continue
        try:
            basis = pca_from_json(attrs[key])
        except ValueError as err:
            return f"attr {key}: {err}"
        t = by_name.get(f"feat/{e}")
        if t is None:
            return f"attr {key} but the schema has no tensor feat/{e}"
        if t["dtype"] not in FLOATS:
            return f"feat/{e} holds PCA coefficients but has dtype {t['dtype']}, not a float"
        if len(t["shape"]) != 3 or t["shape"][0] != basis.k:
            return f"feat/{e} has shape {t['shape']} but its PCA basis has k = {basis.k} coefficient channels ([k, h, w])"
    for t in tensors:
        n = t["name"]
        for prefix in ("sr/", "feat/"):
            if n.startswith(prefix) and _expert(n, prefix) is None:
                return f"tensor name {n!r} is not sr/<expert> or feat/<expert> (an expert name has no '/')"
    try:
        scale, patch = _whole_attr(attrs, "scale"), _whole_attr(attrs, "patch")
    except ValueError as err:
        return str(err)
    lr = by_name.get("lr")
    if lr is None:
        return None
    if len(lr["shape"]) != 3 or lr["shape"][0] != 3 or lr["shape"][1] != lr["shape"][2] or lr["shape"][1] == 0:
        return f"lr has shape {lr['shape']}, expected [3, p, p]"
    p = lr["shape"][1]
    if lr["dtype"] != "u8":
        return f"lr has dtype {lr['dtype']}, expected u8"
    if patch is not None and patch != p:
        return f"attr patch = {patch} but lr is {p}x{p}"
    hr = by_name.get("hr")
    if hr is None:
        return None
    if len(hr["shape"]) != 3 or hr["shape"][0] != 3:
        return f"hr has shape {hr['shape']}, expected [3, s*p, s*p]"
    hp = hr["shape"][1]
    if hp != hr["shape"][2] or hp < p or hp % p:
        return f"hr has shape {hr['shape']}: not a whole multiple (s >= 1) of lr {p}x{p}"
    if hr["dtype"] != "u8":
        return f"hr has dtype {hr['dtype']}, expected u8"
    if scale is not None and scale != hp // p:
        return f"attr scale = {scale} but hr/lr = {hp // p}"
    for t in tensors:
        n, shape = t["name"], t["shape"]
        if _expert(n, "sr/") is not None and shape != [3, hp, hp]:
            return f"{n} has shape {shape}, expected [3, {hp}, {hp}]"
        if _expert(n, "feat/") is not None:
            if len(shape) != 3:
                return f"{n} has shape {shape}, expected [C, h, w]"
            fc, fh, fw = shape
            whole = fh > 0 and (fh % p == 0 or p % fh == 0)
            if fc == 0 or fh != fw or not whole:
                return f"{n} has shape {shape}: not C >= 1 channels, square, with a whole ratio to lr {p}x{p}"
    return None
