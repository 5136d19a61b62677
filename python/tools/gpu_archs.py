"""Random-weight stand-in experts for the one-shot GPU check (issue #11), in plain PyTorch.

The GPU machine has only `torch` (no spandrel, no basicsr, no project venv, no network), so the two expert
architectures the check needs are written out here:

* `RRDBNet`: BasicSR's RRDBNet at Real-ESRGAN x4plus size (num_in_ch 3, num_feat 64, num_block 23,
  num_grow_ch 32, scale 4; nearest-upsample + conv upsampler). 16,697,987 parameters, exactly the real model.
* `SwinIR`: the official SwinIR, classical SR x4 "SwinIR-M" configuration (embed_dim 180, depths [6]*6,
  num_heads [6]*6, window_size 8, mlp_ratio 2, upsampler 'pixelshuffle', resi_connection '1conv',
  img_range 1.0, patch_norm, no ape), with shifted-window attention, the relative position bias and the
  per-block attention-mask buffers. Parameter count = the real SwinIR-M x4 (see `SWINIR_M_X4_PARAMS`).

Module and parameter names follow BasicSR / the official SwinIR, so a real checkpoint loads with
`load_state_dict` (for SwinIR, built at the checkpoint's img_size, 64 for SwinIR-M, because the attn_mask buffers
are part of the state dict). Checked once against spandrel 0.4.2 (not needed at run time): loading this
module's state dict into spandrel's RRDBNet / SwinIR gives identical outputs (max abs diff 0) and identical
parameter counts.

Expert contract (see python/export_expert.py): `Expert.forward(lr f32[B,3,h,w] in [0,1])` returns
`(sr f32[B,3,4h,4w], feat f32[B,C,h,w])`, where feat is the body output before the upsampler including the
long skip: RRDB `conv_first(x) + conv_body(body(conv_first(x)))` (C = 64); SwinIR
`conv_after_body(forward_features(x_first)) + x_first` with `x_first = conv_first(x - mean)` (C = 180).
(export_expert.py's SwinIR hook takes conv_after_body's output without the `+ x_first`; here the residual is
included, as issue #11 asks.)

GPU-CHECK-ONLY WEIGHTS. With random weights a deep net's output is near-constant or blows up, which would
make an fp16-vs-fp32 (or CPU-vs-CUDA) PSNR comparison meaningless. So the stand-ins are NOT the trained
models' output functions:

1. Global bicubic skip: `sr = bicubic_x4(lr) + net(lr)` (F.interpolate, bicubic, align_corners=False, no
   clamp). This is the only change to the computation; the architectures themselves are unchanged.
2. Seeded init (torch.manual_seed(seed) before construction on CPU; the CPU generator makes the initial
   weights the same on every machine for one torch version; the calibration below runs a CPU forward, so
   conv_last can differ in the last float bits between CPUs with different kernels):
   - RRDB: BasicSR's own init (kaiming_normal_ x 0.1 for every ResidualDenseBlock conv, zero bias; PyTorch
     defaults elsewhere). The 0.2 residual scalings keep the 23-block trunk stable.
   - SwinIR: every Linear N(0, 1/fan_in) (LeCun normal), zero Linear bias, except attn.qkv N(0, 4/fan_in)
     (LayerNorm'ed tokens then give attention logits of std ~4: the softmax is sharp, mean entropy ~2.2 nats
     against 4.16 for uniform over a 64-token window, so fp16 softmax error would show); each residual
     branch's last Linear (attn.proj, mlp.fc2) additionally scaled by 1/sqrt(2 * blocks per RSTB) =
     1/sqrt(12); relative position bias tables N(0, 1); LayerNorm weight 1 bias 0; convs PyTorch default
     weights with zero bias (random conv biases make every token share one input-independent component, and
     the residual of two different images then correlates at 0.7 instead of 0.4).
3. Output calibration (`calibrate`): on a fixed seeded smooth image (bicubic-upsampled 8x8 noise, 16x16,
   batch 1, CPU) the last conv (`conv_last`) is rescaled so that the net's residual has std
   `RESIDUAL_STD` = 0.1, and its bias shifted so that the residual is zero-mean per channel. So sr is
   bicubic(lr) plus an input-dependent 0.1-std texture: finite, mostly inside [0, 1] (on seeded smooth
   images about 5-7% of sr values fall outside), far from constant, and dominated by nothing trivial (the
   whole body has to be right for an fp16/CUDA comparison to pass). Measured with torch 2.11 on CPU, the
   file .half()'ed and run on half input gives sr at about 70 dB (RRDB) and 64 dB (SwinIR) PSNR against f32.

SwinIR needs h, w multiples of window_size (8) and larger than it; there is no reflect-padding here (the
official `check_image_size`), so other sizes are rejected. The SwinIR module is built for one input size
(`img_size`): its attn_mask buffers are for that size; other sizes compute the mask on the fly in eager mode
(as the official code does) but a TorchScript trace is only valid at its traced size.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

RRDB_X4PLUS_PARAMS = 16_697_987
# Parameters of the official SwinIR-M classical x4 model (001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth),
# buffers (relative_position_index, attn_mask) not counted.
SWINIR_M_X4_PARAMS = 11_900_199
RESIDUAL_STD = 0.1
CALIB_SIZE = 16


# ----------------------------------------------------------------------------------------------- RRDBNet


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=64, num_grow_ch=32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        for c in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):  # BasicSR default_init_weights
            nn.init.kaiming_normal_(c.weight)
            c.weight.data *= 0.1
            nn.init.zeros_(c.bias)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """BasicSR RRDBNet, scale 4 only. forward returns (out, feat); feat = trunk output before upsampling."""

    def __init__(self, num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32):
        super().__init__()
        if scale != 4:
            raise ValueError("only scale 4 (Real-ESRGAN x4plus) is implemented")
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        out = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = self.lrelu(self.conv_up2(F.interpolate(out, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out, feat


# ------------------------------------------------------------------------------------------------ SwinIR


def window_partition(x, ws: int):
    """[B, H, W, C] -> [B * nW, ws, ws, C]"""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows, ws: int, b: int, h: int, w: int):
    """[B * nW, ws, ws, C] -> [B, H, W, C] (B passed in rather than derived with int(), so a trace keeps
    the batch dimension dynamic)."""
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window_size - 1
        rel[:, :, 1] += window_size - 1
        rel[:, :, 0] *= 2 * window_size - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask: "torch.Tensor | None" = None):
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, mlp_ratio):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.input_resolution) <= self.window_size:
            raise ValueError(f"input size {input_resolution} must be larger than window_size {window_size}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self.calculate_mask(self.input_resolution) if shift_size > 0 else None)

    def calculate_mask(self, x_size):
        h, w = x_size
        ws, s = self.window_size, self.shift_size
        img_mask = torch.zeros((1, h, w, 1))
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img_mask[:, hs, wsl, :] = cnt
                cnt += 1
        mw = window_partition(img_mask, ws).view(-1, ws * ws)
        m = mw.unsqueeze(1) - mw.unsqueeze(2)
        return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)

    def forward(self, x, x_size):
        h, w = x_size
        b, _, c = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        xw = window_partition(x, ws).view(-1, ws * ws, c)
        if s > 0:
            mask = self.attn_mask if tuple(x_size) == self.input_resolution else \
                self.calculate_mask(x_size).to(x.device, x.dtype)
        else:
            mask = None
        aw = self.attn(xw, mask=mask).view(-1, ws, ws, c)
        x = window_reverse(aw, ws, b, h, w)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class RSTB(nn.Module):
    """Residual Swin Transformer Block: BasicLayer (depth blocks) + 3x3 conv ('1conv') + skip."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio) for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size):
        y = x
        for blk in self.residual_group.blocks:
            y = blk(y, x_size)
        b, n, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, x_size[0], x_size[1]))  # patch_unembed, conv
        return y.flatten(2).transpose(1, 2) + x  # patch_embed (no norm inside an RSTB)


