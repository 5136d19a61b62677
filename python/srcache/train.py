"""Training template: the srcache fusion model trained in PyTorch on a cache, single process or torchrun DDP.

    python -m srcache.train --data CACHE --out RUN [--steps 1000] [--batch 8] [--crop 32]
    torchrun --nproc_per_node 4 -m srcache.train --data CACHE --out RUN         # DDP (nccl on CUDA, gloo on CPU)
    python -m srcache.train --data CACHE --out RUN2 --init-run runs/r1           # fine-tune a `srcache train` run
    python -m srcache.train --data CACHE --out RUN --resume                      # continue from RUN/ckpt/latest

What it does, each piece meant to be copied and changed: SRCacheDataset (random crop + dihedral, the Rust
loader's semantics) under its resumable EpochSampler (split over ranks like DistributedSampler), the fusion
model (srcache.torch.FusionNet, the trainer's architectures) in DistributedDataParallel, AdamW with warm-up +
cosine decay, gradient clipping, an EMA of the weights, fp16 autocast + GradScaler on CUDA (--no-amp to
disable), checkpoints (RUN/ckpt/step-N.pt + RUN/ckpt/latest, written to a temporary name and renamed) holding
model, EMA, optimizer, scaler and the dataset position, so --resume continues mid-epoch with the same order.
Validation (rank 0, the EMA model): the Rust trainer's held-out set (source images split by the same hash and
val_fraction), every held-out cached patch whole, Y-PSNR/SSIM with crop = scale on u8-rounded images exactly
as `srcache train` reports them (fused, each expert, bicubic), printed and written to RUN/val.json; and with
--val-dir DIR (repeatable; `DIR/HR/*` + optional `DIR/LR_bicubic/X<s>/`, else MATLAB-bicubic LR) on full images
as the Rust trainer's `val_dirs` (srcache.fullimage): the cache's experts run once per image at start, tiled
(--val-tile, default the cache's patch size; --val-overlap 16) with overlap blending, then each validation runs
only the fusion model; rows fused, each expert, matlab_bicubic. --eval-only validates the starting weights
(--init-run or --resume) and exits: the numbers `srcache eval DIR --cache DATA --tile T --run RUN` prints. TensorBoard
events in RUN/tb when the `tensorboard` package is importable (otherwise a line says it is skipped). At the end
RUN/fusion.pt + fusion.json: what `srcache eval --run RUN` and `srcache infer --run RUN` load.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .dataset import CacheDataset
from .fullimage import FullImageVal
from .fusion import FusionConfig, FusionNet, upsample_bicubic
from .metrics import psnr_y, ssim_y, to_rgb8
from .torch import SRCacheDataset, collate, to_float

__all__ = ["main", "split_by_source", "validate", "parse_args"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m srcache.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="cache directory or merged root")
    ap.add_argument("--out", required=True, help="run directory (new, or existing with --resume)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/latest")
    ap.add_argument("--init-run", help="start from the EMA weights of a `srcache train` run (its [model] config)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--crop", type=int, default=None, help="LR crop side (default: the whole cached patch)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank (persistent)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--loss", choices=["charbonnier", "l1"], default="charbonnier")
    ap.add_argument("--head", choices=["gating", "frequency", "delta"], default="gating")
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--feat-proj", type=int, default=8)
    ap.add_argument("--no-feats", action="store_true", help="fuse expert outputs only")
    ap.add_argument("--edge-refine", action="store_true")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="of source images, split as `srcache train`")
    ap.add_argument("--val-max-samples", type=int, default=64)
    ap.add_argument("--val-dir", action="append", default=[], metavar="DIR",
                    help="benchmark folder for full-image validation (repeatable), as `val_dirs` of srcache train")
    ap.add_argument("--val-tile", type=int, default=0, help="expert tile side in LR pixels (0: the cache's patch size)")
    ap.add_argument("--val-overlap", type=int, default=16, help="expert tile overlap in LR pixels")
    ap.add_argument("--val-max-images", type=int, default=0, help="per --val-dir folder, first by name (0: all)")
    ap.add_argument("--eval-only", action="store_true", help="validate the starting weights once and exit")
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (DDP: cuda:LOCAL_RANK)")
    ap.add_argument("--no-amp", action="store_true", help="no fp16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads per rank")
    ap.add_argument("--no-export", action="store_true")
    return ap.parse_args(argv)


def split_by_source(data, fraction, seed):
    """(train, held-out) sample indices, exactly as Rust `train::Split::of`: the distinct sources ranked by
    (seeded FNV-1a of the name, name); the first round(fraction * n) held out, clamped to 1..n-1 when
    fraction > 0 and n >= 2; none with a single source."""
    mask = (1 << 64) - 1

    def fnv(src):
        h = 0xCBF29CE484222325 ^ (seed & mask)
        for c in src.encode():
            h = ((h ^ c) * 0x100000001B3) & mask
        return h

    sources = data.manifest.column("source").to_pylist()
    uniq = sorted(set(sources))
    n = len(uniq)
    k = min(max(int(fraction * n + 0.5), 1), n - 1) if fraction > 0 and n >= 2 else 0
    held = set(sorted(uniq, key=lambda s: (fnv(s), s))[:k])
    tr = [i for i, s in enumerate(sources) if s not in held]
    va = [i for i, s in enumerate(sources) if s in held]
    return tr, va


@torch.no_grad()
def validate(net, ds, indices, device, max_samples=64):
    """Rust `validate::held_out`: whole cached patches, no transform; rows fused, each expert, bicubic."""
    net.eval()
    idx = list(indices)[: max(1, max_samples)]
    crop = net.scale
    acc = [[0.0, 0.0] for _ in range(len(net.experts) + 2)]
    for i in idx:
        s = to_float({k: (v.unsqueeze(0) if torch.is_tensor(v) else [t.unsqueeze(0) for t in v])
                      for k, v in ds.get(i, 0, 0, min(ds.plan.h, ds.plan.w), 0).items()}, device)
        lr_up = upsample_bicubic(s["lr"], net.scale)
        fused = net.fuse(lr_up, s["sr"], s["feat"])
        hr = to_rgb8(s["hr"][0])
        for k, c in enumerate([fused, *s["sr"], lr_up]):
            x = to_rgb8(c[0])
            acc[k][0] += min(psnr_y(x, hr, crop), 100.0)
            acc[k][1] += ssim_y(x, hr, crop)
    names = ["fused", *net.experts, "torch_bicubic"]  # the Rust trainer's held-out table, row for row
    n = max(len(idx), 1)
    return {"source": "held-out", "samples": len(idx),
            "rows": [{"name": m, "psnr": p / n, "ssim": q / n} for m, (p, q) in zip(names, acc)]}


def _table(t, step=None):
    what = f"{t['samples']} held-out samples" if t["source"] == "held-out" else f"{t['source']}: {t['samples']} full images"
    lines = [] if step is None else [f"validation at step {step}"]
    lines.append(f"{'method':<24} {'PSNR':>9} {'SSIM':>8}   ({what}, Y, crop=scale)")
    lines += [f"{r['name']:<24} {r['psnr']:>9.3f} {r['ssim']:>8.4f}" for r in t["rows"]]
    return "\n".join(lines)


def _validate_all(a, ema, ds, val_idx, full, device, step, out, tb):
    """Rank 0: held-out patches and full images; printed, RUN/val.json, TensorBoard."""
    held = validate(ema, ds, val_idx, device, a.val_max_samples) if val_idx else None
    tables = full.evaluate(ema, device) if full is not None else []
    print(f"validation at step {step}", flush=True)
    for t in ([held] if held else []) + tables:
        print(_table(t), flush=True)
    (out / "val.json").write_text(json.dumps({"step": step, "held_out": held, "full": tables}, indent=2))
    if tb:
        for t in ([held] if held else []) + tables:
            tag = "" if t is held else f"{t['source']}/"
            for r in t["rows"]:
                tb.add_scalar(f"val/{tag}psnr/{r['name']}", r["psnr"], step)
                tb.add_scalar(f"val/{tag}ssim/{r['name']}", r["ssim"], step)
    return held, tables


def lr_at(a, step):
    """Linear warm-up, then cosine from --lr down to --min-lr over the remaining steps (as the Rust trainer)."""
    if step < a.warmup:
        return a.lr * (step + 1) / max(a.warmup, 1)
    t = (step - a.warmup) / max(a.steps - a.warmup, 1)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _save_atomic(obj, path):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _tensorboard(out, rank):
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        print(f"tensorboard: skipped ({e.name or 'tensorboard'} is not installed; pip install tensorboard)", flush=True)
        return None
    print(f"tensorboard: {out / 'tb'}", flush=True)
    return SummaryWriter(str(out / "tb"))


def _claim(out, resume):
    out.mkdir(parents=True, exist_ok=True)
    has_run = (out / "ckpt").exists()
    others = sorted(p.name for p in out.iterdir() if p.name not in ("ckpt", "tb", "val.json", "fusion.pt", "fusion.json", "args.json"))
    if others:
        raise SystemExit(f"{out}: holds {others[0]!r}, which is not a run file: choose a new or empty run directory")
    if has_run and not resume:
        raise SystemExit(f"{out}: already holds a run: add --resume to continue it, or choose a new run directory")


def main(argv=None):
    a = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and a.device != "cpu"
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: CUDA is not available to this torch")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + rank)
    out = Path(a.out)
    if rank == 0:
        _claim(out, a.resume)
    if world > 1:
        dist.barrier()

    data = CacheDataset(a.data)
    ds = SRCacheDataset(data, crop=a.crop, dihedral=True, seed=a.seed, load_feats=not a.no_feats)
    train_idx, val_idx = split_by_source(data, a.val_fraction, a.seed)
    sampler = ds.sampler(shuffle=True, num_replicas=world, rank=rank, indices=train_idx)
    if a.init_run:
        net = FusionNet.from_run(a.init_run)
        if net.experts != ds.experts or net.scale != ds.scale:
            raise SystemExit(f"{a.init_run}: fuses {net.experts} at x{net.scale}, the cache has {ds.experts} at x{ds.scale}")
    else:
        net = FusionNet(FusionConfig(head=a.head, experts=ds.experts, feat_channels=ds.feat_channels, use_feats=not a.no_feats,
                                     feat_proj=a.feat_proj, width=a.width, blocks=a.blocks, scale=ds.scale, edge_refine=a.edge_refine))
    net.to(device)
    ema = FusionNet(net.cfg).to(device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local] if cuda else None) if world > 1 else net
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=a.weight_decay)
    amp = cuda and not a.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    step = 0
    ckdir = out / "ckpt"
    if a.resume and (ckdir / "latest").is_file():
        ck = torch.load(ckdir / (ckdir / "latest").read_text().strip(), map_location=device, weights_only=False)
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        scaler.load_state_dict(ck["scaler"])
        ds.load_state_dict(ck["data"])
        step = ck["step"]
        if rank == 0:
            print(f"resumed from step {step} (epoch {sampler.epoch}, {sampler.consumed} samples of it consumed)", flush=True)
    # Persistent workers keep their dataset copy (and its open shards) across epochs; the epoch reaches them
    # through the sampler's (epoch, index) pairs.
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, num_workers=a.workers, collate_fn=collate,
                                     persistent_workers=a.workers > 0, pin_memory=cuda, drop_last=True)
    if len(sampler) // a.batch == 0 and sampler.num_samples // a.batch == 0:
        raise SystemExit(f"{a.data}: {sampler.num_samples} training samples per rank cannot fill a batch of {a.batch}")
    full = None
    if rank == 0 and a.val_dir:
        t0 = time.perf_counter()
        try:
            full = FullImageVal.prepare(a.val_dir, data, ema, tile=a.val_tile, overlap=a.val_overlap,
                                        max_images=a.val_max_images, device=device)
        except (OSError, ValueError) as e:
            raise SystemExit(f"full-image validation: {e}")
        for path, why in full.skipped:
            print(f"full-image validation: skipped {path}: {why}", flush=True)
        print(f"full-image validation: {full.images()} images in {len(a.val_dir)} folders, experts run once "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    if world > 1:
        dist.barrier()
    tb = _tensorboard(out, rank)
    if rank == 0:
        (out / "args.json").write_text(json.dumps(vars(a), indent=2))
        print(f"{len(train_idx)} training / {len(val_idx)} held-out samples, experts {ds.experts}, world {world}, "
              f"{sum(p.numel() for p in net.parameters())} params, {device}, amp {amp}", flush=True)
    losses, t_log, n_log, val = [], time.perf_counter(), 0, None
    if a.eval_only or step >= a.steps:
        # Nothing to train (--eval-only, --steps 0, or a resumed run already at --steps): the starting weights' numbers.
        if rank == 0 and (val_idx or a.val_dir):
            val = _validate_all(a, ema, ds, val_idx, full, device, step, out, tb)
        if world > 1:
            dist.barrier()
    if a.eval_only:
        if tb:
            tb.close()
        if world > 1:
            dist.destroy_process_group()
        return 0
    resumed_mid_epoch = sampler.consumed > 0
    while step < a.steps:
        if not resumed_mid_epoch:
            sampler.set_epoch(sampler.epoch + (1 if step > 0 or sampler.consumed else 0))
        resumed_mid_epoch = False
        for b in dl:
            sampler.advance(b)
            f = to_float(b, device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(a, step)
            net.train()
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out_img = model(lr=f["lr"], sr=f["sr"], feat=f["feat"])
            d = out_img.float() - f["hr"]
            loss = d.abs().mean() if a.loss == "l1" else torch.sqrt(d * d + 1e-6).mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip if a.clip > 0 else float("inf"))
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters()):
                    pe.mul_(a.ema).add_(p.detach(), alpha=1.0 - a.ema)
            step += 1
            losses.append(loss.item())
            n_log += f["lr"].shape[0] * world
            last = step == a.steps
            if rank == 0 and (last or step % a.log_every == 0):
                sps = n_log / max(time.perf_counter() - t_log, 1e-9)
                print(f"step {step} loss {losses[-1]:.5f} lr {opt.param_groups[0]['lr']:.2e} grad_norm {float(gn):.4f} "
                      f"{sps:.1f} samples/s", flush=True)
                if tb:
                    tb.add_scalar("train/loss", losses[-1], step)
                    tb.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
                    tb.add_scalar("train/grad_norm", float(gn), step)
                    tb.add_scalar("train/samples_per_s", sps, step)
                t_log, n_log = time.perf_counter(), 0
            if (val_idx or a.val_dir) and (last or (a.val_every > 0 and step % a.val_every == 0)):
                if rank == 0:
                    val = _validate_all(a, ema, ds, val_idx, full, device, step, out, tb)
                if world > 1:
                    dist.barrier()
            if last or (a.ckpt_every > 0 and step % a.ckpt_every == 0):
                if rank == 0:
                    ckdir.mkdir(exist_ok=True)
                    name = f"step-{step:08d}.pt"
                    _save_atomic({"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                                  "scaler": scaler.state_dict(), "data": ds.state_dict(), "step": step,
                                  "config": net.cfg.to_dict()}, ckdir / name)
                    tmp = ckdir / f".latest.tmp-{os.getpid()}"
                    tmp.write_text(name)
                    os.replace(tmp, ckdir / "latest")
                    for old in ckdir.glob("step-*.pt"):  # keep the newest only: this template's own files
                        if old.name != name:
                            old.unlink()
                if world > 1:
                    dist.barrier()
            if last:
                break
    if rank == 0 and not a.no_export:
        exp = ema.fold_pca(data) if any(data.pca(e) is not None for e in ema.feat_experts) else ema
        p = exp.export(out)
        print(f"exported {p} (+ fusion.json): srcache eval --run {out} / srcache infer --run {out}", flush=True)
    if tb:
        tb.close()
    if rank == 0:
        first, final = (sum(losses[:3]) / max(len(losses[:3]), 1), sum(losses[-3:]) / max(len(losses[-3:]), 1))
        print(f"done: {step} steps (this session: loss {first:.5f} -> {final:.5f})", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    from srcache.launch import run_and_exit

    run_and_exit(main)
