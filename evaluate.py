"""Evaluate an FGR-trained classifier: clean accuracy and accuracy under adversarial deformations: the authors'
multi-step L-inf flow attack (default), stAdv and ADef.

    python evaluate.py --data_path your_path --data_name cifar10 --model_name vgg11 --fgr_lamb 300
    python evaluate.py ... --attacks flow stadv adef

The checkpoint is found from the same flags as main.py (``<weight_path>/<name>.pt``) or given with --checkpoint
(this repository's format or a bare reference state_dict). Writes ``<result_path>/<name>.json`` with ``val_acc``
and ``adv_acc`` (fractions, as the reference; ``adv_acc`` is the first listed attack's), one row per attack with its
settings and the deformation it needed (T-norm in pixels of the successful examples), and a markdown table beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.utils.data import DataLoader, Subset

from attacks import ADef, FlowAttack, StAdv
from models import build_model
from utils.checkpoint import file_sha256, load_checkpoint, load_model_state
from utils.cli import (add_fgr_model_args, add_run_args, check_model_name, fgr_run_name, nonneg_float,
                       positive_float, positive_int)
from utils.data import dataset_stats, fgr_transforms, load_dataset, num_classes
from utils import distributed as dist
from utils.engine import evaluate, fast_path, start_run
from utils.errors import cli_entry
from utils.flow import flow_norms_pixels, normalized_to_pixels


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fgr_model_args(p)
    add_run_args(p)
    p.add_argument("--checkpoint", type=str, default=None, help="checkpoint file (default <weight_path>/<name>.pt)")
    p.add_argument("--flow_eps", type=nonneg_float, default=0.01,
                   help="L-inf flow budget, normalised align_corners=True units (0.01 = 0.155 px at 32x32)")
    p.add_argument("--steps", type=positive_int, default=100, help="attack steps K (1 = single-step attack)")
    p.add_argument("--batch_size", type=positive_int, default=128)
    p.add_argument("--attacks", type=str, nargs="+", default=["flow"], choices=list(ATTACKS),
                   help="deformation attacks to run (default: flow, as the reference)")
    p.add_argument("--stadv_tau", type=nonneg_float, default=0.05, help="stAdv smoothness weight tau")
    p.add_argument("--stadv_steps", type=positive_int, default=100, help="stAdv L-BFGS iteration cap")
    p.add_argument("--adef_sigma", type=nonneg_float, default=0.5, help="ADef Gaussian smoothing, pixels")
    p.add_argument("--adef_overshoot", type=positive_float, default=1.2, help="ADef overshoot eta")
    p.add_argument("--adef_steps", type=positive_int, default=100, help="ADef iteration cap")
    p.add_argument("--adef_candidates", type=positive_int, default=9, help="ADef candidate classes per iteration")
    p.add_argument("--adef_max_norm", type=positive_float, default=None, help="ADef T-norm budget, pixels (none)")
    return p.parse_args(argv)


def _flow_attack(model, args, size):
    return FlowAttack(model, eps=args.flow_eps, steps=args.steps), {
        "eps": args.flow_eps, "eps_pixels": normalized_to_pixels(args.flow_eps, size), "steps": args.steps,
        "step_size": args.flow_eps / args.steps, "norm": "Linf", "units": "normalised align_corners=True (1 px = 2/(W-1))"}


def _stadv(model, args, size):
    return StAdv(model, tau=args.stadv_tau, steps=args.stadv_steps), {
        "tau": args.stadv_tau, "steps": args.stadv_steps, "kappa": 0.0, "targeted": False, "budget": None,
        "neighbours": 4, "optimizer": "L-BFGS (strong Wolfe)"}


def _adef(model, args, size):
    return ADef(model, sigma=args.adef_sigma, overshoot=args.adef_overshoot, steps=args.adef_steps,
                candidates=args.adef_candidates, max_norm=args.adef_max_norm), {
        "sigma_pixels": args.adef_sigma, "overshoot": args.adef_overshoot, "steps": args.adef_steps,
        "candidates": args.adef_candidates, "max_tnorm_pixels": args.adef_max_norm}


ATTACKS = {"flow": _flow_attack, "stadv": _stadv, "adef": _adef}


class _FlowRecorder:
    """Call an attack and keep the T-norm (pixels) of the flow it produced for each example."""

    def __init__(self, attack):
        self.attack, self.tnorms = attack, []

    def __call__(self, x, y):
        x_adv = self.attack(x, y)
        self.tnorms.append(flow_norms_pixels(self.attack.last_flow)["tnorm"].cpu())
        return x_adv


def write_table(path, record):
    lines = [f"`{record['name']}` ({record['n_examples']} test images, clean accuracy {100 * record['val_acc']:.2f}%)",
             "", "| attack | accuracy (%) | successful | T-norm of successful flows, px (mean / median) | settings |",
             "|---|---|---|---|---|"]
    for name, r in record["attacks"].items():
        tn = (f"{r['tnorm_px_mean']:.3f} / {r['tnorm_px_median']:.3f}" if r["n_success"] else "–")
        sets = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "units")
        lines.append(f"| {name} | {100 * r['acc']:.2f} | {r['n_success']} | {tn} | {sets} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@cli_entry
def main(args):
    args.model_name = check_model_name(args.model_name)
    device, say = start_run(args)
    name = fgr_run_name(args)
    path = args.checkpoint or os.path.join(args.weight_path, f"{name}.pt")
    ckpt = load_checkpoint(path, map_location="cpu")
    normalize = dataset_stats(args.data_name) if args.normalize else None
    model = build_model(args.model_name, num_classes(args.data_name), normalize=normalize)
    load_model_state(model, ckpt["model"], path, args.model_name)
    model = fast_path(model.to(device), device).eval()

    _, test_tf = fgr_transforms(args.augment)
    test_set = load_dataset(args.data_name, args.data_path, False, test_tf)
    if args.subset:
        test_set = Subset(test_set, range(min(args.subset, len(test_set))))
    n_examples = len(test_set)
    shard = Subset(test_set, list(dist.shard(n_examples)))  # under torchrun each rank attacks a contiguous block
    loader = DataLoader(shard, batch_size=args.batch_size, shuffle=False,
                        num_workers=min(args.workers, os.cpu_count() or 1))
    size = test_set[0][0].shape[-1]
    record = {"name": name, "val_acc": None, "adv_acc": None, "attacks": {}, "n_examples": n_examples,
              "checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
              "trained_epochs": ckpt.get("epoch"), "device": str(device), "args": vars(args)}
    for attack_name in args.attacks:
        attack, settings = ATTACKS[attack_name](model, args, size)
        recorder = _FlowRecorder(attack)
        t0 = time.time()
        acc, flags = evaluate(model, loader, device, {attack_name: recorder}, bar=not args.no_bar,
                              desc=attack_name, return_flags=True)
        success = flags["clean"] & ~flags[attack_name]  # correct before, fooled after
        tnorm = dist.all_gather_cat(torch.cat(recorder.tnorms))[success]
        record["val_acc"] = acc["clean"] / 100
        record["attacks"][attack_name] = {
            "acc": acc[attack_name] / 100, "settings": settings, "n_success": int(success.sum()),
            "tnorm_px_mean": tnorm.mean().item() if len(tnorm) else None,
            "tnorm_px_median": tnorm.median().item() if len(tnorm) else None, "seconds": time.time() - t0}
        if record["adv_acc"] is None:
            record["adv_acc"] = acc[attack_name] / 100
        if attack_name == "flow":
            record["attack"] = {"name": "flow", **settings}
        detail = (f"flow attack, eps {args.flow_eps} = {settings['eps_pixels']:.3f} px, {args.steps} steps"
                  if attack_name == "flow" else attack_name)
        if len(record["attacks"]) == 1:
            say(f"val   - acc: {record['val_acc']:.4f}", flush=True)
        median = record["attacks"][attack_name]["tnorm_px_median"]
        say(f"adv   - acc: {acc[attack_name] / 100:.4f}  ({detail}; median T-norm of successful flows "
              f"{'-' if median is None else f'{median:.3f} px'})", flush=True)
        out = os.path.join(args.result_path, f"{name}.json")
        if dist.is_main():
            os.makedirs(args.result_path, exist_ok=True)
            tmp = out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f, indent=2)
            os.replace(tmp, out)
            write_table(out[:-len(".json")] + ".md", record)
    say(f"wrote {out} and {out[:-len('.json')]}.md", flush=True)
    return record


if __name__ == "__main__":
    main(get_args())
