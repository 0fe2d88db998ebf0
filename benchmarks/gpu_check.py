"""One prepared run for a lent GPU (15 minutes of device time, start included): every script end to end on CUDA, the
papers' workloads timed against the reference-style baseline, and what a paper table costs in GPU-hours.

    python benchmarks/gpu_check.py --device cuda --json gpu_check.json      # within --budget_s (8 minutes)
    python benchmarks/gpu_check.py --device cpu --smoke --json out.json     # seconds: the test suite runs this

1. The six scripts run end to end at a tiny size on synthetic CIFAR-10 files (the official pickles, written here; no
   download) with their default fast path on the device (AMP where it is the default, channels_last, cudnn
   autotuning, the dataset on the device for main.py), plus ``torchrun --nproc_per_node 1 train_gsem.py`` (NCCL on
   CUDA, gloo on CPU). A failure is recorded with its last output lines and makes the exit code 1.
2. At the papers' batch sizes (``--smoke``: 2), with ``benchmarks/bench.py``'s workloads: one FGR VGG-11 step (128),
   one ``train_gsem.py`` step on GSeM-ResNet-18 and on GSeM-WRN-28-10 (256), one PGD500 step with EOT 20 and one APGD
   iteration with EOT 20 (512), ours beside the baseline, peak memory, FLOP/s and fraction of the measured peak; and
   the largest ``--eot_batch`` that fits (one PGD step with EOT 20 at batch 512, doubling until out of memory).
3. From the step times: an epoch (50,000 training images) and each paper table in device-hours: FGR's 4 lambdas x
   80 epochs; GSeM's 150 epochs x 5 reloads per model and dataset (training steps plus the per-epoch selection
   attack on 10,000 test images), and the evaluation suite on 10,000 images (PGD500, CW100, APGD500 and AA-10it at
   EOT 20, counted in image-gradient passes at the measured cost of one; an upper bound where restarts and later
   stages run only on the points still robust).
4. Everything goes to one JSON file (rewritten after each part, so an interrupted run keeps what it has) and a
   markdown summary is printed. The script checks its own clock and skips what would not finish in ``--budget_s``.
"""
from __future__ import annotations

import argparse
import functools
import glob
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import bench  # noqa: E402
from attacks import PGD  # noqa: E402
from synthetic import write_cifar10  # noqa: E402
from utils.results import write_json  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10/100 (SVHN is larger: 73,257 training images)
# image-gradient passes per test image of evaluate_gsem.py's default suite at EOT 20 (upper bounds: every restart and
# every stage on every point; the library runs them on the points still robust)
EVAL_PASSES = {"PGD500": 500 * 20, "CW100": 500 * 20, "APGD500": 500 * 50 * 20,
               "AA-10it": 10 * 20 + 9 * 10 * 20 + 9 * 10 * 20 + 5000 // 3}


class Run:
    """The report, rewritten to ``path`` after every part, and the clock."""

    def __init__(self, path, budget_s):
        self.path, self.deadline, self.t0 = path, time.time() + budget_s, time.time()
        self.report = {"scripts": {}, "timings": {}, "eot_batch": {}, "estimates": {}, "skipped": [], "failed": []}

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self):
        self.report["seconds"] = time.time() - self.t0
        if self.path:
            write_json(self.path, self.report)


def script_commands(data: str, out: str, smoke: bool) -> dict:
    """The tiny end-to-end runs: name -> argv (without the interpreter)."""
    n, b = ("16", "8") if smoke else ("512", "128")
    common = ["--data_path", data, "--no-verify_data", "--workers", "0", "--no_bar"]
    fgr = ["main.py", "--data_name", "cifar10", "--model_name", "vgg11", "--fgr_lamb", "300", "--epochs", "1",
           "--subset", n, "--batch_size", b, "--weight_path", f"{out}/w", "--result_path", f"{out}/r", *common]
    ckpt = f"{out}/w/cifar10_vgg11_fgr_300.0_rs_0.01_epochs1_batch_size{b}_subset{n}.pt"
    gsem = ["--dataset_name", "cifar10", "--epochs", "1", "--reload", "1", "--subset", n, "--batch_size", b,
            "--attack_steps", "2", "--att_eot_num", "2", "--gra_eot_num", "2", "--best_acc", "-1", "--model_save_path",
            f"{out}/m", *common]
    return {
        "main.py (FGR)": fgr,
        "evaluate.py": ["evaluate.py", "--checkpoint", ckpt, "--subset", "8" if smoke else "64", "--steps", "2",
                        "--attacks", "flow", "stadv", "adef", "--stadv_steps", "2", "--adef_steps", "2",
                        "--result_path", f"{out}/r", *common],
        "train_gsem.py": ["train_gsem.py", *gsem],
        "train_gsem_mart.py": ["train_gsem_mart.py", *gsem],
        "train_gsem_awp.py": ["train_gsem_awp.py", *gsem],
        "evaluate_gsem.py": ["evaluate_gsem.py", "--model_load_path", f"{out}/m/cifar10/GSeMResNet18_6_4_*_0.*.pt",
                             "--n_examples", "8" if smoke else "64", "--steps_scale", "0.01", "--att_eot_num", "2",
                             "--result_path", f"{out}/r", *common],
        "torchrun train_gsem.py": ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
                                   "train_gsem.py", *gsem[:-len(common)], "--model_save_path", f"{out}/ddp", *common],
    }


