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
import os
import time

from attacks import AttackConfig, build_attack, list_attacks
from utils.checkpoint import file_sha256
from utils.cli import (add_fgr_model_args, add_run_args, check_model_name, fgr_run_name, nonneg_float,
                       positive_float, positive_int)
from utils.data import dataset_stats, fgr_transforms, num_classes
from utils.errors import cli_entry
from utils.evaluation import attack_accuracy, load_for_evaluation, test_loader
from utils.results import write_result
from utils.runtime import start_run


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fgr_model_args(p)
    add_run_args(p)
    p.add_argument("--checkpoint", type=str, default=None, help="checkpoint file (default <weight_path>/<name>.pt)")
    p.add_argument("--flow_eps", type=nonneg_float, default=0.01,
                   help="L-inf flow budget, normalised align_corners=True units (0.01 = 0.155 px at 32x32)")
    p.add_argument("--steps", type=positive_int, default=100, help="attack steps K (1 = single-step attack)")
    p.add_argument("--batch_size", type=positive_int, default=128)
    p.add_argument("--attacks", type=str, nargs="+", default=["flow"], choices=list_attacks(),
                   help="attacks to run, from the registry (default: flow, as the reference)")
    p.add_argument("--stadv_tau", type=nonneg_float, default=0.05, help="stAdv smoothness weight tau")
    p.add_argument("--stadv_steps", type=positive_int, default=100, help="stAdv L-BFGS iteration cap")
    p.add_argument("--adef_sigma", type=nonneg_float, default=0.5, help="ADef Gaussian smoothing, pixels")
    p.add_argument("--adef_overshoot", type=positive_float, default=1.2, help="ADef overshoot eta")
    p.add_argument("--adef_steps", type=positive_int, default=100, help="ADef iteration cap")
    p.add_argument("--adef_candidates", type=positive_int, default=9, help="ADef candidate classes per iteration")
    p.add_argument("--adef_max_norm", type=positive_float, default=None, help="ADef T-norm budget, pixels (none)")
    return p.parse_args(argv)


def attack_config(args, n_classes: int, image_size: int) -> AttackConfig:
    """The registry's configuration from this script's flags."""
    return AttackConfig(seed=args.seed, n_classes=n_classes, flow_eps=args.flow_eps, flow_steps=args.steps,
                        image_size=image_size, stadv_tau=args.stadv_tau, stadv_steps=args.stadv_steps,
                        adef_sigma=args.adef_sigma, adef_overshoot=args.adef_overshoot, adef_steps=args.adef_steps,
                        adef_candidates=args.adef_candidates, adef_max_norm=args.adef_max_norm)


def table(record) -> list[str]:
    lines = [f"`{record['name']}` ({record['n_examples']} test images, clean accuracy {100 * record['val_acc']:.2f}%)",
             "", "| attack | accuracy (%) | successful | T-norm of successful flows, px (mean / median) | settings |",
             "|---|---|---|---|---|"]
    for name, r in record["attacks"].items():
        tn = (f"{r['tnorm_px_mean']:.3f} / {r['tnorm_px_median']:.3f}" if r.get("tnorm_px_mean") is not None else "–")
        sets = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "units")
        lines.append(f"| {name} | {100 * r['acc']:.2f} | {r['n_success']} | {tn} | {sets} |")
    return lines


@cli_entry
def main(args):
    args.model_name = check_model_name(args.model_name)
    device, say = start_run(args)
    name = fgr_run_name(args)
    path = args.checkpoint or os.path.join(args.weight_path, f"{name}.pt")
    n_classes = num_classes(args.data_name)
    normalize = dataset_stats(args.data_name) if args.normalize else None
    model, ckpt, _ = load_for_evaluation(path, args.model_name, n_classes, device, normalize=normalize)
    loader, n_examples = test_loader(args.data_name, args.data_path, fgr_transforms(args.augment)[1], n=args.subset,
                                     batch_size=args.batch_size, workers=args.workers)
    cfg = attack_config(args, n_classes, loader.dataset[0][0].shape[-1])
    record = {"name": name, "val_acc": None, "adv_acc": None, "attacks": {}, "n_examples": n_examples,
              "checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
              "trained_epochs": ckpt.get("epoch"), "device": str(device), "args": vars(args)}
    out = os.path.join(args.result_path, f"{name}.json")
    for attack_name in args.attacks:
        attack, settings = build_attack(attack_name, model, cfg)
        t0 = time.time()
        r = attack_accuracy(model, loader, device, attack_name, attack, bar=not args.no_bar)
        success = r["clean_flags"] & ~r["flags"]  # correct before, fooled after
        row = {"acc": r["acc"] / 100, "settings": settings, "n_success": int(success.sum())}
        if "tnorm" in r:
            tnorm = r["tnorm"][success]
            row["tnorm_px_mean"] = tnorm.mean().item() if len(tnorm) else None
            row["tnorm_px_median"] = tnorm.median().item() if len(tnorm) else None
        row["seconds"] = time.time() - t0
        record["val_acc"] = r["clean"] / 100
        record["attacks"][attack_name] = row
        if record["adv_acc"] is None:
            record["adv_acc"] = row["acc"]
        if attack_name == "flow":
            record["attack"] = {"name": "flow", **settings}
        if len(record["attacks"]) == 1:
            say(f"val   - acc: {record['val_acc']:.4f}")
        detail = (f"flow attack, eps {args.flow_eps} = {settings['eps_pixels']:.3f} px, {args.steps} steps"
                  if attack_name == "flow" else attack_name)
        median = row.get("tnorm_px_median")
        flow_note = f"; median T-norm of successful flows {'-' if median is None else f'{median:.3f} px'}" \
            if "tnorm" in r else ""
        say(f"adv   - acc: {row['acc']:.4f}  ({detail}{flow_note})")
        md = write_result(out, record, table(record))
    say(f"wrote {out} and {md}")
    return record


if __name__ == "__main__":
    main(get_args())
