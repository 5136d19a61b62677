"""The trainer's fusion networks (trainer/src/model.rs, ops.rs) in PyTorch: same layers, parameter names, input
order and arithmetic, so a run trained by `srcache train` loads here, fine-tunes, and exports back to a
`fusion.pt` that `srcache eval --run` / `srcache infer --run` load.

    from srcache.torch import FusionNet
    net = FusionNet.from_run("runs/r1")                    # config.toml [model] + ckpt/latest/ema.safetensors
    out = net(lr=lr, sr={"bic": sr0, "lan": sr1}, feat={"bic": f0, "lan": f1})   # floats in [0,1], NCHW
    net.export("runs/r2")                                  # fusion.pt (traced) + fusion.json

Inputs (all float, NCHW): `lr` [B,3,h,w] (bicubic-upsampled inside, PyTorch's a = -0.75, as Rust does) or
`lr_up` [B,3,H,W]; `sr`: one [B,3,H,W] per expert, a list in expert order (`net.experts`, sorted by name) or
a dict by expert name; `feat`: one [B,C,h,w] per expert the model takes features of (`net.feat_experts`), a
list in that order or a dict. The output is not clamped (losses see the raw output, as in Rust).

Parameter names are the Rust VarStore's (`trunk.head.weight`, `trunk.feat0.weight`, `trunk.block0.c1.bias`,
`head.gate.weight`, `head.res.weight`, `edge.c1.weight`, ...): `state_dict()` reads and writes the run's
`model.safetensors` / `ema.safetensors` as they are. A cache with PCA features (`--feat-pca`) trains on the
coefficients; `fold_pca` makes the equivalent model on full features, which is what `fusion.pt` takes.
"""
import json
import os
import tomllib
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusionNet", "FusionConfig", "HEADS", "haar_dwt", "haar_idwt", "upsample_bicubic", "latest_checkpoint"]

HEADS = ("gating", "frequency", "delta", "refine", "select")
SPEC_FILE = "fusion.json"


class FusionConfig:
    """Rust `FusionConfig` (the `[model]` table of a run's config.toml), defaults as there."""

    FIELDS = {"head": "gating", "experts": [], "feat_channels": [], "use_feats": True, "feat_proj": 8, "width": 48,
              "blocks": 4, "scale": 4, "delta_expert": "best", "head_layers": 2, "edge_refine": False}

    def __init__(self, **kw):
        unknown = set(kw) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fusion config keys {sorted(unknown)} (known: {sorted(self.FIELDS)})")
        for k, v in self.FIELDS.items():
            setattr(self, k, kw.get(k, list(v) if isinstance(v, list) else v))
        self.experts = [str(e) for e in self.experts]
        self.feat_channels = [int(c) for c in self.feat_channels] + [0] * (len(self.experts) - len(self.feat_channels))
        if self.head not in HEADS:
            raise ValueError(f"model.head {self.head!r}: not one of {HEADS}")
        if not self.experts:
            raise ValueError("model.experts: at least one expert is needed")
        self.base = self.base_index()

    def base_index(self):
        """Rust `ExpertRef::resolve`: the expert every head starts from. A trained run's config names it;
        "best" unresolved (a model built without training data) is the first expert, as in Rust."""
        d = self.delta_expert
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise ValueError(f"model.delta_expert {d!r}: give an expert name, \"best\" or an index")
        if d == "best":
            return 0
        if isinstance(d, str):
            if d not in self.experts:
                raise ValueError(f"model.delta_expert {d!r} is not an expert of this model (experts: {self.experts})")
            return self.experts.index(d)
        if not 0 <= d < len(self.experts):
            raise ValueError(f"model.delta_expert {d} but only {len(self.experts)} experts")
        return d

    def to_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    def wants_feat(self):
        return [bool(self.use_feats and c > 0) for c in self.feat_channels]

    def __repr__(self):
        return f"FusionConfig({self.to_dict()})"


# ---- ops.rs ---------------------------------------------------------------------------------------------------
def upsample_bicubic(lr, scale):
    """The model's `lr_up` input: PyTorch bicubic (a = -0.75, align_corners = False), as Rust's."""
    return F.interpolate(lr, size=(lr.shape[-2] * scale, lr.shape[-1] * scale), mode="bicubic", align_corners=False)