class SwinIR(nn.Module):
    """Official SwinIR, classical SR, upsampler 'pixelshuffle', resi_connection '1conv', patch_size 1,
    ape False, patch_norm True. forward returns (out, feat); feat = conv_after_body(...) + x_first."""

    def __init__(self, img_size=64, in_chans=3, embed_dim=180, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size=8, mlp_ratio=2.0, upscale=4, img_range=1.0):
        super().__init__()
        if upscale != 4:
            raise ValueError("only upscale 4 is implemented")
        num_feat = 64
        self.img_range = img_range
        self.upscale = upscale
        self.window_size = window_size
        self.img_size = img_size
        # A buffer (the official code keeps a plain tensor attribute): moves with .to(), no device constant in a
        # trace. Not persistent, so the state dict keys are the official ones.
        self.register_buffer("mean", torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        res = (img_size, img_size)
        self.layers = nn.ModuleList([RSTB(embed_dim, res, d, h, window_size, mlp_ratio)
                                     for d, h in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2),
                                      nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def forward_features(self, x):
        b, c, h, w = x.shape
        x_size = (h, w)
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            x = layer(x, x_size)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"SwinIR input {h}x{w}: sides must be multiples of {self.window_size}")
        x = (x - self.mean) * self.img_range
        x_first = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(x_first)) + x_first
        out = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        return out / self.img_range + self.mean, feat


