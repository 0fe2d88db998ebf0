"""Evaluate an FGR-trained classifier: clean accuracy and accuracy under adversarial deformations: the authors'
multi-step L-inf flow attack (default), stAdv and ADef.

    python evaluate.py --data_path your_path --data_name cifar10 --model_name vgg11 --fgr_lamb 300
    python evaluate.py ... --attacks flow stadv adef

The checkpoint is found from the same flags as main.py (``<weight_path>/<name>.pt``) or given with --checkpoint
(this repository's format or a bare reference state_dict). The model, dataset, normalisation and preprocessing are
read from the checkpoint; a flag that contradicts it is an error. Results go to ``<result_path>/<checkpoint>.json``
and a markdown table beside it, one row per attack and settings, accumulating over runs (``flow`` is the authors'
attack at its settings on the whole test set; other settings get their own rows, e.g. ``flow [steps=1]``).
``val_acc`` and ``adv_acc`` are the reference's keys (fractions; ``adv_acc`` only from the ``flow`` row).
"""
from __future__ import annotations

import os
import time

from attacks import AttackConfig, build_attack, list_attacks
from utils.checkpoint import file_sha256, load_checkpoint
from utils.cli import (Parser, add_fgr_model_args, add_run_args, check_model_name, explicit_flags, fgr_run_name,
                       flow_budget, nonneg_float, positive_float, positive_int)
from utils.data import dataset_stats, fgr_transforms, num_channels, num_classes
from utils.errors import cli_entry
from utils.evaluation import adopt_checkpoint_settings, attack_accuracy, load_for_evaluation, test_loader
from utils.results import ResultFile, ensure_writable, row_label
from utils.runtime import start_run


def get_args(argv=None):
    p = Parser(__doc__)
    add_fgr_model_args(p)
    add_run_args(p)
    p.add_argument("--checkpoint", type=str, default=None, help="checkpoint file (default <weight_path>/<name>.pt)")
    p.add_argument("--flow_eps", type=flow_budget, default=0.01,
                   help="L-inf flow budget, normalised align_corners=True units (0.01 = 0.155 px at 32x32)")
    p.add_argument("--steps", type=positive_int, default=100, help="attack steps K (1 = single-step attack)")
    p.add_argument("--batch_size", type=positive_int, default=128, help="evaluation batch size")
    p.add_argument("--attacks", type=str, nargs="+", default=["flow"], choices=list_attacks(),
                   help="attacks to run, from the registry (default: flow, as the reference)")
    p.add_argument("--stadv_tau", type=nonneg_float, default=0.05,
                   help="stAdv smoothness weight tau where its per-example search starts (the paper's)")
    p.add_argument("--stadv_steps", type=positive_int, default=50, help="stAdv Adam iterations per search round")
    p.add_argument("--stadv_search_steps", type=positive_int, default=4,
                   help="stAdv rounds of the search over tau (1 = fixed tau, as the paper)")
    p.add_argument("--stadv_lr", type=positive_float, default=0.02, help="stAdv Adam step, pixels")
    p.add_argument("--stadv_init_std", type=nonneg_float, default=0.0,
                   help="std (pixels) of stAdv's random initial flow (0 = zero flow)")
    p.add_argument("--adef_sigma", type=nonneg_float, default=0.5, help="ADef Gaussian smoothing, pixels")
    p.add_argument("--adef_overshoot", type=positive_float, default=1.2, help="ADef overshoot eta")
    p.add_argument("--adef_steps", type=positive_int, default=100, help="ADef iteration cap")
    p.add_argument("--adef_candidates", type=positive_int, default=9, help="ADef candidate classes per iteration")
    p.add_argument("--adef_max_norm", type=positive_float, default=None, help="ADef T-norm budget, pixels (none)")
    p.add_argument("--adef_variant", type=str, default="official", choices=["official", "improved"],
                   help="official: the ADef code's stopping rule, candidates fixed from the clean image, its kernel "
                        "size; improved: iterate to the cap, re-rank candidates every iteration")
    args = p.parse_args(argv)
    args.explicit = sorted(explicit_flags(p, argv))  # flags given, to tell them from the checkpoint's settings
    return args


def attack_config(args, n_classes: int, image_size: int) -> AttackConfig:
    """The registry's configuration from this script's flags."""
    return AttackConfig(seed=args.seed, n_classes=n_classes, flow_eps=args.flow_eps, flow_steps=args.steps,
                        image_size=image_size, stadv_tau=args.stadv_tau, stadv_steps=args.stadv_steps,
                        stadv_search_steps=args.stadv_search_steps, stadv_lr=args.stadv_lr,
                        stadv_init_std=args.stadv_init_std, adef_sigma=args.adef_sigma,
                        adef_overshoot=args.adef_overshoot, adef_steps=args.adef_steps,
                        adef_candidates=args.adef_candidates, adef_max_norm=args.adef_max_norm,
                        adef_variant=args.adef_variant)