def haar_dwt(x):
    """Orthonormal one-level Haar DWT: [B,C,H,W] -> (LL, LH, HL, HH), each [B,C,H/2,W/2]; H, W even."""
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"haar_dwt needs even [B,C,H,W], got {list(x.shape)}")
    a, b = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]
    c, d = x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    return ((a + b + c + d) * 0.5, (a + b - c - d) * 0.5, (a - b + c - d) * 0.5, (a - b - c + d) * 0.5)


def haar_idwt(bands):
    ll, lh, hl, hh = bands
    a = (ll + lh + hl + hh) * 0.5
    b = (ll + lh - hl - hh) * 0.5
    c = (ll - lh + hl - hh) * 0.5
    d = (ll - lh - hl + hh) * 0.5
    n, ch, h, w = ll.shape
    y = torch.stack([torch.stack([a, b], 4), torch.stack([c, d], 4)], 3)  # [B,C,h,2,w,2]
    return y.reshape(n, ch, 2 * h, 2 * w)


def gaussian_kernel(size=5, sigma=1.0):
    """Rust `gaussian_kernel`: f64 taps cast to f32, normalised in f32, outer product in f32."""
    half = (size - 1) / 2.0
    g = np.array([np.exp(-((i - half) ** 2) / (2.0 * sigma * sigma)) for i in range(size)], np.float64).astype(np.float32)
    g = g / np.float32(sum(float(v) for v in g))  # Rust sums the f32 taps in order
    return torch.from_numpy(np.outer(g, g).astype(np.float32))


def depthwise(x, kernel):
    c, k = x.shape[1], kernel.shape[0]
    w = kernel.to(x.dtype).to(x.device).view(1, 1, k, k).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), w, groups=c)


