"""Checks srcache.torch.FusionNet against a run trained by `srcache train`, and writes what the Rust side checks.

    .venv/bin/python python/tests/check_fusion.py RUN CACHE DUMP OUT_RUN

* FusionNet.from_run(RUN) (config.toml [model], ckpt/latest/ema.safetensors) on a batch of whole cached patches
  equals RUN/fusion.pt (torch.jit.load) within 1e-5; with PCA features the folded model takes full features as
  fusion.pt does, and the unfolded one on the stored coefficients gives the same image;
* the template's validation (srcache.train.validate over the Rust trainer's held-out split) reproduces
  RUN/val.json: every expert and bicubic row to 1e-9 dB, the fused row to 1e-3 dB;
* fine-tuning a copy for 20 AdamW steps on random crops lowers the loss;
* the fine-tuned model exports (torch.jit.trace, fusion.pt's signature) into OUT_RUN (fusion.pt + fusion.json),
  which reloads in Python to within 1e-5.
DUMP receives safetensors for the Rust test: inputs.safetensors (lr_up, sr{k}, feat{k}: what the trainer's model
takes, PCA coefficients included), inputs_full.safetensors (full features: what fusion.pt takes), py_out (the
run's EMA model on inputs), ft.safetensors (fine-tuned weights under the VarStore names), ft_out (on inputs),
ft_full_out (the exported model on inputs_full). Prints `ok ...` lines; exits non-zero on the first failure.
"""
import copy
import json
import pathlib
import sys
import tomllib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from srcache.torch import FusionNet, SRCacheDataset, collate, to_float, upsample_bicubic  # noqa: E402
from srcache.train import split_by_source, validate  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def maxdiff(a, b):
    return float((a - b).abs().max())


