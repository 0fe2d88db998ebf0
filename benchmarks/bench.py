"""Training-step benchmarks (not part of the test suite).

    python benchmarks/bench.py                       # CPU, small batch
    python benchmarks/bench.py --device cuda --batch_size 128 --json bench.json

Workloads (CIFAR-shaped random data, one SGD step each, train mode):
  plain        VGG-11 cross-entropy step (the lambda = 0 baseline)
  fgr-native   VGG-11, CE + lambda * R with the native grid_sample sampler (this repo's default where supported)
  fgr-gather   VGG-11, CE + lambda * R with the reference's gather-based sampler
  gsem-batched GSeM-ResNet-18 gradient-corrected step (train_gsem.py: PGD-10 x EOT-10 on half the batch, 10 EOT
               weight passes), attack EOT batched (one forward of 10 x B/2 images)
  gsem-looped  the same with the reference's sequential EOT loop in the attack
  pgd-batched  one PGD step with EOT 20 on GSeM-ResNet-18 (eval mode), the 20 noisy passes as one batched forward
  pgd-looped   the same as 20 sequential forward/backward passes (the reference's AdaptivePGD)
Prints a markdown table (images/s, ms per step, cost relative to the family's baseline: plain for the FGR rows,\ngsem-looped for the GSeM rows) and optionally writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402
from attacks import PGD  # noqa: E402
from utils.engine import train_step  # noqa: E402
from utils.losses import MixedAdversarialCE  # noqa: E402
from utils.regularizers import GradientRegularizedCE  # noqa: E402


def time_steps(model, criterion, x, y, steps, warmup, device):
    """Seconds per call of a training step (``criterion`` for ``train_step``) or, for an attack (a callable with a
    ``model`` attribute and no criterion protocol), per attack call; and peak CUDA memory."""
    if isinstance(criterion, PGD):
        def step():
            criterion(x, y)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()

        def step():
            train_step(model, opt, criterion, x, y, device)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return sec, mem


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workloads", type=str, nargs="+", default=["plain", "fgr-native", "fgr-gather"],
                   help="any of plain fgr-native fgr-gather gsem-batched gsem-looped pgd-batched pgd-looped")
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    def gsem(batched):
        def make(model):
            return MixedAdversarialCE(PGD(model, 8 / 255, 2 / 255, 10, eot_iter=10, batched_eot=batched), gra_eot=10)
        return "GSeMResNet18", make

    workloads = {
        "plain": ("vgg11", lambda m: GradientRegularizedCE("fgr", 0.0)),
        "fgr-native": ("vgg11", lambda m: GradientRegularizedCE("fgr", 300.0, 0.01, sampler="native")),
        "fgr-gather": ("vgg11", lambda m: GradientRegularizedCE("fgr", 300.0, 0.01, sampler="gather")),
        "gsem-batched": gsem(True),
        "gsem-looped": gsem(False),
        "pgd-batched": ("GSeMResNet18", lambda m: PGD(m, 8 / 255, 2 / 255, 1, eot_iter=20, batched_eot=True)),
        "pgd-looped": ("GSeMResNet18", lambda m: PGD(m, 8 / 255, 2 / 255, 1, eot_iter=20, batched_eot=False)),
    }
    rows = {}
    for name in args.workloads:
        model_name, make = workloads[name]
        torch.manual_seed(0)
        model = build_model(model_name, 10).to(device)
        sec, mem = time_steps(model, make(model), x, y, args.steps, args.warmup, device)
        rows[name] = {"ms_per_step": 1000 * sec, "images_per_s": args.batch_size / sec, "peak_mem_mib": mem}
    baselines = {"gsem": "gsem-looped", "pgd": "pgd-looped"}
    for name, r in rows.items():  # cost relative to the family's baseline: plain, gsem-looped, pgd-looped
        base = rows.get(baselines.get(name.split("-")[0], "plain"))
        r["relative"] = r["ms_per_step"] / base["ms_per_step"] if base else None
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nbatch {args.batch_size}, device: {dev}, torch {torch.__version__}\n")
    print("| workload | ms/step | images/s | x baseline |" + (" peak MiB |" if device.type == "cuda" else ""))
    print("|---|---|---|---|" + ("---|" if device.type == "cuda" else ""))
    for name, r in rows.items():
        mem = f" {r['peak_mem_mib']:.0f} |" if device.type == "cuda" else ""
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['images_per_s']:.1f} | {r['relative'] if r['relative'] is None else format(r['relative'], '.2f')} |{mem}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "args": vars(args), "workloads": rows}, f, indent=2)


if __name__ == "__main__":
    main()
