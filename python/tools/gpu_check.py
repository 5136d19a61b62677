#!/usr/bin/env python3
"""The GPU check of srcache (issue #11), run by scripts/gpu-check.sh on a CUDA machine in one go.

    python python/tools/gpu_check.py OUTDIR --bin SRCACHE_BIN [--device cuda:0] [--quick] [--pt2-wait S]

Needs only torch (CUDA build) and the stdlib: the experts are made here with random weights
(python/tools/gpu_archs.py, plain PyTorch), the srcache binary runs against this torch's lib/ (the wrapper sets
LD_LIBRARY_PATH). Every check records its figures and a pass/fail in OUTDIR/report.json and OUTDIR/report.md;
the exit status is non-zero if any check fails. `--device cpu --quick` runs the same checks on the CPU at
small sizes, which is how the script itself is tested on machines without a GPU (the figures then mean
nothing; the report says so).

Checks:
  doctor        the GPU(s), cuDNN and the CUDA build of torch are listed
  parity        RRDB (Real-ESRGAN x4plus size) and SwinIR-M through the device vs the CPU: fp32 max|diff| <= 1e-3,
                fp16 autocast PSNR >= 45 dB
  bench-cache   pipeline / forward-only >= 0.90, fp32 and fp16, batch 16 and 64, patch 64; the device's idle share
  two-devices   --devices D,D (two workers on one GPU) data-parallel and expert-split == the one-device shards
  sigkill       SIGKILL in the middle of a run, then the same command: == an uninterrupted run
  oom           a batch that cannot fit halves itself, the run completes, with a message
  bench-loader  loader-fed step time / in-memory batches <= 1.05 (default fusion model, batch 16, crop 48),
                shuffle_zstd shards and raw shards
  train-resume  train --device D with amp, then --resume: the loss curve continues
  eval          eval of that run on D within 0.01 dB of the same eval on the CPU
  pt2           the same RRDB and SwinIR as AOTInductor packages (.pt2, torch.export with dynamic batch and
                size) compiled for D in fp32, fp16 and bf16 (python/tools/make_gpu_experts.py --pt2): through
                srcache against the CPU's TorchScript f32 (fp32 max|diff| <= 1e-3, fp16 PSNR >= 45 dB, bf16
                PSNR recorded without a bar), forward timed beside the TorchScript expert (fp32 and fp16
                autocast) and, in Python, beside eager PyTorch at the package's dtype; export + compile times.
                The compiles run niced in the background from the oom check on, so they overlap the other
                checks; a package not compiled within --pt2-wait seconds after the last other check is
                skipped, with a note. On the CPU (--quick) the packages are the tiny widths (gpu_archs.TINY),
                fp32 and bf16 (the fp16 and CUDA packages: "skipped: no CUDA").

The oom check runs right after the experts are made, before the background compiles hold any device memory.
"""
import argparse
import atexit
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))  # python/tools
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)


class Check:
    def __init__(self, name):
        self.name, self.ok, self.figures, self.notes, self.seconds = name, None, {}, [], 0.0


