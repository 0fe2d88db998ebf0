"""Evaluate a GSeM model with the reference attack suite (Clean, PGD500, CW100, APGD500, AA), corrected gradients
and EOT 20, plus optional extra attacks, repeated noise draws, a worst case over attacks and gradient-masking checks.

    python evaluate_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10 --model_load_path xxxx.pt

Prints the reference's lines (``PGD500: 52.31%``); writes ``<result_path>/<checkpoint>_<dataset>_eval.json`` (per
attack accuracy, per-draw accuracies, settings, model, checkpoint hash, time) and a markdown table beside it, after
every finished attack. ``--resume`` skips attacks already done for the same checkpoint and settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torchvision import transforms

from attacks import AttackConfig, build_attack, list_attacks
from utils.checkpoint import file_sha256
from utils.cli import add_run_args, check_model_name, nonneg_int, positive_float, positive_int
from utils.data import num_classes
from utils.errors import cli_entry
from utils.evaluation import attack_accuracy, load_for_evaluation, sanity_checks, test_loader
from utils.results import write_result
from utils.runtime import start_run

REFERENCE_SUITE = ["Clean", "PGD500", "CW100", "APGD500", "AA"]
ALL_ATTACKS = ["Clean", *list_attacks()]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier_name", type=str, default="GSeMResNet18")
    p.add_argument("--dataset_name", type=str, default="cifar10", help="cifar10, cifar100, svhn or digits (built in, no download)")
    p.add_argument("--model_load_path", type=str, required=True,
                   help="checkpoint: this repository's format or the authors' bare state_dict")
    p.add_argument("--alpha", type=positive_int, default=None, help="GSeM alpha (default: from the checkpoint, else 6)")
    p.add_argument("--beta", type=nonneg_int, default=None, help="GSeM beta (default: from the checkpoint, else 4)")
    p.add_argument("--attacks", type=str, nargs="+", default=REFERENCE_SUITE,
                   help=f"attacks to run, in order; Clean or any registered attack: {' '.join(ALL_ATTACKS[1:])}")
    p.add_argument("--batch_size", type=positive_int, default=512)
    p.add_argument("--att_eot_num", type=positive_int, default=20, help="noisy passes per attack step (EOT)")
    p.add_argument("--eps", type=positive_float, default=8.0, help="L-inf budget, in 1/255 units")
    p.add_argument("--n_examples", type=nonneg_int, default=0, help="evaluate the first N test points (0 = all)")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="R noise draws per attack; the first is the headline (as the reference), mean +- std reported")
    p.add_argument("--worst_case", action="store_true",
                   help="also report accuracy where a point counts only if it survives every selected attack")
    p.add_argument("--steps_scale", type=positive_float, default=1.0,
                   help="multiply every attack's iterations, restarts and queries by this (at least 1 each)")
    p.add_argument("--sanity_checks", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient-masking checks: unbounded PGD reaches ~0%%, more PGD steps do not help the model, "
                        "Square does not beat the white-box stages")
    p.add_argument("--batched_eot", action=argparse.BooleanOptionalAction, default=True,
                   help="PGD's EOT as copies of the batch in one forward (same expectation)")
    p.add_argument("--eot_batch", type=positive_int, default=None,
                   help="most images per batched-EOT forward (default: 64 on CPU, 1024 on CUDA; lower it on OOM)")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for attacks where the device has native bf16 (CUDA, AMX/AVX512-BF16 CPUs); "
                        "default fp32")
    p.add_argument("--result_path", type=str, default="./results")
    p.add_argument("--resume", action="store_true", help="skip attacks already in the result file")
    add_run_args(p)
    p.set_defaults(data_path="./dataset", workers=2, subset=0)
    args = p.parse_args(argv)
    unknown = [a for a in args.attacks if a not in ALL_ATTACKS]
    if unknown:
        p.error(f"unknown attack(s) {', '.join(unknown)}; valid: {', '.join(ALL_ATTACKS)}")
    return args


def settings_key(args) -> dict:
    """Everything a stored result depends on (for --resume)."""
    keys = ("classifier_name", "dataset_name", "alpha", "beta", "att_eot_num", "eps", "n_examples", "repeat",
            "steps_scale", "batched_eot", "eot_batch", "amp", "seed")
    return {k: getattr(args, k) for k in keys}


def attack_config(args, n_classes: int, seed: int) -> AttackConfig:
    """The registry's configuration from this script's flags (``seed``: this noise draw's)."""
    return AttackConfig(eps=args.eps / 255, eot_iter=args.att_eot_num, steps_scale=args.steps_scale, seed=seed,
                        n_classes=n_classes, batched_eot=args.batched_eot, eot_batch=args.eot_batch, amp=args.amp)


def flags_to_str(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def table(record: dict) -> list[str]:
    lines = [f"Model `{record['model']}` ({record['checkpoint']}, sha256 {record['checkpoint_sha256']}), "
             f"{record['settings']['dataset_name']}, {record['n_examples']} test points, EOT "
             f"{record['settings']['att_eot_num']}, {record['device']}", "",
             "| attack | robust accuracy (%) | mean ± std over draws | settings | time (s) |", "|---|---|---|---|---|"]
    for name, r in record["results"].items():
        spread = f"{r['mean']:.2f} ± {r['std']:.2f} (R={len(r['accs'])})" if len(r["accs"]) > 1 else "–"
        sets = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in r["settings"].items() if k != "note")
        lines.append(f"| {name} | {r['acc']:.2f} | {spread} | {sets} | {r['seconds']:.0f} |")
    if "worst_case" in record:
        lines.append(f"| worst case ({', '.join(record['worst_case']['attacks'])}) | "
                     f"{record['worst_case']['acc']:.2f} | – | – | – |")
    if record.get("warnings"):
        lines += ["", "Warnings:"] + [f"- {w}" for w in record["warnings"]]
    return lines


@cli_entry
def main(args):
    args.classifier_name = check_model_name(args.classifier_name)
    device, say = start_run(args)
    n_classes = num_classes(args.dataset_name)
    model, _, options = load_for_evaluation(args.model_load_path, args.classifier_name, n_classes, device,
                                            options={"alpha": args.alpha, "beta": args.beta}, amp=args.amp)
    args.alpha, args.beta = options.get("alpha", 6), options.get("beta", 4)
    loader, n = test_loader(args.dataset_name, args.data_path, transforms.ToTensor(), n=args.n_examples,
                            batch_size=args.batch_size, workers=args.workers)

    stem = os.path.splitext(os.path.basename(args.model_load_path))[0]
    out = os.path.join(args.result_path, f"{stem}_{args.dataset_name}_eval.json")
    sha = file_sha256(args.model_load_path)
    record = {"model": args.classifier_name, "checkpoint": os.path.abspath(args.model_load_path),
              "checkpoint_sha256": sha, "settings": settings_key(args), "n_examples": n, "device": str(device),
              "torch": torch.__version__, "results": {}, "warnings": []}
    if args.resume and os.path.isfile(out):
        with open(out) as f:
            old = json.load(f)
        if old.get("checkpoint_sha256") == sha and old.get("settings") == record["settings"]:
            record["results"] = {k: v for k, v in old["results"].items() if k in args.attacks}
            say(f"resume: {', '.join(record['results']) or 'nothing'} already done in {out}")
        else:
            say(f"resume: {out} holds another checkpoint or other settings; starting afresh")

    stages = {}
    for name in args.attacks:
        if name in record["results"]:
            r = record["results"][name]
        else:
            accs, flags, t0 = [], None, time.time()
            for draw in range(args.repeat):
                torch.manual_seed(args.seed + draw)
                cfg = attack_config(args, n_classes, args.seed + draw)
                attack, settings = build_attack(name, model, cfg) if name != "Clean" else (None, {})
                if draw == 0:
                    stages[name], first_settings = attack, settings
                res = attack_accuracy(model, loader, device, name, attack, bar=not args.no_bar, amp=args.amp)
                accs.append(res["acc"] if attack is not None else res["clean"])
                if flags is None:
                    flags = res["flags"] if attack is not None else res["clean_flags"]
            r = {"acc": accs[0], "accs": accs, "mean": statistics.fmean(accs),
                 "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "settings": first_settings,
                 "seeds": [args.seed + d for d in range(args.repeat)],
                 "seconds": time.time() - t0, "robust_flags": flags_to_str(flags)}
            record["results"][name] = r
            write_result(out, record, table(record))
        extra = " (unbounded L2, 500 steps)" if name == "CW100" else ""
        spread = f"  [mean {r['mean']:.2f} ± {r['std']:.2f} over {len(r['accs'])} draws]" if len(r["accs"]) > 1 else ""
        say(f"{name}: {r['acc']:.2f}%{extra}{spread}")

    if args.worst_case:
        names = [a for a in args.attacks if a != "Clean"] or args.attacks
        robust = torch.ones(n, dtype=torch.bool)
        for name in names:
            robust &= torch.tensor([c == "1" for c in record["results"][name]["robust_flags"]])
        record["worst_case"] = {"attacks": names, "acc": 100.0 * int(robust.sum()) / n}
        say(f"Worst case: {record['worst_case']['acc']:.2f}%")
    if args.sanity_checks:
        record["sanity"], record["warnings"] = sanity_checks(
            model, loader, device, eps=args.eps / 255, eot_iter=args.att_eot_num, steps_scale=args.steps_scale,
            pgd_kwargs=dict(batched_eot=args.batched_eot, amp=args.amp, eot_batch=args.eot_batch),
            results=record["results"], stages=stages, n=n, bar=not args.no_bar)
        for w in record["warnings"]:
            say(f"warning: {w}")
    say(f"wrote {out} and {write_result(out, record, table(record))}")
    return record


if __name__ == "__main__":
    main(get_args())