def _conv(cin, cout, k, zero=False):
    c = nn.Conv2d(cin, cout, k, padding=k // 2)
    if zero:  # Rust `Conv::zeros`: the head starts exactly at its base
        nn.init.zeros_(c.weight)
        nn.init.zeros_(c.bias)
    return c


def _lrelu(x):
    return F.leaky_relu(x, 0.01)  # tch's leaky_relu slope


# ---- model.rs -------------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.c1, self.c2 = _conv(w, w, 3), _conv(w, w, 3)

    def forward(self, x):
        return x + self.c2(_lrelu(self.c1(x)))


class FeatProj(nn.Conv2d):
    """1x1 projection of one expert's features, pixel-shuffled to HR (bilinear if the size does not divide).
    A Conv2d itself: Rust names its variables trunk.feat{i}.weight / .bias, without a sub-layer."""

    def __init__(self, channels, proj, scale):
        r = max(int(scale), 1)
        super().__init__(channels, proj * r * r, 1)
        self.r = r

    def forward(self, feat, hw):
        y = F.pixel_shuffle(super().forward(feat), self.r)
        if tuple(y.shape[-2:]) == tuple(hw):
            return y
        return F.interpolate(y, size=hw, mode="bilinear", align_corners=False)


class Trunk(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        e = len(cfg.experts)
        self.feat_index = [i for i, w in enumerate(cfg.wants_feat()) if w]
        for i in self.feat_index:  # named trunk.feat{i} after the expert index, as the Rust VarStore
            self.add_module(f"feat{i}", FeatProj(cfg.feat_channels[i], cfg.feat_proj, cfg.scale))
        self.head = _conv(3 + 3 * e + cfg.feat_proj * len(self.feat_index), cfg.width, 3)
        for b in range(cfg.blocks):
            self.add_module(f"block{b}", ResBlock(cfg.width))
        self.n_blocks = cfg.blocks

    def forward(self, lr_up, srs, feats):
        hw = tuple(lr_up.shape[-2:])
        xs = [lr_up, *srs]
        for i, f in zip(self.feat_index, feats):
            xs.append(getattr(self, f"feat{i}")(f, hw))
        y = _lrelu(self.head(torch.cat(xs, 1)))
        for b in range(self.n_blocks):
            y = getattr(self, f"block{b}")(y)
        return y


class Head(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        w, e = cfg.width, len(cfg.experts)
        layers = max(int(cfg.head_layers), 1)
        if cfg.head == "gating":
            self.gate, self.res = _conv(w, e, 3, True), _conv(w, 3, 3, True)
        elif cfg.head == "frequency":
            self.gate, self.res = _conv(w + 12, 4 * e, 3, True), _conv(w + 12, 12, 3, True)
        elif cfg.head == "refine":  # Rust head.gate, head.r{i}, head.out
            self.gate, self.out = _conv(w, e, 3, True), _conv(w, 3, 3, True)
            self.stack = [f"r{i}" for i in range(layers)]
            for i, n in enumerate(self.stack):
                self.add_module(n, _conv(w + 3 if i == 0 else w, w, 3))
        elif cfg.head == "select":  # Rust head.s{i}, head.gate
            self.gate = _conv(w, e, 3, True)
            self.stack = [f"s{i}" for i in range(layers)]
            for n in self.stack:
                self.add_module(n, _conv(w, w, 3))
        else:
            self.res = _conv(w, 3, 3, True)

    def run(self, x):
        for n in self.stack:
            x = _lrelu(getattr(self, n)(x))
        return x


def toward(base, xs, gates, first=0):
    """Rust `toward`: base + sum_e tanh(g_e) (x_e - base); exactly `base` while the gates are zero."""
    out = base
    for i, x in enumerate(xs):
        out = out + (x - base) * torch.tanh(gates[:, first + i : first + i + 1])
    return out


class EdgeRefine(nn.Module):
    """Zero-initialised Laplacian edge refinement: sees the trunk features and the high-pass of the output."""

    def __init__(self, cfg):
        super().__init__()
        mid = max(cfg.width // 2, 8)
        self.c1, self.out = _conv(cfg.width + 3, mid, 3), _conv(mid, 3, 3, True)
        self.register_buffer("blur", gaussian_kernel(5, 1.0), persistent=False)  # not a Rust variable either

    def forward(self, feat, img):
        lap = img - depthwise(img, self.blur)
        return img + self.out(_lrelu(self.c1(torch.cat([feat, lap], 1))))


class FusionNet(nn.Module):
    """The trainer's fusion model: trunk over (lr_up, expert outputs, projected features) + a head
    ("gating", "frequency", "delta", "refine", "select") + optional edge refinement. See the module docstring
    for the inputs."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        cfg = cfg if isinstance(cfg, FusionConfig) else FusionConfig(**{**dict(cfg or {}), **kw})
        self.cfg = cfg
        self.trunk = Trunk(cfg)
        self.head = Head(cfg)
        self.edge = EdgeRefine(cfg) if cfg.edge_refine else None
        self.pca_folded = False
        self.run = None  # the run directory this model was loaded from, if any

    # ---- description --------------------------------------------------------------------------------------
    @property
    def experts(self):
        return list(self.cfg.experts)

    @property
    def feat_experts(self):
        """Experts whose features the model takes, in input order."""
        return [self.cfg.experts[i] for i in self.trunk.feat_index]

    @property
    def scale(self):
        return int(self.cfg.scale)

    def input_names(self):
        """The positional inputs of the exported `fusion.pt`, in order."""
        return ["lr_up", *[f"sr_{e}" for e in self.experts], *[f"feat_{e}" for e in self.feat_experts]]

    def spec(self):
        """What `fusion.json` holds (Rust `FusionSpec`)."""
        return {"experts": self.experts, "feat_channels": list(self.cfg.feat_channels), "use_feats": bool(self.cfg.use_feats),
                "scale": self.scale}

    # ---- forward ------------------------------------------------------------------------------------------
    def _ordered(self, x, names, what):
        if x is None:
            x = []
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(f"FusionNet: {what} missing for {missing} (has {sorted(x)})")
            return [x[n] for n in names]
        x = list(x)
        if len(x) != len(names):
            raise ValueError(f"FusionNet: {len(x)} {what} tensors, the model takes {len(names)} ({names})")
        return x

    def forward(self, lr=None, sr=None, feat=None, lr_up=None):
        if lr_up is None:
            if lr is None:
                raise ValueError("FusionNet: give lr [B,3,h,w] or lr_up [B,3,H,W]")
            lr_up = upsample_bicubic(lr, self.scale)
        srs = self._ordered(sr, self.experts, "sr")
        feats = self._ordered(feat, self.feat_experts, "feat")
        return self.fuse(lr_up, srs, feats)

    def fuse(self, lr_up, srs, feats):
        """Positional form, the exported signature: fuse(lr_up, [sr per expert], [feat per feature expert])."""
        cfg, e = self.cfg, len(self.cfg.experts)
        f = self.trunk(lr_up, srs, feats)
        base = srs[cfg.base]
        h = self.head
        if cfg.head == "gating":
            out = toward(base, srs, h.gate(f)) + h.res(f)
        elif cfg.head == "refine":
            blend = toward(base, srs, h.gate(f))
            out = blend + h.out(h.run(torch.cat([f, blend], 1)))
        elif cfg.head == "select":
            out = toward(base, srs, h.gate(h.run(f)))
        elif cfg.head == "frequency":
            bands = [haar_dwt(s) for s in srs]
            mb = haar_dwt(base)
            pooled = F.avg_pool2d(f, 2, 2, 0, ceil_mode=False, count_include_pad=True)
            x = torch.cat([pooled, torch.cat(mb, 1)], 1)
            logits, res = h.gate(x), h.res(x)
            corr = []
            for k in range(4):
                moved = toward(mb[k], [b[k] for b in bands], logits, k * e) - mb[k]
                corr.append(moved + res[:, 3 * k : 3 * k + 3])
            out = base + haar_idwt(corr)
        else:
            out = base + h.res(f)
        return self.edge(f, out) if self.edge is not None else out

    # ---- runs and checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run, weights="ema", checkpoint=None, data=None, map_location="cpu"):
        """The model of a `srcache train` run: its config.toml `[model]`, weights from `checkpoint` (a step
        directory; default `ckpt/latest`), `weights` "ema" (ema.safetensors, what fusion.pt exports) or "model".
        A run on PCA features takes coefficients as the cache stores them; pass `data` (the cache or an open
        CacheDataset) to fold the bases in (`fold_pca`) so it takes full features, as its fusion.pt does."""
        run = Path(run)
        cfg = read_run_config(run)
        net = cls(cfg)
        ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run)
        if weights not in ("ema", "model"):
            raise ValueError(f"weights must be 'ema' or 'model', not {weights!r}")
        net.load_safetensors(ckpt / f"{weights}.safetensors", map_location)
        net.run = run
        if data is not None:
            net = net.fold_pca(data)
        return net

    def load_safetensors(self, path, map_location="cpu"):
        """Loads Rust VarStore weights (names as `state_dict`): every tensor present and of the right shape."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        sd = load_file(str(path), device=str(map_location))
        own = self.state_dict()
        missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or extra:
            raise ValueError(f"{path}: variables do not match the model of this config: missing {missing[:6]}, "
                             f"unexpected {extra[:6]}")
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"{path}: {k} has shape {list(v.shape)}, the model {list(own[k].shape)}")
        self.load_state_dict({k: v.float() for k, v in sd.items()})
        return self

    def save_safetensors(self, path):
        """Writes the weights under the Rust VarStore names (what `srcache train --resume` reads)."""
        from safetensors.torch import save_file

        tmp = f"{path}.tmp-{os.getpid()}"
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}, tmp)
        os.replace(tmp, path)

    def fold_pca(self, data):
        """A copy taking full feature maps where this model takes PCA coefficients (Rust `export::fold_pca`):
        W' = W P, b' = b - W P mean. `data`: the cache path or a CacheDataset (its schema holds the bases)."""
        from .dataset import CacheDataset

        ds = data if hasattr(data, "pca") else CacheDataset(data)
        bases = [ds.pca(e) if w else None for e, w in zip(self.experts, self.cfg.wants_feat())]
        if not any(b is not None for b in bases):
            return self
        cfg = FusionConfig(**self.cfg.to_dict())
        for i, b in enumerate(bases):
            if b is not None:
                if self.cfg.feat_channels[i] != b.k:
                    raise ValueError(f"feat/{self.experts[i]}: the model takes {self.cfg.feat_channels[i]} channels, "
                                     f"the cache's PCA basis has k = {b.k}")
                cfg.feat_channels[i] = b.channels
        out = FusionNet(cfg)
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        with torch.no_grad():
            for i, b in enumerate(bases):
                if b is None:
                    continue
                w = sd[f"trunk.feat{i}.weight"]
                o = w.shape[0]
                w = w.reshape(o, b.k).double()
                p = torch.from_numpy(b.components).double().reshape(b.k, b.channels)
                mean = torch.from_numpy(b.mean).double().reshape(b.channels, 1)
                sd[f"trunk.feat{i}.weight"] = (w @ p).reshape(o, b.channels, 1, 1).float()
                sd[f"trunk.feat{i}.bias"] = (sd[f"trunk.feat{i}.bias"].double() - (w @ (p @ mean)).reshape(o)).float()
        out.load_state_dict(sd)
        out.pca_folded, out.run = True, self.run
        return out

    # ---- export -------------------------------------------------------------------------------------------
    def example_inputs(self, h=16, batch=1, device="cpu"):
        s = self.scale
        xs = [torch.rand(batch, 3, h * s, h * s, device=device) for _ in range(1 + len(self.experts))]
        xs += [torch.rand(batch, self.cfg.feat_channels[i], h, h, device=device) for i in self.trunk.feat_index]
        return tuple(xs)

    def traceable(self):
        """A module whose forward is fusion.pt's: forward(lr_up, sr_<e>..., feat_<e>...) -> fused, with the
        inputs named after the experts (fusion.pt from Rust has them as argument_1..N)."""
        names = self.input_names()
        args = [n if n.isidentifier() else f"x{k}" for k, n in enumerate(names)]
        e = len(self.experts)
        src = (f"def forward(self, {', '.join(args)}):\n"
               f"    xs = [{', '.join(args)}]\n"
               f"    return self.net.fuse(xs[0], xs[1:{1 + e}], xs[{1 + e}:])\n")
        scope = {}
        exec(src, scope)  # noqa: S102 - a fixed template over identifiers checked above

        class Exported(nn.Module):
            forward = scope["forward"]

        m = Exported()
        m.net = self
        return m

    def export(self, run_dir, example_size=16):
        """Traces the model (eval mode, CPU, float32) into `run_dir/fusion.pt` + `fusion.json`, the files
        `srcache eval --run` / `srcache infer --run` load; written under temporary names and renamed.
        A model still taking PCA coefficients is refused: fold it first (`fold_pca`)."""
        run_dir = Path(run_dir)
        if not self.pca_folded and self.run is not None:
            want = _spec_channels(self.run)
            if want is not None and want != list(self.cfg.feat_channels):
                raise ValueError(f"{self.run}: fusion.pt takes feature channels {want}, this model {self.cfg.feat_channels} "
                                 "(PCA coefficients): call fold_pca(cache) before export")
        run_dir.mkdir(parents=True, exist_ok=True)
        was_training = self.training
        dev = next(self.parameters()).device
        self.eval().cpu().float()
        try:
            # The size tests in FeatProj / haar_dwt hold for every input fusion.pt is fed (HR = scale x LR), so
            # the tracer's warnings about them say nothing here.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(self.traceable(), self.example_inputs(example_size), check_trace=False)
            tmp = run_dir / f".fusion.pt.tmp-{os.getpid()}"
            traced.save(str(tmp))
            os.replace(tmp, run_dir / "fusion.pt")
            tmp = run_dir / f".{SPEC_FILE}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(self.spec(), indent=2))
            os.replace(tmp, run_dir / SPEC_FILE)
        finally:
            self.to(dev).train(was_training)
        return run_dir / "fusion.pt"


def read_run_config(run):
    """The `[model]` table of `run/config.toml` as a FusionConfig (Rust serialises head in snake_case)."""
    p = Path(run) / "config.toml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not found (is {run} a `srcache train` run directory?)")
    try:
        model = tomllib.loads(p.read_text()).get("model")
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not TOML: {e}") from None
    if not isinstance(model, dict):
        raise ValueError(f"{p}: no [model] table")
    keep = {k: v for k, v in model.items() if k in FusionConfig.FIELDS}
    try:
        return FusionConfig(**keep)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def latest_checkpoint(run):
    """The step directory `run/ckpt/latest` names (Rust `checkpoint::latest`)."""
    root = Path(run) / "ckpt"
    latest = root / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{latest}: not found (the run has no checkpoint yet)")
    d = root / latest.read_text().strip()
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"{d}: latest points at a checkpoint without state.json")
    return d


def _spec_channels(run):
    p = Path(run) / SPEC_FILE
    if not p.is_file():
        return None
    try:
        return [int(c) for c in json.loads(p.read_text())["feat_channels"]]
    except (ValueError, KeyError, TypeError):
        return None