class Runner:
    def __init__(self, args):
        self.args, self.out, self.checks = args, os.path.abspath(args.outdir), []
        self.dev = args.device
        self.log_path = os.path.join(self.out, "commands.log")

    def srcache(self, *argv, check=True, timeout=600, env=None):
        cmd = [self.args.bin, *map(str, argv)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        with open(self.log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}   # exit {p.returncode}, {time.time() - t0:.1f}s\n{p.stdout}{p.stderr}\n")
        if check and p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"srcache {argv[0]} failed (exit {p.returncode}): {' | '.join(tail)}")
        return p

    def run(self, name, fn):
        c = Check(name)
        t0 = time.time()
        try:
            fn(c)
            if c.ok is None:
                c.ok = True
        except Exception as e:  # a check that cannot run is a failed check, with the reason
            c.ok = False
            c.notes.append(f"error: {e}")
            with open(self.log_path, "a") as f:
                f.write(traceback.format_exc() + "\n")
        c.seconds = time.time() - t0
        self.checks.append(c)
        print(f"[gpu-check] {name:<13} {'PASS' if c.ok else 'FAIL'} ({c.seconds:.0f}s) {json.dumps(c.figures)[:300]} "
              f"{' '.join(c.notes)[:300]}", flush=True)
        self.write_report()

    def write_report(self):
        j = {"device": self.dev, "quick": self.args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
             "doctor": getattr(self, "doctor", None),
             "checks": [{"name": c.name, "ok": c.ok, "seconds": round(c.seconds, 1), "figures": c.figures,
                         "notes": c.notes} for c in self.checks]}
        with open(os.path.join(self.out, "report.json"), "w") as f:
            json.dump(j, f, indent=2)
        gpus = ", ".join(g.get("name") or g["device"] for g in (j["doctor"] or {}).get("cuda_devices", [])) or "none"
        lines = [f"# srcache GPU check ({j['date']})", "",
                 f"device {self.dev}; GPUs: {gpus}; torch {(j['doctor'] or {}).get('torch', '?')}"
                 + ("; QUICK CPU MODE: figures are not GPU figures" if self.args.quick else ""), "",
                 "| check | result | seconds | figures | notes |", "|---|---|---|---|---|"]
        for c in self.checks:
            figs = "; ".join(f"{k}={v}" for k, v in c.figures.items())
            lines.append(f"| {c.name} | {'PASS' if c.ok else 'FAIL'} | {c.seconds:.0f} | {figs} | {' '.join(c.notes)} |")
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quick", action="store_true", help="small sizes (testing the script on a CPU)")
    ap.add_argument("--pt2-wait", type=float, default=None,
                    help="seconds the pt2 check waits for unfinished compiles after the other checks (default 150 on "
                         "a GPU, 600 with --quick)")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    r = Runner(args)
    work = os.path.join(r.out, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    q = args.quick
    patch = 16 if q else 64
    experts_dir = os.path.join(work, "experts")
    cuda = args.device.startswith("cuda")

    def doctor(c):
        d = json.loads(r.srcache("doctor", "--json").stdout)
        r.doctor = d
        c.figures = {"gpus": [g.get("name") for g in d["cuda_devices"]], "cudnn": d["cudnn"], "cuda_build": d["cuda_build"],
                     "torch": d["torch"]}
        if cuda:
            missing = [k for k, ok in (("a CUDA device", d["cuda_devices"]), ("cuDNN", d["cudnn"]),
                                       ("a CUDA build of torch", d["cuda_build"])) if not ok]
            if missing:
                c.ok = False
                c.notes.append("doctor does not list " + ", ".join(missing))

    r.run("doctor", doctor)
    if cuda and not (getattr(r, "doctor", None) or {}).get("cuda_devices"):
        print("[gpu-check] no CUDA device: the remaining checks need one (see report.md)", flush=True)
        return 1

    def make_experts(c):
        cmd = [sys.executable, os.path.join(HERE, "make_gpu_experts.py"), experts_dir, "--size", str(patch),
               "--device", "cuda" if cuda else "cpu"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        with open(r.log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}   # exit {p.returncode}\n{p.stdout}{p.stderr}\n")
        if p.returncode != 0:
            raise RuntimeError("make_gpu_experts.py failed: " + " | ".join(p.stderr.strip().splitlines()[-3:]))
        make_memhog(os.path.join(experts_dir, "memhog.pt"), 8 << 20 if q else 4 << 30)
        c.figures = {k: v.get("params") for k, v in read_json(os.path.join(experts_dir, "experts.json")).get("experts", {}).items()} \
            if isinstance(read_json(os.path.join(experts_dir, "experts.json")).get("experts"), dict) else {}

    r.run("experts", make_experts)
    rrdb, swinir, memhog = (os.path.join(experts_dir, n) for n in ("rrdb.pt", "swinir.pt", "memhog.pt"))
    pair = ["--expert", f"rrdb={rrdb}", "--expert", f"swinir={swinir}"]

    photos = os.path.join(REPO, "ingest", "assets", "photos")

    def oom(c):
        out = os.path.join(work, "oom")
        p = r.srcache("cache", "--hr", photos, "--scale", 4, "--patch", patch, "--out", out, "--quiet", "--batch", 64,
                      "--expert", f"hog={memhog}", "--devices", args.device, check=False, timeout=900)
        msgs = [l for l in (p.stdout + p.stderr).splitlines() if "out of memory" in l]
        c.figures = {"exit": p.returncode, "messages": msgs[:6]}
        if not cuda:
            c.notes.append("not applicable on the CPU (nothing runs out of memory at this size)")
            c.ok = p.returncode == 0
        elif p.returncode != 0 or not any("retrying with batch" in m for m in msgs):
            c.ok = False
            c.notes.append("expected a completed run with 'retrying with batch' messages")

    r.run("oom", oom)

    try:
        pt2_jobs = start_pt2(r, experts_dir, patch, cuda, q)
    except Exception as e:  # reported by the pt2 check at the end; the other checks still run
        pt2_jobs = {"t0": time.time(), "procs": [], "skipped": [], "error": f"could not start the compiles: {e}"}
    atexit.register(stop_pt2, pt2_jobs)  # never leave a compile running, whatever happens below

    def parity(c):
        js = os.path.join(work, "parity.json")
        r.srcache("bench", "parity", *pair, "--device", args.device, "--patch", patch, "--patches", 4 if q else 8, "--json", js)
        for e in read_json(js)["experts"]:
            c.figures[e["expert"]] = {"fp32_max_abs": e["fp32_max_abs_diff_sr"], "feat_max_abs": e["fp32_max_abs_diff_feat"],
                                      "fp16_psnr_db": e["fp16_psnr_sr_db"]}
            if e["fp32_ok"] is False or e["fp16_ok"] is False:
                c.ok = False

    r.run("parity", parity)

    def bench_cache(c):
        runs = [(False, 16), (True, 16), (False, 64), (True, 64)] if not q else [(False, 4)]
        for fp16, batch in runs:
            if fp16 and not cuda:
                continue
            js = os.path.join(work, f"bench-cache-{'fp16' if fp16 else 'fp32'}-{batch}.json")
            extra = ["--fp16"] if fp16 else []
            r.srcache("bench", "cache", *pair, "--devices", args.device, "--scale", 4, "--patch", patch, "--halo", 0, "--batch", batch,
                      "--samples", 64 if q else 1024, "--images", 2 if q else 12, *extra, "--json", js, timeout=900)
            j = read_json(js)
            key = f"{'fp16' if fp16 else 'fp32'}_b{batch}"
            idle = [round(d["idle_s"] / d["wall_s"], 3) if d["wall_s"] else None for d in j["device_times"]]
            c.figures[key] = {"pipeline_sps": round(j["pipeline_samples_s"], 1), "forward_sps": round(j["forward_only_samples_s"], 1),
                              "ratio": round(j["ratio"], 3), "idle_share": idle}
            if j["ratio"] < 0.90 and not q:  # a GPU bar: on the CPU (--quick) the figure is informative only
                c.ok = False
                c.notes.append(f"{key}: pipeline/forward {j['ratio']:.3f} < 0.90")

    r.run("bench-cache", bench_cache)

    cfg_path = os.path.join(work, "cache.toml")
    # On the GPU: ~240 samples of 64x64 (3 degradation variants), enough for the kill to land mid-run; on the CPU
    # (--quick) a few dozen 16x16 ones.
    inputs = (f'stride = {patch}\nlimit = 24\n' if q else f'stride = {patch // 4}\nvariants = ["clean", "blur:1.0", "noise:5"]\n')
    # halo = 0 (and bench cache --halo 0): swinir.pt is traced at the patch size, so it must see the bare patch.
    with open(cfg_path, "w") as f:
        f.write(f'[input]\nhr_dir = "{photos}"\nscale = 4\npatch = {patch}\nhalo = 0\n{inputs}'
                f'[[experts]]\nname = "rrdb"\npath = "{rrdb}"\n[[experts]]\nname = "swinir"\npath = "{swinir}"\n')

    def cache(out, *extra, check=True):
        return r.srcache("cache", "--config", cfg_path, "--out", out, "--quiet", "--batch", 4 if q else 8, "--shard-mb", 4, *extra,
                         check=check, timeout=900)

    one = os.path.join(work, "one")

    def two_devices(c):
        cache(one, "--devices", args.device)
        for mode, extra in (("data_parallel", ["--devices", f"{args.device},{args.device}"]),
                            ("expert_split", ["--devices", args.device, "--expert-split", "--expert", f"rrdb={rrdb}@{args.device}",
                                              "--expert", f"swinir={swinir}@{args.device}"])):
            out = os.path.join(work, mode)
            cache(out, *extra)
            p = r.srcache("diff", one, out, check=False)
            if p.returncode == 0:
                c.figures[mode] = "bit-identical"
            else:
                t = r.srcache("diff", one, out, "--tolerance", "1e-3", check=False)
                c.figures[mode] = "within 1e-3" if t.returncode == 0 else "DIFFERENT"
                if t.returncode != 0:
                    c.ok = False
                    c.notes.append(f"{mode}: {t.stdout.strip().splitlines()[:2]}")

    r.run("two-devices", two_devices)

    def sigkill(c):
        out = os.path.join(work, "killed")
        cmd = [args.bin, "cache", "--config", cfg_path, "--out", out, "--quiet", "--batch", "2", "--shard-mb", "1",
               "--devices", args.device]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed = False
        try:
            t0 = time.time()
            while time.time() - t0 < 300 and p.poll() is None:
                names = os.listdir(out) if os.path.isdir(out) else []
                if any(n.startswith("shard-") and n.endswith(".srs") for n in names):
                    break
                time.sleep(0.02)
            killed = p.poll() is None
        finally:
            # Whatever happened above, never leave the child running.
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        # The same command again (a different shard size or batch would be refused as a different cache).
        rerun = r.srcache(*cmd[1:], check=True, timeout=900)
        c.figures = {"killed_mid_run": killed, "resumed": "resumed" in rerun.stdout or "written" in rerun.stdout}
        d = r.srcache("diff", one, out, check=False)
        if d.returncode != 0:
            # Batches of 2 here, 4 or 8 in the reference: kernels may round differently per batch size.
            d = r.srcache("diff", one, out, "--tolerance", "1e-3", check=False)
            c.figures["vs_uninterrupted"] = "within 1e-3" if d.returncode == 0 else "DIFFERENT"
        else:
            c.figures["vs_uninterrupted"] = "bit-identical"
        if not killed:
            c.ok = False
            c.notes.append("the run finished before it could be killed")
        if d.returncode != 0:
            c.ok = False
            c.notes.append("result differs from the uninterrupted run: " + " ".join(d.stdout.strip().splitlines()[:2]))

    r.run("sigkill", sigkill)


    def bench_loader(c):
        for label, extra in (("shuffle_zstd", ["--zstd"]), ("raw", [])):
            js = os.path.join(work, f"bench-loader-{label}.json")
            r.srcache("bench", "loader", "--device", args.device, "--train-batch", 4 if q else 16, "--train-crop", 16 if q else 48,
                      "--samples", 16 if q else 96, "--batches", 4 if q else 24, "--train-steps", 3 if q else 20, *extra,
                      "--json", js, timeout=900)
            j = read_json(js)
            c.figures[label] = {"step_ratio": round(j["step_ratio"], 3), "loader_ms": round(j["step_loader_ms"], 2),
                                "in_memory_ms": round(j["step_synthetic_ms"], 2), "loader_sps": round(j["loader_samples_s"], 1),
                                "baseline_sps": round(j["baseline_samples_s"], 1)}
            if j["step_ratio"] > 1.05 and not q:  # a GPU bar: on the CPU (--quick) the figure is informative only
                c.ok = False
                c.notes.append(f"{label}: step ratio {j['step_ratio']:.3f} > 1.05")

    r.run("bench-loader", bench_loader)

    run_dir = os.path.join(work, "run")
    steps = 8 if q else 60

    def train_resume(c):
        tcfg = os.path.join(work, "train.toml")
        with open(tcfg, "w") as f:
            f.write(f"steps = {steps}\namp = true\nval_every = {steps // 2}\nckpt_every = {steps // 2}\nlog_every = 1\n"
                    f"[loader]\nbatch_size = 8\ncrop = {patch // 2}\n")
        r.srcache("train", "--data", one, "--out", run_dir, "--config", tcfg, "--device", args.device, "--steps", steps // 2)
        r.srcache("train", "--data", one, "--out", run_dir, "--config", tcfg, "--device", args.device, "--resume")
        with open(os.path.join(run_dir, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        got = [int(x["step"]) for x in rows]
        loss = [float(x["loss"]) for x in rows]
        c.figures = {"steps": len(got), "first_loss": loss[0] if loss else None, "last_loss": loss[-1] if loss else None,
                     "loss_at_resume": loss[steps // 2 - 1:steps // 2 + 1] if len(loss) > steps // 2 else None}
        if got != list(range(1, steps + 1)):
            c.ok = False
            c.notes.append(f"metrics.csv steps are not 1..{steps}: {got[:5]}...{got[-5:]}")
        elif not all(l == l for l in loss):
            c.ok = False
            c.notes.append("NaN loss")

    r.run("train-resume", train_resume)

    def evaluate(c):
        bench = os.path.join(work, "bench")
        os.makedirs(os.path.join(bench, "HR"), exist_ok=True)
        for n in ("chelsea.png", "rocket.png"):
            if q:
                # CPU quick mode: a 128x128 crop (the full photos through two 12-17M-parameter experts take
                # minutes on a CPU). Pillow is only needed here, never on the GPU machine.
                from PIL import Image
                Image.open(os.path.join(photos, n)).convert("RGB").crop((96, 64, 224, 192)).save(os.path.join(bench, "HR", n))
            else:
                shutil.copy(os.path.join(photos, n), os.path.join(bench, "HR", n))
        res = {}
        for dev in (args.device, "cpu"):
            js = os.path.join(work, f"eval-{dev.replace(':', '')}.json")
            r.srcache("eval", bench, "--cache", one, "--run", run_dir, "--device", dev, "--tile", patch, "--json", js, timeout=900)
            res[dev] = {x["method"]: x["psnr"] for x in read_json(js)}
        d = abs(res[args.device]["fused"] - res["cpu"]["fused"])
        c.figures = {"fused_psnr_device": res[args.device]["fused"], "fused_psnr_cpu": res["cpu"]["fused"], "abs_diff_db": d}
        if d > 0.01:
            c.ok = False
            c.notes.append(f"fused PSNR differs by {d:.4f} dB > 0.01")

    r.run("eval", evaluate)
    r.run("pt2", lambda c: finish_pt2(r, c, pt2_jobs, experts_dir, patch, cuda, q))
    failed = [c.name for c in r.checks if not c.ok]
    print(f"[gpu-check] {len(r.checks) - len(failed)} of {len(r.checks)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; report: {os.path.join(r.out, 'report.md')}", flush=True)
    return 1 if failed else 0


PT2_ARCHS = ("rrdb", "swinir")
MAKE = os.path.join(HERE, "make_gpu_experts.py")


def _log(r, cmd, p_out, rc, secs):
    with open(r.log_path, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}   # exit {rc}, {secs:.1f}s\n{p_out}\n")


def start_pt2(r, experts_dir, patch, cuda, quick):
    """Starts the .pt2 compiles, one niced process per (arch, dtype), and returns the jobs for finish_pt2. On a
    GPU: the real-size experts' weights (ARCH.weights.pt), fp32 / fp16 / bf16 packages for CUDA. On the CPU
    (--quick): tiny widths (their TorchScript twins made here first, in seconds), fp32 and bf16 CPU packages
    (a real-size CPU compile takes 5-12 minutes on 2 cores)."""
    jobs = {"t0": time.time(), "procs": [], "skipped": [], "error": None}
    if cuda:
        missing = [a for a in PT2_ARCHS if not os.path.exists(os.path.join(experts_dir, f"{a}.weights.pt"))]
        if missing:  # the experts check failed: its report says why
            jobs["error"] = f"no weights for {', '.join(missing)} (the experts check did not make them)"
            return jobs
        pt2_dir, plan = experts_dir, [(a, d) for a in PT2_ARCHS for d in ("fp32", "fp16", "bf16")]
    else:
        pt2_dir = os.path.join(experts_dir, "pt2-tiny")
        plan = [("rrdb", "fp32"), ("rrdb", "bf16"), ("swinir", "fp32")]
        jobs["skipped"] = [", ".join(f"{a}.fp16.pt2" for a in PT2_ARCHS) + " (half-precision convolutions): skipped: no CUDA",
                           "real-size CUDA packages (these are tiny CPU ones): skipped: no CUDA"]
        cmd = [sys.executable, MAKE, pt2_dir, "--size", str(patch), "--tiny"]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        _log(r, cmd, p.stdout + p.stderr, p.returncode, time.time() - t)
        if p.returncode != 0:
            jobs["error"] = "tiny experts: " + " | ".join(p.stderr.strip().splitlines()[-3:])
            return jobs
    jobs["dir"] = pt2_dir
    # Inductor's parallel compile workers, shared out; nice 19 so that the measured checks keep the CPU.
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(max(1, (os.cpu_count() or 2) // len(plan))))
    for arch, dt in plan:
        cmd = ["nice", "-n", "19", sys.executable, MAKE, pt2_dir, "--pt2", dt, "--arch", arch, "--device",
               "cuda" if cuda else "cpu", "--size", str(patch), "--batch", "2"] + (["--tiny"] if not cuda else [])
        log = open(os.path.join(pt2_dir, f"{arch}.{dt}.log"), "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        jobs["procs"].append({"arch": arch, "dtype": dt, "proc": p, "log": log, "cmd": cmd, "t0": time.time()})
    print(f"[gpu-check] pt2: {len(plan)} AOTInductor compiles started in the background (niced): "
          + ", ".join(f"{a}.{d}" for a, d in plan), flush=True)
    for s in jobs["skipped"]:
        print(f"[gpu-check] pt2: {s}", flush=True)
    return jobs


def stop_pt2(jobs):
    """Kills what is left of the compiles this script started (each in its own process group)."""
    for j in jobs.get("procs", []):
        if j["proc"].poll() is None:
            try:
                os.killpg(j["proc"].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            j["proc"].wait()
        j["log"].close()


def finish_pt2(r, c, jobs, experts_dir, patch, cuda, quick):
    if jobs["error"]:
        raise RuntimeError(jobs["error"])
    wait = r.args.pt2_wait if r.args.pt2_wait is not None else (600 if quick else 150)
    deadline = time.time() + wait
    done = []
    try:
        for j in jobs["procs"]:
            name = f"{j['arch']}.{j['dtype']}.pt2"
            try:
                rc = j["proc"].wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                c.notes.append(f"{name}: skipped: not compiled within {time.time() - j['t0']:.0f} s (--pt2-wait {wait:.0f})")
                continue
            j["log"].flush()
            with open(j["log"].name) as f:
                text = f.read()
            _log(r, j["cmd"], text, rc, time.time() - j["t0"])
            if rc != 0:
                c.ok = False
                c.notes.append(f"{name}: export failed (exit {rc}): " + " | ".join(text.strip().splitlines()[-2:])[:400])
                continue
            done.append((j["arch"], j["dtype"], read_json(os.path.join(jobs["dir"], name + ".json"))))
    finally:
        stop_pt2(jobs)
    c.figures["compile_wall_s"] = round(time.time() - jobs["t0"], 1)
    c.notes.extend(jobs["skipped"])
    if not done:
        c.ok = False
        c.notes.append("no package compiled: nothing measured")
        return
    d = jobs["dir"]
    argv = []
    for arch in sorted({a for a, _, _ in done}):
        ts = os.path.join(d, f"{arch}.pt")
        argv += ["--expert", f"{arch}_ts={ts}"]
        for a, dt, _ in done:
            if a == arch:
                argv += ["--expert", f"{arch}_{dt}={os.path.join(d, f'{arch}.{dt}.pt2')}", "--cpu-reference", f"{arch}_{dt}={ts}"]
    js = os.path.join(d, "parity-pt2.json")
    r.srcache("bench", "parity", *argv, "--device", r.dev, "--patch", patch, "--patches", 2 if quick else 8,
              "--time", 3 if quick else 20, "--json", js, timeout=900)
    rows = {e["expert"]: e for e in read_json(js)["experts"]}
    for arch, dt, info in done:
        e, ts = rows[f"{arch}_{dt}"], rows[f"{arch}_ts"]
        fig = {"fp32_max_abs": e["fp32_max_abs_diff_sr"], "export_s": info["export_s"], "compile_s": info["compile_s"],
               "ms": e["forward_ms"], "ts_ms": ts["forward_ms"], "py_eager_ms": round(info["eager_ms"], 2),
               "py_pt2_ms": round(info["pt2_python_ms"], 2)}
        if dt == "fp16":
            fig["psnr_db"] = e["fp16_psnr_sr_db"]
            fig["ts_autocast_ms"] = ts["fp16_autocast_forward_ms"]
        elif dt == "bf16":
            fig["psnr_db"] = e["bf16_psnr_sr_db"]
        c.figures[f"{arch}_{dt}"] = fig
        if e["fp32_ok"] is False or e["fp16_ok"] is False:
            c.ok = False
            c.notes.append(f"{arch}.{dt}.pt2: parity FAIL ({e['fp32_max_abs_diff_sr']:.2e} / {e['fp16_psnr_sr_db']} dB)")


def make_memhog(path, bytes_per_sample):
    """A TorchScript expert that holds `bytes_per_sample` of device memory per sample while it runs (then returns
    bicubic): a batch that cannot fit must make srcache halve it, whatever the GPU's size."""
    import torch

    class MemHog(torch.nn.Module):
        def __init__(self, per: int):
            super().__init__()
            self.per = per

        def forward(self, x):
            hog = torch.ones([x.shape[0], self.per], dtype=torch.float32, device=x.device)
            sr = torch.nn.functional.interpolate(x, scale_factor=4.0, mode="bicubic", align_corners=False)
            return sr + hog.sum() * 0.0, x

    torch.jit.script(MemHog(bytes_per_sample // 4)).save(path)


if __name__ == "__main__":
    sys.exit(main())
