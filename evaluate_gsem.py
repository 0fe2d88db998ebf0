"""Evaluate a GSeM model with the reference attack suite (Clean, PGD500, CW100, APGD500, AA), corrected gradients
and EOT 20, plus optional extra attacks, repeated noise draws, a worst case over attacks and gradient-masking checks.

    python evaluate_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10 --model_load_path xxxx.pt

Prints the reference's lines (``PGD500: 52.31%``); writes ``<result_path>/<checkpoint>_<dataset>_eval.json`` and a
markdown table beside it after every finished attack: one row per attack and settings (``PGD500`` at the reference
settings, ``PGD500 [eps=0.0157]`` otherwise), accumulating over runs; accuracies as fractions, also on the points the
clean forward got right. ``--resume`` skips rows already there. alpha, beta, the model and the dataset are read from
the checkpoint.
"""
from __future__ import annotations

import os
import statistics
import time

import torch
from torchvision import transforms

from attacks import AttackConfig, build_attack, list_attacks
from utils.checkpoint import file_sha256, load_checkpoint
from utils.cli import (Parser, add_bool, add_run_args, check_model_name, eps_255, explicit_flags, nonneg_int,
                       positive_float, positive_int)
from utils.data import num_channels, num_classes
from utils.errors import cli_entry
from utils.evaluation import (adopt_checkpoint_settings, attack_accuracy, load_for_evaluation, sanity_checks,
                              test_loader)
from utils.results import ResultFile, ensure_writable, row_label
from utils.runtime import start_run

REFERENCE_SUITE = ["Clean", "PGD500", "CW100", "APGD500", "AA"]
ALL_ATTACKS = ["Clean", *list_attacks()]


def get_args(argv=None):
    p = Parser(__doc__)
    p.add_argument("--classifier_name", type=str, default="GSeMResNet18", help="registry name of the model")
    p.add_argument("--dataset_name", type=str, default="cifar10",
                   help="cifar10, cifar100, svhn, mnist, fashionmnist, or digits (built in, no download)")
    p.add_argument("--model_load_path", type=str, required=True,
                   help="checkpoint: this repository's format or the authors' bare state_dict")
    p.add_argument("--alpha", type=positive_int, default=6,
                   help="GSeM quantisation 1/alpha (taken from the checkpoint when it holds it)")
    p.add_argument("--beta", type=nonneg_int, default=4,
                   help="GSeM noise in [-beta, beta] (taken from the checkpoint when it holds it)")
    p.add_argument("--attacks", type=str, nargs="+", default=REFERENCE_SUITE,
                   help=f"attacks to run, in order; Clean or any registered attack: {' '.join(ALL_ATTACKS[1:])}")
    p.add_argument("--batch_size", type=positive_int, default=512, help="evaluation batch size")
    p.add_argument("--att_eot_num", type=positive_int, default=20, help="noisy passes per attack step (EOT)")
    p.add_argument("--eps", type=eps_255, default=8.0, help="L-inf budget, in 1/255 units (8 = 8/255)")
    p.add_argument("--n_examples", type=nonneg_int, default=0,
                   help="evaluate the first N test points (0 = all; --subset N means the same)")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="R noise draws per attack; the first is the headline (as the reference), mean +- std reported")
    add_bool(p, "worst_case", False, "also report accuracy where a point counts only if it survives every selected "
                                     "attack")
    p.add_argument("--steps_scale", type=positive_float, default=1.0,
                   help="multiply every attack's iterations, restarts and queries by this (at least 1 each)")
    add_bool(p, "sanity_checks", True, "gradient-masking checks: unbounded PGD reaches ~0%%, more PGD steps do not "
                                       "help the model, Square does not beat the white-box stages")
    add_bool(p, "batched_eot", True, "PGD's EOT as copies of the batch in one forward (same expectation)")
    p.add_argument("--eot_batch", type=positive_int, default=None,
                   help="most images per batched-EOT forward (default: 64 on CPU, 1024 on CUDA; lower it on OOM)")
    add_bool(p, "amp", False, "bf16 autocast for attacks where the device has native bf16 (CUDA, AMX/AVX512-BF16 "
                              "CPUs); off: fp32, as the reference")
    p.add_argument("--result_path", type=str, default="./results", help="folder of result files")
    add_bool(p, "resume", False, "skip attacks already in the result file for this checkpoint and these settings")
    add_run_args(p)
    p.set_defaults(data_path="./dataset", workers=2, subset=0)
    args = p.parse_args(argv)
    unknown = [a for a in args.attacks if a not in ALL_ATTACKS]
    if unknown:
        p.error(f"unknown attack(s) {', '.join(unknown)}; valid: {', '.join(ALL_ATTACKS)}")
    if args.subset:  # the run flag every script has: here the number of test points
        if args.n_examples and args.n_examples != args.subset:
            p.error(f"--subset {args.subset} and --n_examples {args.n_examples} disagree; give one of them")
        args.n_examples = args.subset
    args.explicit = sorted(explicit_flags(p, argv))  # flags given, to tell them from the checkpoint's settings
    return args


