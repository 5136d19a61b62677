"""Reads a training run's TensorBoard events with TensorBoard's own reader and checks them against the run's
metrics.csv (every logged step: loss terms, lr, grad norm, throughput; validation columns) and val.json (every
table row), and that the last `val/sheet` image decodes to val_sheet.png's pixels.

usage: check_tensorboard.py RUN_DIR
Run by trainer/tests/outputs.rs after a real `srcache_trainer::train`.
"""

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path(sys.argv[1])
files = sorted((run / "tb").glob("events.out.tfevents.*"))
assert files, f"no event files in {run / 'tb'}"
acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags["scalars"]}
for t in tags["scalars"]:
    steps = [e.step for e in acc.Scalars(t)]
    assert len(steps) == len(set(steps)), f"{t}: a step appears twice: {steps}"


def close(a, b, rel, abs_):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


rows = list(csv.DictReader(open(run / "metrics.csv")))
assert rows, "metrics.csv has no rows"
# CSV column -> (tag, relative tolerance, absolute tolerance): the CSV rounds (lr 3 significant digits,
# grad norm 4 decimals, rates 2-3 decimals); TensorBoard stores f32.
columns = {
    "loss": ("loss/total", 1e-5, 2e-6),
    "charbonnier": ("loss/charbonnier", 1e-5, 2e-6),
    "l1": ("loss/l1", 1e-5, 2e-6),
    "ssim": ("loss/ssim", 1e-5, 2e-6),
    "fft": ("loss/fft", 1e-5, 2e-6),
    "edge": ("loss/edge", 1e-5, 2e-6),
    "wavelet": ("loss/wavelet", 1e-5, 2e-6),
    "lr": ("train/lr", 6e-3, 1e-12),
    "grad_norm": ("train/grad_norm", 1e-6, 6e-5),
    "steps_per_s": ("train/steps_per_s", 1e-6, 6e-4),
    "samples_per_s": ("train/samples_per_s", 1e-6, 6e-3),
    "val_psnr": ("val/psnr", 1e-6, 6e-5),
    "val_ssim": ("val/ssim", 1e-6, 6e-5),
    "val_best_expert_psnr": ("val/best_expert_psnr", 1e-6, 6e-5),
}
checked = 0
for col, (tag, rel, abs_) in columns.items():
    want = {int(r["step"]): float(r[col]) for r in rows if r[col] != ""}
    got = scalars.get(tag, {})
    assert set(got) == set(want), f"{tag}: steps {sorted(got)} in TensorBoard, {sorted(want)} in metrics.csv"
    for step, v in want.items():
        assert close(got[step], v, rel, abs_), f"{tag} at step {step}: TensorBoard {got[step]}, metrics.csv {v}"
        checked += 1
assert scalars["loss/total"], "no loss scalars"
assert scalars.get("val/psnr"), "no validation scalars"

# Every row of the last validation's tables (fused, each expert, bicubic), at its step.
val = json.load(open(run / "val.json"))
tables = ([val["held_out"]] if val.get("held_out") else []) + val.get("full", [])
for t in tables:
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in t["source"])
    for r in t["rows"]:
        for metric in ("psnr", "ssim"):
            tag = f"val_{name}/{metric}/{r['name']}"
            assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"
            assert close(scalars[tag][val["step"]], r[metric], 1e-6, 1e-4), (tag, scalars[tag], r[metric])
            checked += 1

assert "val/sheet" in tags["images"], f"no val/sheet image: {tags['images']}"
last = acc.Images("val/sheet")[-1]
assert last.step == val["step"], (last.step, val["step"])
tb_img = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
sheet = np.asarray(Image.open(run / "val_sheet.png").convert("RGB"))
assert (last.width, last.height) == (sheet.shape[1], sheet.shape[0]), (last.width, last.height, sheet.shape)
assert np.array_equal(tb_img, sheet), "the TensorBoard image differs from val_sheet.png"
print(f"ok: {len(files)} event file(s), {checked} values match metrics.csv/val.json, sheet {sheet.shape[1]}x{sheet.shape[0]}")