def main():
    run, cache, dump, out_run = (pathlib.Path(p) for p in sys.argv[1:5])
    dump.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = FusionNet.from_run(run).eval()
    ds = SRCacheDataset(cache, dihedral=False, load_feats=True, experts=net.experts)
    pca = [ds.data.pca(e) for e in net.feat_experts]
    full = net.fold_pca(ds.data).eval()
    n = min(4, len(ds))
    b = to_float(collate([ds.get(i) for i in range(n)]))
    feats = [b["feat"][ds.feat_experts.index(e)] for e in net.feat_experts]
    feats_full = [f if p is None else p.reconstruct(f) for f, p in zip(feats, pca)]
    lr_up = upsample_bicubic(b["lr"], net.scale)
    names = net.input_names()
    # Rust traces fusion.pt at 16x16 LR, batch 1; tch's Haar slices record those sizes as constants, so a
    # frequency-head fusion.pt from `srcache train` only takes that size: compare it there, one sample at a time
    # (this package's export is size-agnostic: the Rust test runs it on whole patches, batch 4).
    side = 16 if net.cfg.head == "frequency" else None
    where = f"{n} {side}x{side} LR crops one by one (the traced size)" if side else f"{n} whole patches"
    c = to_float(collate([ds.get(i, 0, 0, side) for i in range(n)])) if side else b
    cf = [c["feat"][ds.feat_experts.index(e)] for e in net.feat_experts]
    cf = [f if p is None else p.reconstruct(f) for f, p in zip(cf, pca)]
    with torch.no_grad():
        module = torch.jit.load(str(run / "fusion.pt"))
        xs = [upsample_bicubic(c["lr"], net.scale), *c["sr"], *cf]
        # (and batch 1: the reshape in haar_idwt is recorded with the traced batch size too)
        want = torch.cat([module(*[x[k : k + 1] for x in xs]) for k in range(n)]) if side else module(*xs)
        got = full(lr=c["lr"], sr=dict(zip(net.experts, c["sr"])), feat=dict(zip(net.feat_experts, cf)))
        coef = net(lr_up=lr_up, sr=b["sr"], feat=feats)
        folded = full(lr_up=lr_up, sr=b["sr"], feat=feats_full)
    d = maxdiff(got, want)
    if d > 1e-5:
        fail(f"FusionNet.from_run differs from fusion.pt by {d:.3g} (> 1e-5)")
    if maxdiff(coef, folded) > 1e-4:
        fail(f"the model on PCA coefficients differs from the folded one by {maxdiff(coef, folded):.3g}")
    cfg = net.cfg
    print(f"ok FusionNet.from_run({run.name}) = fusion.pt within {d:.2g} on {where}: head {cfg.head}, width "
          f"{cfg.width}, blocks {cfg.blocks}, edge_refine {cfg.edge_refine}, inputs {names}"
          + (f", PCA k {[p.k if p else None for p in pca]} folded" if any(pca) else ""), flush=True)
    inputs = {"lr_up": lr_up.contiguous(), **{f"sr{k}": t.contiguous() for k, t in enumerate(b["sr"])},
              **{f"feat{k}": t.contiguous() for k, t in enumerate(feats)}}
    save_file(inputs, str(dump / "inputs.safetensors"))
    save_file(dict(inputs, **{f"feat{k}": t.contiguous() for k, t in enumerate(feats_full)}), str(dump / "inputs_full.safetensors"))
    save_file({"out": coef.contiguous()}, str(dump / "py_out.safetensors"))

    # The template's validation against the Rust trainer's last one (same split, same metric code path).
    conf = tomllib.loads((run / "config.toml").read_text())
    vj = run / "val.json"
    if vj.is_file():
        rust = json.loads(vj.read_text())["held_out"]
        _, va = split_by_source(ds.data, conf.get("val_fraction", 0.1), conf.get("seed", 0))
        py = validate(net, ds, va, torch.device("cpu"), conf.get("val_max_samples", 64))
        if py["samples"] != rust["samples"]:
            fail(f"held-out samples: template {py['samples']}, Rust {rust['samples']}")
        for r, p in zip(rust["rows"], py["rows"]):
            tol = 1e-3 if r["name"] == "fused" else 1e-9
            if r["name"] != p["name"] or abs(r["psnr"] - p["psnr"]) > tol or abs(r["ssim"] - p["ssim"]) > max(tol, 1e-9):
                fail(f"validation row {r} (Rust) vs {p} (template)")
        print(f"ok template validation = Rust val.json on {py['samples']} held-out samples: "
              + ", ".join(f"{p['name']} {p['psnr']:.4f}/{p['ssim']:.4f}" for p in py["rows"]), flush=True)
    else:
        print("skipped: template vs Rust validation (the run has no val.json: no held-out samples)", flush=True)

    # Fine-tune a copy on random crops.
    ft = copy.deepcopy(net).train()
    crop = max(ds.align, (min(ds.plan.h, ds.plan.w) * 2 // 3) // ds.align * ds.align)
    tds = SRCacheDataset(cache, crop=crop, dihedral=True, seed=1, experts=net.experts)
    tb = to_float(collate([tds[i] for i in range(min(8, len(tds)))]))
    opt = torch.optim.AdamW(ft.parameters(), lr=3e-5)
    losses = []
    for _ in range(20):
        d = ft(lr=tb["lr"], sr=tb["sr"], feat=[tb["feat"][tds.feat_experts.index(e)] for e in ft.feat_experts]) - tb["hr"]
        loss = torch.sqrt(d * d + 1e-6).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if not losses[-1] < losses[0]:
        fail(f"fine-tuning did not lower the loss: {losses}")
    print(f"ok fine-tuned 20 steps in PyTorch: charbonnier {losses[0]:.5f} -> {losses[-1]:.5f}", flush=True)
    ft.eval()
    ft.save_safetensors(dump / "ft.safetensors")
    ft_full = ft.fold_pca(ds.data).eval()
    exported = ft_full.export(out_run)
    with torch.no_grad():
        ft_out = ft(lr_up=lr_up, sr=b["sr"], feat=feats)
        ft_full_out = ft_full(lr_up=lr_up, sr=b["sr"], feat=feats_full)
        again = torch.jit.load(str(exported))(lr_up, *b["sr"], *feats_full)
    if maxdiff(again, ft_full_out) > 1e-5:
        fail(f"exported fusion.pt differs from the model by {maxdiff(again, ft_full_out):.3g}")
    spec = json.loads((out_run / "fusion.json").read_text())
    if spec["experts"] != net.experts or spec["scale"] != net.scale:
        fail(f"fusion.json {spec}")
    save_file({"out": ft_out.contiguous()}, str(dump / "ft_out.safetensors"))
    save_file({"out": ft_full_out.contiguous()}, str(dump / "ft_full_out.safetensors"))
    print(f"ok exported {exported} + fusion.json {spec}; reloaded = model within {maxdiff(again, ft_full_out):.2g}", flush=True)


if __name__ == "__main__":
    main()