def attack_config(args, n_classes: int, seed: int) -> AttackConfig:
    """The registry's configuration from this script's flags (``seed``: this noise draw's)."""
    return AttackConfig(eps=args.eps / 255, eot_iter=args.att_eot_num, steps_scale=args.steps_scale, seed=seed,
                        n_classes=n_classes, batched_eot=args.batched_eot, eot_batch=args.eot_batch, amp=args.amp)


def flags_to_str(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def table(record: dict) -> list[str]:
    lines = [f"Model `{record['model']}` ({record['checkpoint']}, sha256 {record['checkpoint_sha256']}), "
             f"{record['dataset_name']}, alpha {record['alpha']}, beta {record['beta']}", "",
             "| attack | robust accuracy (%) | on clean-correct points (%) | mean ± std over draws | points "
             "| settings | time (s) |", "|---|---|---|---|---|---|---|"]
    for label, r in record["results"].items():
        spread = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (R={len(r['accs'])})" if len(r["accs"]) > 1 else "–"
        sets = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in r["settings"].items() if k != "note")
        lines.append(f"| {label} | {100 * r['acc']:.2f} | {100 * r['acc_on_clean_correct']:.2f} | {spread} | "
                     f"{r['n_examples']} | {sets} | {r['seconds']:.0f} |")
    if "worst_case" in record:
        lines.append(f"| worst case ({', '.join(record['worst_case']['attacks'])}) | "
                     f"{100 * record['worst_case']['acc']:.2f} | – | – | – | – | – |")
    if record.get("warnings"):
        lines += ["", "Warnings:"] + [f"- {w}" for w in record["warnings"]]
    return lines


@cli_entry(on_interrupt="interrupted: every finished attack is saved; run the same command with --resume to "
                         "skip them")
