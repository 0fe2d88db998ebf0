"""Cost of one training step of each GSeM objective relative to GSeM's mixed cross-entropy (not part of the suite).

    python benchmarks/objectives.py                 # CPU, GSeM-ResNet-18, batch 8, the recipe's inner loops
    python benchmarks/objectives.py --device cuda --batch_size 256

Each step is what train_gsem*.py run: ``train_gsem.objective`` (training attack, input policy, loss) inside
``utils.training.TrainStep`` with 10 EOT passes, AWP for ``+awp``. Median of ``--steps`` steps after one warm-up.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_gsem  # noqa: E402
from models import build_model  # noqa: E402
from train_gsem import objective  # noqa: E402
from utils.awp import AWP  # noqa: E402
from utils.training import TrainStep  # noqa: E402

OBJECTIVES = ["mixed", "pgd_at", "trades", "mart", "mart+awp"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="cpu", help="cpu or cuda")
    p.add_argument("--batch_size", type=int, default=8, help="images per step")
    p.add_argument("--steps", type=int, default=2, help="timed steps per objective (median reported)")
    p.add_argument("--smoke", action="store_true", help="inner loops of size 1, one step: checks that it runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    inner = ["--attack_steps", "1", "--att_eot_num", "1", "--gra_eot_num", "1"] if args.smoke else []
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    times = {}
    for name in OBJECTIVES:
        cfg = train_gsem.get_args(["--loss", name.split("+")[0], *inner])
        torch.manual_seed(0)
        model = build_model("GSeMResNet18", 10).to(device).train()
        awp = AWP(model, build_model("GSeMResNet18", 10).to(device), eot_iter=cfg.gra_eot_num) if "awp" in name \
            else None
        loss, make_input = objective(cfg, model)
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), loss,
                         make_input=make_input, eot_iter=cfg.gra_eot_num, awp=awp, amp=cfg.use_amp, device=device)
        runs = []
        for _ in range(1 if args.smoke else args.steps + 1):  # the first is a warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs[1:] or runs)
    print(f"device: {device}, GSeM-ResNet-18, batch {args.batch_size}, torch {torch.__version__}\n")
    print("| objective | s / step | relative to mixed |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / times['mixed']:.2f}x |")
    return times


if __name__ == "__main__":
    main()