def run_scripts(run: Run, device: str, smoke: bool) -> None:
    work = tempfile.mkdtemp(prefix="gpu_check_")
    data = os.path.join(work, "data")
    write_cifar10(data, n_train=100 if smoke else 1000, n_test=50 if smoke else 200)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")} \
        if device == "cuda" else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for name, argv in script_commands(data, work, smoke).items():
        if run.left() < 30:
            run.report["skipped"].append(f"script {name}: out of time")
            continue
        argv = [a if "*" not in a else (sorted(glob.glob(a)) or [a])[0] for a in argv]
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=max(10, min(240, run.left() - 20)))
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out = 124, f"timed out after {e.timeout:.0f} s"
        run.report["scripts"][name] = {"rc": rc, "seconds": time.time() - t0,
                                       "tail": out.strip().splitlines()[-6:] if rc else out.strip().splitlines()[-1:]}
        if rc:
            run.report["failed"].append(f"script {name} (rc {rc})")
            print(f"FAILED: {name} (rc {rc}):\n" + "\n".join(run.report["scripts"][name]["tail"]), file=sys.stderr)
        else:
            print(f"ok: {name} ({time.time() - t0:.1f} s)")
        run.save()


def time_workloads(run: Run, device: torch.device, smoke: bool) -> None:
    k = {key: 2 for key in bench.RECIPE} if smoke else bench.RECIPE
    steps, warmup = (1, 0) if smoke else (3, 1)
    peaks = {}
    for name, workload, model, batch in (("fgr VGG-11", "fgr", "vgg11", 128), ("gsem GSeM-ResNet-18", "gsem",
                                         "GSeMResNet18", 256), ("gsem GSeM-WRN-28-10", "gsem", "GSeMWideResNet28x10",
                                         256), ("pgd EOT 20", "pgd", "GSeMResNet18", 512),
                                         ("apgd EOT 20", "apgd", "GSeMResNet18", 512)):
        if run.left() < 60:
            run.report["skipped"].append(f"timing {name}: out of time")
            continue
        try:
            row = bench.measure(workload, device, 2 if smoke else batch, k, steps, warmup, peaks, smoke=smoke,
                                model_name=model)
        except torch.cuda.OutOfMemoryError as e:
            run.report["failed"].append(f"timing {name}: out of memory ({str(e).splitlines()[0]})")
            torch.cuda.empty_cache()
            continue
        run.report["timings"][name] = row
        run.report["peak"] = {str(d).removeprefix("torch."): v for d, v in peaks.items()}
        print(f"timed: {name} ({row['ours']['images_per_s']:.1f} img/s ours, {row['speedup']:.2f}x)")
        run.save()


def largest_eot_batch(run: Run, device: torch.device, smoke: bool) -> None:
    """One PGD step with EOT 20 at batch 512 on GSeM-ResNet-18 with ``eot_batch`` doubling until out of memory."""
    b, eot = (2, 2) if smoke else (512, 20)
    model = bench._setup("GSeMResNet18", device, False).eval()
    x, y = torch.rand(b, 3, 32, 32, device=device), torch.randint(0, 10, (b,), device=device)
    sizes = [2, 4] if smoke else [1024, 2048, 4096, 8192, b * eot]
    found = {}
    for size in sizes:
        if run.left() < 30:
            run.report["skipped"].append(f"eot_batch {size}: out of time")
            break
        attack = PGD(model, 8 / 255, 2 / 255, 1, eot_iter=eot, batched_eot=True, eot_batch=size)
        try:
            sec, mem, _ = bench._timed_pair([functools.partial(attack, x, y)], 1 if smoke else 3, 1, device)[0]
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        found[size] = {"ms_per_step": 1000 * sec, "images_per_s": b / sec, "peak_mem_mib": mem}
    run.report["eot_batch"] = {"tried": sizes, "fits": found, "largest": max(found) if found else None}
    run.save()


