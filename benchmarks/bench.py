"""Throughput of this repository's implementation against a reference-style baseline, same run, same shapes
(not part of the test suite).

    python benchmarks/bench.py                              # CPU, small batches
    python benchmarks/bench.py --device cuda --json bench.json   # GPU, the papers' batch sizes

Workloads (random CIFAR-shaped data):
  fgr     one FGR training step, VGG-11, lambda 300 (CE + lambda R, double backward)
          ours: native grid_sample sampler (+ channels_last on CUDA); baseline: the authors' gather sampler, fp32
  gsem    one gradient-corrected train_gsem.py step, GSeM-ResNet-18: PGD-10 x EOT-10 on the even half of the batch
          plus 10 EOT weight passes; ours: batched attack EOT (+ bf16 autocast and channels_last on CUDA);
          baseline: the reference's sequential EOT loop, fp32
  pgd     one PGD step with EOT 20 on GSeM-ResNet-18 (evaluate_gsem.py's PGD500 step), eval mode; ours: batched EOT
          (+ channels_last on CUDA); baseline: 20 sequential forward/backward passes, fp32
  apgd    one APGD-CE iteration with EOT 20 (pyautoattack's class in both; ours adds channels_last on CUDA)
The baselines compute the GSeM correction with the same straight-through function as ours: the reference's pair of
tensor hooks computes the same gradient at no measurable cost, so the comparison isolates EOT batching, precision
and memory layout. Prints a markdown table naming the device (peak memory on CUDA) and optionally writes JSON with
one entry per workload holding both throughputs and their ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD  # noqa: E402
from attacks.autoattack_lib import apgd  # noqa: E402
from models import build_model  # noqa: E402
from utils.engine import train_step  # noqa: E402
from utils.losses import MixedAdversarialCE  # noqa: E402
from utils.regularizers import GradientRegularizedCE  # noqa: E402

CUDA_BATCH = {"fgr": 128, "gsem": 256, "pgd": 512, "apgd": 512}


def _setup(model_name, device, fast):
    torch.manual_seed(0)
    model = build_model(model_name, 10).to(device)
    if fast and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _timed(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    return sec, (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None)


def make_step(workload, device, fast, x, y):
    """A zero-argument function running one unit of ``workload`` (ours if ``fast`` else the baseline)."""
    amp = fast and device.type == "cuda"
    if workload == "fgr":
        model = _setup("vgg11", device, fast)
        crit = GradientRegularizedCE("fgr", 300.0, 0.01, sampler="native" if fast else "gather")
    elif workload == "gsem":
        model = _setup("GSeMResNet18", device, fast)
        crit = MixedAdversarialCE(PGD(model, 8 / 255, 2 / 255, 10, eot_iter=10, batched_eot=fast, amp=amp), 10)
    elif workload == "pgd":
        model = _setup("GSeMResNet18", device, fast).eval()
        attack = PGD(model, 8 / 255, 2 / 255, 1, eot_iter=20, batched_eot=fast)
        return lambda: attack(x, y)
    elif workload == "apgd":
        model = _setup("GSeMResNet18", device, fast).eval()
        attack = apgd(model, steps=1, restarts=1, eot_iter=20)
        return lambda: attack(x, y)
    else:
        raise ValueError(workload)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    return lambda: train_step(model, opt, crit, x, y, device, amp=amp)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--workloads", type=str, nargs="+", default=["fgr", "gsem", "pgd", "apgd"],
                   choices=["fgr", "gsem", "pgd", "apgd"])
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per step (default: 8 on CPU; 128/256/512/512 on CUDA, the papers' sizes)")
    p.add_argument("--steps", type=int, default=3, help="timed repetitions")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = {}
    for w in args.workloads:
        b = args.batch_size or (CUDA_BATCH[w] if device.type == "cuda" else 8)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(b, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (b,), generator=gen).to(device)
        row = {"batch_size": b}
        for side, fast in (("baseline", False), ("ours", True)):
            torch.manual_seed(0)
            sec, mem = _timed(make_step(w, device, fast, x, y), args.steps, args.warmup, device)
            row[side] = {"ms_per_step": 1000 * sec, "images_per_s": b / sec, "peak_mem_mib": mem}
        row["speedup"] = row["ours"]["images_per_s"] / row["baseline"]["images_per_s"]
        rows[w] = row
    cpu = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"\ndevice: {dev}, torch {torch.__version__}\n")
    mem_cols = " ours MiB | baseline MiB |" if device.type == "cuda" else ""
    print("| workload | batch | ours img/s | baseline img/s | speed-up |" + mem_cols)
    print("|---|---|---|---|---|" + ("---|---|" if device.type == "cuda" else ""))
    for w, r in rows.items():
        mem = f" {r['ours']['peak_mem_mib']:.0f} | {r['baseline']['peak_mem_mib']:.0f} |" if mem_cols else ""
        print(f"| {w} | {r['batch_size']} | {r['ours']['images_per_s']:.2f} | {r['baseline']['images_per_s']:.2f} | "
              f"{r['speedup']:.2f}x |{mem}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "args": vars(args), "workloads": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