def main(args):
    args.classifier_name = check_model_name(args.classifier_name)
    device, say = start_run(args)
    ckpt = load_checkpoint(args.model_load_path)
    adopt_checkpoint_settings(args, ckpt, set(args.explicit), ("classifier_name", "dataset_name", "alpha", "beta"))
    n_classes = num_classes(args.dataset_name)
    model = load_for_evaluation(ckpt, args.model_load_path, args.classifier_name, n_classes, device,
                                options={"alpha": args.alpha, "beta": args.beta,
                                         "in_channels": num_channels(args.dataset_name)}, amp=args.amp)
    ensure_writable(args.result_path)
    loader, n = test_loader(args.dataset_name, args.data_path, transforms.ToTensor(), n=args.n_examples,
                            batch_size=args.batch_size, workers=args.workers, verify=args.verify_data)
    n_total = len(loader.dataset.dataset)
    defaults = get_args(["--model_load_path", args.model_load_path])  # the reference settings, for the row keys
    extra = {"repeat": args.repeat, "amp": args.amp, "seed": args.seed, **({"n": n} if n < n_total else {})}
    reference_extra = {"repeat": 1, "amp": False, "seed": 0}

    stem = os.path.splitext(os.path.basename(args.model_load_path))[0]
    record = {"model": args.classifier_name, "dataset_name": args.dataset_name, "alpha": args.alpha, "beta": args.beta,
              "checkpoint": os.path.abspath(args.model_load_path),
              "checkpoint_sha256": file_sha256(args.model_load_path),
              "device": str(device), "torch": torch.__version__, "train_args": ckpt.get("args"), "args": vars(args),
              "warnings": []}
    results = ResultFile(os.path.join(args.result_path, f"{stem}_{args.dataset_name}_eval.json"), record, "results",
                         say)

    stages, done = {}, {}
    for name in args.attacks:
        if name == "Clean":
            settings, reference = {}, {}
        else:
            settings = build_attack(name, model, attack_config(args, n_classes, args.seed))[1]
            reference = build_attack(name, model, attack_config(defaults, n_classes, defaults.seed))[1]
        label = row_label(name, settings, {**reference, **reference_extra}, extra)
        if args.resume and label in results.rows:
            r = results.rows[label]
            say(f"resume: {label} already done")
        else:
            if label in results.rows:
                say(f"note: replacing the earlier row {label!r} (same attack, same settings)")
            accs, t0 = [], time.time()
            for draw in range(args.repeat):
                torch.manual_seed(args.seed + draw)
                attack = (build_attack(name, model, attack_config(args, n_classes, args.seed + draw))[0]
                          if name != "Clean" else None)
                res = attack_accuracy(model, loader, device, name, attack, bar=args.bar, amp=args.amp)
                accs.append(res["acc"] if attack is not None else res["clean"])
                if draw == 0:
                    stages[name], first = attack, res
            flags = first["flags"] if name != "Clean" else first["clean_flags"]
            clean = first["clean_flags"]
            r = {"attack": name, "acc": accs[0], "accs": accs, "mean": statistics.fmean(accs),
                 "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n_examples": n,
                 "acc_on_clean_correct": int((flags & clean).sum()) / max(int(clean.sum()), 1),
                 "settings": settings, "seeds": [args.seed + d for d in range(args.repeat)],  # draw 0's settings
                 "seconds": time.time() - t0, "robust_flags": flags_to_str(flags)}
            results.rows[label] = r
            results.write(table(record))
        done[name] = r
        cw = " (unbounded L2, 500 steps)" if name == "CW100" else ""
        spread = (f"  [mean {100 * r['mean']:.2f} ± {100 * r['std']:.2f} over {len(r['accs'])} draws]"
                  if len(r["accs"]) > 1 else "")
        clean_note = (f"  ({100 * r['acc_on_clean_correct']:.2f}% of the clean-correct points)"
                      if name != "Clean" else "")
        say(f"{name}: {100 * r['acc']:.2f}%{cw}{spread}{clean_note}")

    if args.worst_case:
        names = [a for a in args.attacks if a != "Clean"] or args.attacks
        robust = torch.ones(n, dtype=torch.bool)
        for name in names:
            robust &= torch.tensor([c == "1" for c in done[name]["robust_flags"]])
        record["worst_case"] = {"attacks": names, "acc": int(robust.sum()) / n}
        say(f"Worst case: {100 * record['worst_case']['acc']:.2f}%")
    if args.sanity_checks:
        record["sanity"], record["warnings"] = sanity_checks(
            model, loader, device, eps=args.eps / 255, eot_iter=args.att_eot_num, steps_scale=args.steps_scale,
            pgd_kwargs=dict(batched_eot=args.batched_eot, amp=args.amp, eot_batch=args.eot_batch),
            results=done, stages=stages, n=n, bar=args.bar)
        for w in record["warnings"]:
            say(f"warning: {w}")
    say(f"wrote {results.path} and {results.write(table(record))}")
    return record


if __name__ == "__main__":
    main(get_args())