def init_swinir_(model: SwinIR):
    """The GPU-check init described in the module docstring (call right after construction)."""
    per_rstb = len(model.layers[0].residual_group.blocks)
    branch_scale = 1.0 / math.sqrt(2 * per_rstb)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            gain = 2.0 if name.endswith("attn.qkv") else 1.0
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
            if name.endswith("attn.proj") or name.endswith("mlp.fc2"):
                m.weight.data *= branch_scale
        elif isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            nn.init.normal_(m.relative_position_bias_table, std=1.0)


# ------------------------------------------------------------------------------------------------ Expert


class Expert(nn.Module):
    """Expert contract wrapper: forward(lr) -> (sr, feat), sr = bicubic_x4(lr) + net(lr)[0] (GPU-check-only
    global skip, see the module docstring)."""

    def __init__(self, net: nn.Module, scale: int = 4):
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, lr):
        res, feat = self.net(lr)
        base = F.interpolate(lr, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        return base + res, feat.float()


def smooth_images(seed: int, size: int = CALIB_SIZE, batch: int = 1):
    """Seeded image-like inputs: 8x8 uniform noise per image, bicubic-upsampled to size x size, clamped to
    [0, 1]. The calibration input is smooth_images(seed + 1)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(batch, 3, 8, 8, generator=g)
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@torch.no_grad()
def calibrate(expert: Expert, seed: int, residual_std: float = RESIDUAL_STD):
    """Rescales net.conv_last so that the residual net(lr) has std `residual_std` and zero per-channel mean
    on `smooth_images(seed + 1)`. Returns the weight scale applied."""
    net = expert.net
    x = smooth_images(seed + 1)
    res, _ = net(x)
    mu = res.mean(dim=(0, 2, 3))
    k = residual_std / (res - mu.view(1, -1, 1, 1)).std().item()
    # res = conv_last(y) / img_range + m (m = SwinIR's rgb mean, 0 for RRDB). Scaling conv_last's weight and
    # bias by k maps res to k * (res - m) + m; then shift the bias so that its per-channel mean is 0.
    img_range = getattr(net, "img_range", 1.0)
    m = net.mean.view(-1) if hasattr(net, "mean") else torch.zeros_like(mu)
    net.conv_last.weight.mul_(k)
    net.conv_last.bias.mul_(k)
    net.conv_last.bias.sub_((k * (mu - m) + m) * img_range)
    return k


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Tiny widths of the same two architectures, for testing the scripts on a CPU in seconds (gpu_check.py --quick:
# an AOTInductor export of the real sizes takes 5-12 minutes on 2 CPU cores). Never a GPU figure.
TINY = {"rrdb": dict(num_feat=16, num_block=1, num_grow_ch=8),
        "swinir": dict(embed_dim=12, depths=(2,), num_heads=(2,))}


def build(arch: str, seed: int = 0, size: int = 64, tiny: bool = False) -> Expert:
    """Builds a calibrated, eval-mode, CPU f32 expert. arch: 'rrdb' or 'swinir'; size: the SwinIR img_size
    (its attn_mask buffers); ignored for RRDB. Deterministic for a given (arch, seed, torch version, CPU
    kernels); size does not change the weights. tiny: the TINY widths (script tests only)."""
    torch.manual_seed(seed)
    cfg = TINY[arch] if tiny and arch in TINY else {}
    if arch == "rrdb":
        net = RRDBNet(**cfg)
    elif arch == "swinir":
        if size % 8 or size <= 8:
            raise ValueError(f"SwinIR size {size}: must be a multiple of 8 and > 8")
        net = SwinIR(img_size=size, **cfg)
        init_swinir_(net)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    expert = Expert(net).eval()
    calibrate(expert, seed)
    return expert
