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
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from attacks import PGD
from attacks.multi import MultiAttack
from models import build_model
from utils.checkpoint import file_sha256, load_checkpoint, load_model_state
from utils.cli import add_run_args, check_model_name, nonneg_int, positive_float, positive_int
from utils.data import load_dataset, num_classes
from utils import distributed as dist
from utils.engine import autocast, evaluate, fast_path, start_run
from utils.errors import UserError, cli_entry
from utils.robust_eval import ALL_ATTACKS, REFERENCE_SUITE, build_attack, standard_error


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classifier_name", type=str, default="GSeMResNet18")
    p.add_argument("--dataset_name", type=str, default="cifar10", help="cifar10, cifar100 or svhn")
    p.add_argument("--model_load_path", type=str, required=True,
                   help="checkpoint: this repository's format or the authors' bare state_dict")
    p.add_argument("--alpha", type=positive_int, default=None, help="GSeM alpha (default: from the checkpoint, else 6)")
    p.add_argument("--beta", type=nonneg_int, default=None, help="GSeM beta (default: from the checkpoint, else 4)")
    p.add_argument("--attacks", type=str, nargs="+", default=REFERENCE_SUITE,
                   help=f"attacks to run, in order; any of {' '.join(ALL_ATTACKS)}")
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


def load_gsem_model(args, device):
    """Build the classifier and load the checkpoint; alpha/beta from the checkpoint's args when present."""
    ckpt = load_checkpoint(args.model_load_path, map_location="cpu")
    saved = ckpt.get("args", {})
    for key, default in (("alpha", 6), ("beta", 4)):
        flag, stored = getattr(args, key), saved.get(key)
        if flag is not None and stored is not None and flag != stored:
            raise UserError(f"--{key} {flag} differs from the checkpoint's {key} {stored}")
        setattr(args, key, flag if flag is not None else stored if stored is not None else default)
    kwargs = {"alpha": args.alpha, "beta": args.beta} if args.classifier_name.lower().startswith("gsem") else {}
    model = build_model(args.classifier_name, num_classes(args.dataset_name), **kwargs)
    load_model_state(model, ckpt["model"], args.model_load_path, args.classifier_name)
    return fast_path(model.to(device), device, amp=args.amp).eval()


def settings_key(args) -> dict:
    """Everything a stored result depends on (for --resume)."""
    keys = ("classifier_name", "dataset_name", "alpha", "beta", "att_eot_num", "eps", "n_examples", "repeat",
            "steps_scale", "batched_eot", "eot_batch", "amp", "seed")
    return {k: getattr(args, k) for k in keys}


def flags_to_str(flags: torch.Tensor) -> str:
    return "".join("1" if f else "0" for f in flags.tolist())