def table(record) -> list[str]:
    lines = [f"`{record['name']}` ({record['checkpoint']}, sha256 {record['checkpoint_sha256']}): clean accuracy "
             f"{100 * record['val_acc']:.2f}% on {record['val_n']} test images", "",
             "| attack | accuracy (%) | success among correct (%) | T-norm of successful flows, px (mean / median) "
             "| settings |", "|---|---|---|---|---|"]
    for label, r in record["attacks"].items():
        tn = f"{r['tnorm_px_mean']:.3f} / {r['tnorm_px_median']:.3f}" if r.get("tnorm_px_mean") is not None else "–"
        sets = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "units")
        lines.append(f"| {label} | {100 * r['acc']:.2f} | {100 * r['success_rate']:.1f} ({r['n_success']} / "
                     f"{r['n_clean_correct']}) | {tn} | {sets} |")
    return lines


@cli_entry
def main(args):
    args.model_name = check_model_name(args.model_name)
    device, say = start_run(args)
    path = args.checkpoint or os.path.join(args.weight_path, f"{fgr_run_name(args)}.pt")
    ckpt = load_checkpoint(path)
    adopt_checkpoint_settings(args, ckpt, set(args.explicit), ("model_name", "data_name", "normalize", "augment"))
    n_classes = num_classes(args.data_name)
    normalize = dataset_stats(args.data_name) if args.normalize else None
    model = load_for_evaluation(ckpt, path, args.model_name, n_classes, device, normalize=normalize,
                                options={"in_channels": num_channels(args.data_name)})
    ensure_writable(args.result_path)
    loader, n_examples = test_loader(args.data_name, args.data_path, fgr_transforms(args.augment)[1], n=args.subset,
                                     batch_size=args.batch_size, workers=args.workers, verify=args.verify_data)
    n_total = len(loader.dataset.dataset)
    size = loader.dataset[0][0].shape[-1]
    cfg, reference = attack_config(args, n_classes, size), AttackConfig(n_classes=n_classes, image_size=size)
    stem = os.path.splitext(os.path.basename(path))[0]
    record = {"name": stem, "val_acc": None, "val_n": None, "adv_acc": None,
              "checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
              "trained_epochs": ckpt.get("epoch"), "train_args": ckpt.get("args"), "device": str(device),
              "args": vars(args)}
    results = ResultFile(os.path.join(args.result_path, f"{stem}.json"), record, "attacks", say,
                         carry=("val_acc", "val_n", "adv_acc"))
    for attack_name in args.attacks:
        attack, settings = build_attack(attack_name, model, cfg)
        label = row_label(attack_name, settings, build_attack(attack_name, model, reference)[1],
                          {"n": n_examples} if n_examples < n_total else None)
        t0 = time.time()
        r = attack_accuracy(model, loader, device, attack_name, attack, bar=args.bar)
        success = r["clean_flags"] & ~r["flags"]  # correct before, fooled after
        n_correct = int(r["clean_flags"].sum())
        row = {"attack": attack_name, "acc": r["acc"], "clean_acc": r["clean"], "n_examples": n_examples,
               "n_clean_correct": n_correct, "n_success": int(success.sum()),
               "success_rate": int(success.sum()) / max(n_correct, 1), "settings": settings}
        if "tnorm" in r:
            tnorm = r["tnorm"][success]
            row["tnorm_px_mean"] = tnorm.mean().item() if len(tnorm) else None
            row["tnorm_px_median"] = tnorm.median().item() if len(tnorm) else None
        row["seconds"] = time.time() - t0
        if label in results.rows:
            say(f"note: replacing the earlier row {label!r} (same attack, same settings)")
        results.rows[label] = row
        if record["val_n"] is None or n_examples >= record["val_n"]:  # a subset never replaces the whole test set
            record["val_acc"], record["val_n"] = r["clean"], n_examples
        if label == "flow":  # the reference key: the authors' attack at its settings on the whole test set
            record["adv_acc"] = row["acc"]
        if attack_name == args.attacks[0]:
            say(f"val   - acc: {r['clean']:.4f}")
        flow_note = ""
        if "tnorm" in r:
            median = row["tnorm_px_median"]
            flow_note = f"; median T-norm of successful flows {'-' if median is None else f'{median:.3f} px'}"
        say(f"adv   - acc: {row['acc']:.4f}  ({label}: {100 * row['success_rate']:.1f}% success, {row['n_success']} of "
            f"{row['n_clean_correct']} correctly classified points fooled{flow_note})")
        md = results.write(table(record))
    say(f"wrote {results.path} and {md}")
    return record


if __name__ == "__main__":
    main(get_args())
