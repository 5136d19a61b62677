"""Checks of the `python -m srcache.train` template.

    .venv/bin/python python/tests/check_template.py RUN_STRAIGHT RUN_RESUMED
    .venv/bin/python python/tests/check_template.py --full TEMPLATE_VAL_JSON EVAL_JSON [RUST_VAL_JSON]

First form: both runs' final checkpoints (RUN/ckpt/latest): same step, same dataset position, and the same
model, EMA and optimizer tensors (exactly: same data order, same arithmetic).
Second form: the template's full-image validation (`--val-dir ... --eval-only`, its val.json) against
`srcache eval --json` of the same folders and run, and against the Rust trainer's own val.json `full` tables
when given: every folder, every method (fused, each expert, matlab_bicubic) within 0.01 dB PSNR and 1e-4 SSIM.
Prints `ok ...`; exits non-zero otherwise.
"""
import json
import pathlib
import sys

import torch


def latest(run):
    d = pathlib.Path(run) / "ckpt"
    return torch.load(d / (d / "latest").read_text().strip(), map_location="cpu", weights_only=False)


def flat(x, prefix=""):
    if torch.is_tensor(x):
        yield prefix, x
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            yield from flat(x[k], f"{prefix}.{k}")
    elif isinstance(x, (list, tuple)):
        for k, v in enumerate(x):
            yield from flat(v, f"{prefix}[{k}]")


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def compare(ours, theirs, what):
    """ours/theirs: {folder: {method: (psnr, ssim)}}; every method of ours present in theirs and close."""
    n, worst = 0, 0.0
    if set(ours) != set(theirs):
        fail(f"{what}: folders {sorted(ours)} vs {sorted(theirs)}")
    for folder, rows in ours.items():
        for m, (p, q) in rows.items():
            if m not in theirs[folder]:
                if m == "matlab_bicubic":  # eval leaves it out when an expert is MATLAB bicubic pixel for pixel
                    continue
                fail(f"{what}: {folder} has no row {m!r} (has {sorted(theirs[folder])})")
            tp, tq = theirs[folder][m]
            d = abs(p - tp)
            print(f"  {folder:<10} {m:<16} template {p:9.4f} dB {q:.5f}   {what} {tp:9.4f} dB {tq:.5f}   diff {d:.2e} dB")
            if not d <= 0.01 or not abs(q - tq) <= 1e-4:
                fail(f"{what}: {folder} {m}: template {p:.5f} dB / {q:.6f}, {what} {tp:.5f} dB / {tq:.6f}")
            worst, n = max(worst, d), n + 1
    return n, worst


def full_image():
    tpl = json.loads(pathlib.Path(sys.argv[2]).read_text())
    ours = {t["source"]: {r["name"]: (r["psnr"], r["ssim"]) for r in t["rows"]} for t in tpl.get("full") or []}
    if not ours:
        fail(f"{sys.argv[2]}: no full-image tables")
    ev = {}
    for r in json.loads(pathlib.Path(sys.argv[3]).read_text()):
        ev.setdefault(r["dataset"], {})[r["method"]] = (r["psnr"], r["ssim"])
    n, worst = compare(ours, ev, "eval")
    msg = f"ok template full-image validation = srcache eval: {n} rows within {worst:.2e} dB"
    if len(sys.argv) > 4:
        rv = json.loads(pathlib.Path(sys.argv[4]).read_text())
        rust = {t["source"]: {r["name"]: (r["psnr"], r["ssim"]) for r in t["rows"]} for t in rv.get("full") or []}
        n2, worst2 = compare(ours, rust, "rust")
        msg += f"; = Rust trainer val.json: {n2} rows within {worst2:.2e} dB"
    print(msg)


def main():
    if sys.argv[1] == "--full":
        return full_image()
    a, b = latest(sys.argv[1]), latest(sys.argv[2])
    if a["step"] != b["step"] or a["data"] != b["data"]:
        print(f"FAIL: step/data {a['step']} {a['data']} vs {b['step']} {b['data']}")
        sys.exit(1)
    n = 0
    for part in ("model", "ema", "opt"):
        ta, tb = dict(flat(a[part])), dict(flat(b[part]))
        if ta.keys() != tb.keys():
            print(f"FAIL: {part} keys differ")
            sys.exit(1)
        for k in ta:
            if not torch.equal(ta[k], tb[k]):
                print(f"FAIL: {part}{k} differs by {float((ta[k].double() - tb[k].double()).abs().max()):.3g}")
                sys.exit(1)
            n += 1
    print(f"ok resumed run = uninterrupted run at step {a['step']}: {n} model/EMA/optimizer tensors equal, data {a['data']}")


if __name__ == "__main__":
    main()
