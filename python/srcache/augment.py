"""The Rust trainer loader's crop + dihedral semantics (trainer/src/loader.rs `Plan`/`Field`,
trainer/src/dihedral.rs), in numpy, so Python training sees bit-identical samples for a given transform.

Crop: a square box of `crop` LR pixels at LR offset (y0, x0). Tensor f (lr, hr, sr/<e>, feat/<e>) has
num/den pixels per LR pixel, num = f.height, den = lr.height; its box is (y0*num//den, x0*num//den) with side
crop*num//den. LR offsets are multiples of `align` (the coarsest tensor's LR pixels per pixel, e.g. 2 when a
feature map is half the LR size) so every box lands on whole pixels; crop must be one too.

Dihedral code d (0..7): bit 2 = transpose, bit 1 = vertical flip, bit 0 = horizontal flip, applied as: take the
crop C, transpose it if bit 2 (T[i, j] = C[j, i]), then flip the rows of that (transposed) crop if bit 1 and
its columns if bit 0. Equivalently out[c, i, j] = C[c, y, x] with a = side-1-i if bit 1 else i,
b = side-1-j if bit 0 else j, (y, x) = (b, a) if bit 2 else (a, b).

Delivered dtypes (Rust `stored_dtype`, the default): u8 -> uint8, f16 -> float16, bf16 -> bf16 (here: uint16
bit patterns, `Sample.bf16` names them), u16 / f32 -> float32 (u16 converted by value, no scaling).
"""
import numpy as np

__all__ = ["Field", "Plan", "dihedral", "DIHEDRAL_CODES"]

DIHEDRAL_CODES = tuple(range(8))


def dihedral(x, d):
    """Applies dihedral code d to the last two axes of x (square): a view, not a copy."""
    d = int(d)
    if not 0 <= d < 8:
        raise ValueError(f"dihedral code {d} not in 0..7")
    if d & 4:
        x = np.swapaxes(x, -1, -2)
    if d & 2:
        x = x[..., ::-1, :]
    if d & 1:
        x = x[..., :, ::-1]
    return x


class Field:
    """One tensor the loader reads: its schema spec and its pixels per LR pixel (num/den)."""

    def __init__(self, spec, num, den):
        self.name = spec["name"]
        self.dtype = spec["dtype"]
        self.shape = tuple(spec["shape"])
        self.num = num
        self.den = den

    def box(self, y0, x0, crop):
        """(y0, x0, side) in this tensor's own pixels for an LR box."""
        return y0 * self.num // self.den, x0 * self.num // self.den, crop * self.num // self.den

    def __repr__(self):
        return f"Field({self.name!r}, {self.dtype}, {list(self.shape)}, {self.num}/{self.den})"


class Plan:
    """Which tensors to deliver and how they crop (Rust `Loader::new`): lr, hr, sr per expert, feat per expert
    that has one (when `load_feats`). `experts` None or empty = every `sr/<name>` of the schema, sorted."""

    def __init__(self, schema, experts=None, load_feats=True, crop=None):
        specs = {t["name"]: t for t in schema["tensors"]}

        def spec(name):
            if name not in specs:
                raise ValueError(f"schema has no tensor {name} (has {sorted(specs)})")
            s = specs[name]
            if len(s["shape"]) != 3:
                raise ValueError(f"{name}: expected CHW, got {s['shape']}")
            return s

        if not experts:
            experts = sorted(n[3:] for n in specs if n.startswith("sr/"))
        self.experts = list(experts)
        lr = spec("lr")
        self.h, self.w = lr["shape"][1], lr["shape"][2]
        h, w = self.h, self.w
        self.lr = Field(lr, h, max(h, 1))
        self.hr = Field(spec("hr"), spec("hr")["shape"][1], max(h, 1))
        self.sr = [Field(spec(f"sr/{e}"), spec(f"sr/{e}")["shape"][1], max(h, 1)) for e in self.experts]
        self.feat, self.feat_experts, self.feat_channels = [], [], []
        for e in self.experts:
            name = f"feat/{e}"
            if load_feats and name in specs:
                f = Field(spec(name), spec(name)["shape"][1], max(h, 1))
                self.feat.append(f)
                self.feat_experts.append(e)
                self.feat_channels.append(f.shape[0])
            else:
                self.feat_channels.append(0)
        align = 1
        for f in [self.hr, *self.sr, *self.feat]:
            if f.shape[1] * w != f.shape[2] * h:
                raise ValueError(f"{f.name} has aspect {list(f.shape)} unlike lr {h}x{w}")
            if f.num < f.den:
                align = max(align, f.den // max(f.num, 1))
        self.align = align
        self.crop = self.check_crop(min(h, w) if crop is None else int(crop))

    def fields(self):
        return [self.lr, self.hr, *self.sr, *self.feat]

    def check_crop(self, crop):
        if crop <= 0 or crop > min(self.h, self.w) or crop % self.align:
            raise ValueError(f"crop {crop} must be in 1..={min(self.h, self.w)} and a multiple of {self.align}")
        return crop

    def random(self, rng, dihedral_on=True, crop=None):
        """(y0, x0, d) drawn with a numpy Generator, distributed like the Rust loader's draw (not the same stream)."""
        c = self.crop if crop is None else crop
        ny, nx = (self.h - c) // self.align, (self.w - c) // self.align
        y0 = int(rng.integers(0, ny + 1)) * self.align
        x0 = int(rng.integers(0, nx + 1)) * self.align
        d = int(rng.integers(0, 8)) if dihedral_on else 0
        return y0, x0, d

    def check_box(self, y0, x0, crop):
        crop = self.check_crop(int(crop))
        y0, x0 = int(y0), int(x0)
        if y0 < 0 or x0 < 0 or y0 + crop > self.h or x0 + crop > self.w:
            raise ValueError(f"crop {crop} at ({y0},{x0}) outside lr {self.h}x{self.w}")
        if y0 % self.align or x0 % self.align:
            raise ValueError(f"crop offsets ({y0},{x0}) must be multiples of {self.align}")
        return y0, x0, crop

    def apply_into(self, field, arr, y0, x0, crop, d, out):
        """As `apply`, written into `out` (the delivered dtype's array of the box's shape, e.g. one sample of a
        batch): one copy from the shard instead of two."""
        if tuple(arr.shape) != field.shape:
            raise ValueError(f"{field.name}: array of shape {arr.shape}, schema says {list(field.shape)}")
        fy, fx, side = field.box(y0, x0, crop)
        np.copyto(out, dihedral(arr[:, fy : fy + side, fx : fx + side], d), casting="unsafe")

    def apply(self, field, arr, y0, x0, crop, d):
        """The delivered array for one tensor (CHW, stored dtype as documented above): a fresh C-contiguous
        array, never a view of the shard."""
        if tuple(arr.shape) != field.shape:
            raise ValueError(f"{field.name}: array of shape {arr.shape}, schema says {list(field.shape)}")
        fy, fx, side = field.box(y0, x0, crop)
        out = np.array(dihedral(arr[:, fy : fy + side, fx : fx + side], d), order="C", copy=True)
        if field.dtype in ("u16", "f32"):
            out = out.astype(np.float32)
        return out