def write_outputs(path: str, record: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
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
    with open(path[:-len(".json")] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def sanity_checks(model, loader, args, device, results, stages, record_n) -> tuple[dict, list]:
    """Gradient-masking checks on the first loader batches (see --sanity_checks)."""
    checks, warnings = {}, []
    eot, eps = args.att_eot_num, args.eps / 255
    steps = max(1, int(round(50 * args.steps_scale)))
    fast = dict(eot_iter=eot, batched_eot=args.batched_eot, amp=args.amp, eot_batch=args.eot_batch)
    big = PGD(model, eps=1.0, alpha=0.1, steps=steps, **fast)
    few = PGD(model, eps=eps, alpha=2 / 255, steps=max(1, int(round(10 * args.steps_scale))), **fast)
    acc = evaluate(model, loader, device, {"unbounded": big, "PGD10": few}, bar=not args.no_bar, desc="sanity")
    checks["unbounded_pgd_acc"] = acc["unbounded"]
    if acc["unbounded"] > 1.0:
        warnings.append(f"PGD with eps = 1 (unbounded) leaves {acc['unbounded']:.2f}% accuracy: gradients may be "
                        f"masked or the attack too short")
    checks["pgd10_acc"] = acc["PGD10"]
    if "PGD500" in results:
        n = record_n
        longer = results["PGD500"]["acc"]
        checks["pgd500_minus_pgd10"] = longer - acc["PGD10"]
        if longer > acc["PGD10"] + 2 * standard_error(acc["PGD10"], n):
            warnings.append(f"PGD500 ({longer:.2f}%) is weaker than PGD10 ({acc['PGD10']:.2f}%): more steps should "
                            f"not help the model; suspect gradient masking")
    for name, attack in stages.items():
        if isinstance(attack, MultiAttack):
            square = attack.fooled_by.get("Square", 0)
            checks[f"{name}_square_only_successes"] = square
            if square > 0:
                warnings.append(f"{name}: gradient-free Square fooled {square} points the white-box stages missed; "
                                f"suspect gradient masking")
    return checks, warnings


@cli_entry
def main(args):
    args.classifier_name = check_model_name(args.classifier_name)
    device, say = start_run(args)
    model = load_gsem_model(args, device)
    test_set = load_dataset(args.dataset_name, args.data_path, False, transforms.ToTensor())
    n = min(args.n_examples or len(test_set), len(test_set))
    test_set = Subset(test_set, list(dist.shard(n)))  # under torchrun each rank attacks a contiguous block
    loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False,
                        num_workers=min(args.workers, os.cpu_count() or 1))

    if dist.is_main():
        os.makedirs(args.result_path, exist_ok=True)
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
            say(f"resume: {', '.join(record['results']) or 'nothing'} already done in {out}", flush=True)
        else:
            say(f"resume: {out} holds another checkpoint or other settings; starting afresh", flush=True)

    eps = args.eps / 255
    stages = {}
    for name in args.attacks:
        if name in record["results"]:
            r = record["results"][name]
        else:
            accs, flags, t0 = [], None, time.time()
            for draw in range(args.repeat):
                torch.manual_seed(args.seed + draw)
                attack, settings = build_attack(name, model, eps=eps, eot=args.att_eot_num, scale=args.steps_scale,
                                                seed=args.seed + draw, n_classes=num_classes(args.dataset_name),
                                                batched_eot=args.batched_eot, amp=args.amp, device=device,
                                                eot_batch=args.eot_batch)
                if draw == 0:
                    stages[name], first_settings = attack, settings
                with autocast(device, args.amp):
                    acc, f = evaluate(model, loader, device, {name: attack} if attack else None,
                                      bar=not args.no_bar, desc=f"{name} ({draw + 1}/{args.repeat})",
                                      return_flags=True)
                key = name if attack else "clean"
                accs.append(acc[key])
                flags = f[key] if flags is None else flags
            r = {"acc": accs[0], "accs": accs, "mean": statistics.fmean(accs),
                 "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "settings": first_settings,
                 "seeds": [args.seed + d for d in range(args.repeat)],
                 "seconds": time.time() - t0, "robust_flags": flags_to_str(flags)}
            record["results"][name] = r
            if dist.is_main():
                write_outputs(out, record)
        extra = " (unbounded L2, 500 steps)" if name == "CW100" else ""
        spread = f"  [mean {r['mean']:.2f} ± {r['std']:.2f} over {len(r['accs'])} draws]" if len(r["accs"]) > 1 else ""
        say(f"{name}: {r['acc']:.2f}%{extra}{spread}", flush=True)

    if args.worst_case:
        names = [a for a in args.attacks if a != "Clean"] or args.attacks
        robust = torch.ones(n, dtype=torch.bool)
        for name in names:
            robust &= torch.tensor([c == "1" for c in record["results"][name]["robust_flags"]])
        record["worst_case"] = {"attacks": names, "acc": 100.0 * int(robust.sum()) / n}
        say(f"Worst case: {record['worst_case']['acc']:.2f}%", flush=True)
    if args.sanity_checks:
        record["sanity"], record["warnings"] = sanity_checks(model, loader, args, device, record["results"], stages, n)
        for w in record["warnings"]:
            say(f"warning: {w}", flush=True)
    if dist.is_main():
        write_outputs(out, record)
    say(f"wrote {out} and {out[:-5]}.md", flush=True)
    return record


if __name__ == "__main__":
    main(get_args())