def estimates(run: Run) -> None:
    """Device-hours of an epoch and of each paper table, from the measured step times (see the module docstring)."""
    t = run.report["timings"]
    out = {}
    if "fgr VGG-11" in t:
        r = t["fgr VGG-11"]
        epoch = math.ceil(TRAIN_IMAGES / r["batch_size"]) * r["ours"]["ms_per_step"] / 1000
        out["FGR epoch (VGG-11, CIFAR-10)"] = epoch / 3600
        out["FGR table: 4 lambdas x 80 epochs"] = 4 * 80 * epoch / 3600
    pgd = t.get("pgd EOT 20")
    if pgd:  # seconds per image-gradient pass of GSeM-ResNet-18 (one forward and backward of one image)
        per_pass = pgd["ours"]["ms_per_step"] / 1000 / (pgd["batch_size"] * pgd["inner_loops"]["eval_eot"])
        for label, model in (("GSeM-ResNet-18", "gsem GSeM-ResNet-18"), ("GSeM-WRN-28-10", "gsem GSeM-WRN-28-10")):
            if model not in t:
                continue
            r = t[model]
            ratio = r["flops_per_step"] / t["gsem GSeM-ResNet-18"]["flops_per_step"] if "gsem GSeM-ResNet-18" in t \
                else 1.0
            pass_cost = per_pass * ratio  # the WRN's pass costs what its FLOPs say, relative to ResNet-18's
            selection = TEST_IMAGES / 2 * 10 * 10 * pass_cost  # PGD-10 x EOT-10 on the even half of each test batch
            epoch = math.ceil(TRAIN_IMAGES / r["batch_size"]) * r["ours"]["ms_per_step"] / 1000 + selection
            out[f"GSeM epoch ({label}, CIFAR-10)"] = epoch / 3600
            out[f"GSeM training: 150 epochs x 5 reloads ({label}, one dataset)"] = 150 * 5 * epoch / 3600
            for attack, passes in EVAL_PASSES.items():
                out[f"evaluation {attack} on 10,000 images ({label}, upper bound)"] = \
                    TEST_IMAGES * passes * pass_cost / 3600
        run.report["pass_seconds_resnet18"] = per_pass
    run.report["estimates"] = out
    if run.report.get("smoke"):
        run.report["estimates_note"] = "--smoke: batch 2 and inner loops of 2, not the recipe; only shows it runs"
    run.save()


def markdown(report: dict) -> str:
    lines = [f"device: {report['device']}, torch {report['torch']}", "", "| script | rc | s |", "|---|---|---|"]
    lines += [f"| {k} | {v['rc']} | {v['seconds']:.1f} |" for k, v in report["scripts"].items()]
    lines += ["", *bench.table(report["timings"], report.get("peak", {}), torch.device(report["device_type"]))]
    eot = report.get("eot_batch", {})
    if eot:
        lines += ["", f"largest --eot_batch that fits: {eot.get('largest')} (tried {eot.get('tried')})"]
    lines += ["", "| estimate | device-hours |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in report["estimates"].items()]
    if report.get("estimates_note"):
        lines += ["", report["estimates_note"]]
    if report["skipped"] or report["failed"]:
        lines += ["", *(f"skipped: {s}" for s in report["skipped"]), *(f"FAILED: {s}" for s in report["failed"])]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="tiny sizes everywhere (seconds on a CPU)")
    p.add_argument("--budget_s", type=float, default=480.0, help="stop cleanly, writing what it has, after this")
    p.add_argument("--json", type=str, default="gpu_check.json", help="the report")
    p.add_argument("--skip_scripts", action="store_true", help="only the timings and estimates")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = Run(args.json, args.budget_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    run.report.update(device=name, device_type=device.type, torch=torch.__version__, cuda=torch.version.cuda,
                      smoke=args.smoke, args=vars(args),
                      cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None)
    run.save()
    if not args.skip_scripts:
        run_scripts(run, args.device, args.smoke)
    time_workloads(run, device, args.smoke)
    largest_eot_batch(run, device, args.smoke)
    estimates(run)
    print(markdown(run.report))
    if run.report["failed"]:
        raise SystemExit(1)
    return run.report


if __name__ == "__main__":
    main()
