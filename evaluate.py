"""Evaluate an FGR-trained classifier: clean accuracy and accuracy under the authors' multi-step L-inf flow attack.

    python evaluate.py --data_path your_path --data_name cifar10 --model_name vgg11 --fgr_lamb 300

The checkpoint is found from the same flags as main.py (``<weight_path>/<name>.pt``) or given with --checkpoint
(this repository's format or a bare reference state_dict). Writes ``<result_path>/<name>.json`` with ``val_acc``
and ``adv_acc`` (fractions, as the reference) and the settings used.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from torch.utils.data import DataLoader, Subset

from attacks import FlowAttack
from models import build_model
from utils.checkpoint import file_sha256, load_checkpoint, load_model_state
from utils.cli import (add_fgr_model_args, add_run_args, check_model_name, fgr_run_name, format_args,
                       nonneg_float, positive_int, seed_everything)
from utils.data import dataset_stats, fgr_transforms, load_dataset, num_classes
from utils.engine import evaluate, resolve_device
from utils.errors import cli_entry
from utils.flow import normalized_to_pixels


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fgr_model_args(p)
    add_run_args(p)
    p.add_argument("--checkpoint", type=str, default=None, help="checkpoint file (default <weight_path>/<name>.pt)")
    p.add_argument("--flow_eps", type=nonneg_float, default=0.01,
                   help="L-inf flow budget, normalised align_corners=True units (0.01 = 0.155 px at 32x32)")
    p.add_argument("--steps", type=positive_int, default=100, help="attack steps K (1 = single-step attack)")
    p.add_argument("--batch_size", type=positive_int, default=128)
    return p.parse_args(argv)


@cli_entry
def main(args):
    args.model_name = check_model_name(args.model_name)
    print("args:", format_args(args), flush=True)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    name = fgr_run_name(args)
    path = args.checkpoint or os.path.join(args.weight_path, f"{name}.pt")
    ckpt = load_checkpoint(path, map_location="cpu")
    normalize = dataset_stats(args.data_name) if args.normalize else None
    model = build_model(args.model_name, num_classes(args.data_name), normalize=normalize)
    load_model_state(model, ckpt["model"], path, args.model_name)
    model.to(device).eval()

    _, test_tf = fgr_transforms(args.augment)
    test_set = load_dataset(args.data_name, args.data_path, False, test_tf)
    if args.subset:
        test_set = Subset(test_set, range(min(args.subset, len(test_set))))
    loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    attack = FlowAttack(model, eps=args.flow_eps, steps=args.steps)
    t0 = time.time()
    acc = evaluate(model, loader, device, {"flow": attack}, bar=not args.no_bar, desc=f"flow eps={args.flow_eps}")
    seconds = time.time() - t0
    size = test_set[0][0].shape[-1]
    print(f"val   - acc: {acc['clean'] / 100:.4f}", flush=True)
    print(f"adv   - acc: {acc['flow'] / 100:.4f}  (flow attack, eps {args.flow_eps} = "
          f"{normalized_to_pixels(args.flow_eps, size):.3f} px, {args.steps} steps)", flush=True)
    record = {
        "val_acc": acc["clean"] / 100, "adv_acc": acc["flow"] / 100,
        "attack": {"name": "flow", "eps": args.flow_eps, "eps_pixels": normalized_to_pixels(args.flow_eps, size),
                   "steps": args.steps, "step_size": args.flow_eps / args.steps, "norm": "Linf",
                   "units": "normalised align_corners=True (1 px = 2/(W-1))"},
        "n_examples": len(test_set), "checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
        "trained_epochs": ckpt.get("epoch"), "seconds": seconds, "device": str(device), "args": vars(args),
    }
    os.makedirs(args.result_path, exist_ok=True)
    out = os.path.join(args.result_path, f"{name}.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}", flush=True)
    return record


if __name__ == "__main__":
    main(get_args())
