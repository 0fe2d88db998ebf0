"""Evaluate a GSeM model with the reference attack suite (Clean, PGD500, CW100, APGD500, AA), corrected gradients
and EOT 20, plus any registered attack, repeated noise draws, a worst case over attacks and gradient-masking checks.

    python evaluate_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10 --model_load_path xxxx.pt

Prints the reference's lines (``PGD500: 52.31%``); writes ``<result_path>/<checkpoint>_<dataset>_eval.json`` and a
markdown table beside it after every finished attack: one row per attack and settings in the format both evaluate
scripts share (``PGD500`` at the reference settings, ``PGD500 [eps=4]`` otherwise), accumulating over runs;
accuracies as fractions, also on the points the clean forward got right. ``--resume`` skips rows already there.
The model (and its alpha and beta) and the dataset are read from the checkpoint.
"""
from __future__ import annotations

import os
import re

import torch
from torchvision import transforms

from attacks import AttackConfig
from models import list_models, model_options
from utils.argtypes import nonneg_int, positive_int
from utils.checkpoint import load_checkpoint
from utils.cli import Parser, add_bool, add_run_args, check_model_name, explicit_flags
from utils.data import fgr_transforms
from utils.datasets import DATASET_HELP, model_options_for, num_classes
from utils.errors import UserError, cli_entry
from utils.evaluation import (
    add_eval_args,
    adopt_checkpoint_settings,
    check_attack_names,
    check_lines,
    load_for_evaluation,
    markdown,
    masking_checks,
    record_header,
    row_flags,
    run_attacks,
    sanity_checks,
    subsets,
    test_loader,
)
from utils.results import ResultFile, ensure_writable
from utils.runtime import show_args, start_run

REFERENCE_SUITE = ["Clean", "PGD500", "CW100", "APGD500", "AA"]


def parser() -> Parser:
    p = Parser(__doc__)
    p.add_argument("--classifier_name", type=str, default="GSeMResNet18",
                   help=f"registry name (case-insensitive): {', '.join(list_models(canonical=True))}")
    p.add_argument("--dataset_name", type=str, default="cifar10",
                   help=DATASET_HELP)
    p.add_argument("--model_load_path", type=str, required=True,
                   help="checkpoint: this repository's format or the authors' bare state_dict")
    p.add_argument("--alpha", type=positive_int, default=6,
                   help="GSeM quantisation 1/alpha (taken from the checkpoint when it holds it)")
    p.add_argument("--beta", type=nonneg_int, default=4,
                   help="GSeM noise in [-beta, beta] (taken from the checkpoint when it holds it)")
    p.add_argument("--n_examples", type=nonneg_int, default=0,
                   help="evaluate the first N test points (0 = all; --subset N means the same)")
    add_bool(p, "worst_case", False, "also report accuracy where a point counts only if it survives every selected "
                                     "attack")
    add_bool(p, "sanity_checks", True, "gradient-masking checks: unbounded PGD reaches ~0%%, more PGD steps do not "
                                       "help the model, Square does not beat the white-box stages")
    p.add_argument("--result_path", type=str, default="./results", help="folder of result files")
    add_eval_args(p, attacks=REFERENCE_SUITE, batch_size=512)
    add_run_args(p)
    p.set_defaults(data_path="./dataset", workers=2, subset=0)
    return p


def get_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    check_attack_names(p, args)
    if args.subset:  # the run flag every script has: here the number of test points
        if args.n_examples and args.n_examples != args.subset:
            p.error(f"--subset {args.subset} and --n_examples {args.n_examples} disagree; give one of them")
        args.n_examples = args.subset
    args.explicit = sorted(explicit_flags(p, argv))  # flags given, to tell them from the checkpoint's settings
    return args


def table(record: dict) -> list[str]:
    clean, worst = record["clean"], record.get("worst_case")
    extra = [[f"worst case ({', '.join(worst['attacks'])})", f"{100 * worst['acc']:.2f}", *["–"] * 3,
              str(worst.get("n", "–")), *["–"] * 4]] if worst else []
    return markdown(record, f"Model `{record['model']}` ({record['checkpoint']}, sha256 "
                            f"{record['checkpoint_sha256']}), {record['dataset_name']}, alpha {record['alpha']}, beta "
                            f"{record['beta']}: clean accuracy {100 * clean['acc']:.2f}% on {clean['n']} test images"
                            f"{subsets(record)}", extra)


def alpha_beta_from_file_name(args, given: set) -> None:
    """The authors' checkpoints are bare state_dicts named ``<classifier>_<alpha>_<beta>_<acc>.pt``: their alpha and
    beta come from the name (a flag that contradicts it is an error)."""
    m = re.search(r"_(\d+)_(\d+)_[0-9.]+\.pt$", os.path.basename(args.model_load_path))
    if not m:
        return
    for key, value in zip(("alpha", "beta"), map(int, m.groups())):
        if key in given and getattr(args, key) != value:
            raise UserError(f"--{key} {getattr(args, key)} contradicts the checkpoint's name "
                            f"{os.path.basename(args.model_load_path)}, which says {key} {value}")
        setattr(args, key, value)


@cli_entry(on_interrupt="interrupted: every finished attack is saved; run the same command with --resume to "
                         "skip them")
def main(args):
    args.classifier_name = check_model_name(args.classifier_name)
    device, say = start_run(args, print_args=False)
    ckpt = load_checkpoint(args.model_load_path)
    adopt_checkpoint_settings(args, ckpt, set(args.explicit), ("classifier_name", "dataset_name", "alpha", "beta"))
    if not ckpt.get("args"):
        alpha_beta_from_file_name(args, set(args.explicit))
    show_args(say, args)  # after adopting the checkpoint's settings: what this run uses
    n_classes, takes = num_classes(args.dataset_name), model_options(args.classifier_name)
    options = model_options_for(args.dataset_name, takes, alpha=args.alpha, beta=args.beta)
    model = load_for_evaluation(ckpt, args.model_load_path, args.classifier_name, n_classes, device, options=options,
                                amp=args.amp)
    ensure_writable(args.result_path)
    trained = ckpt.get("args") or {}  # an FGR checkpoint: its test preprocessing, as evaluate.py
    test_tf = fgr_transforms(trained["augment"])[1] if "augment" in trained else transforms.ToTensor()
    loader, n, n_total = test_loader(args.dataset_name, args.data_path, test_tf, n=args.n_examples,
                                     batch_size=args.batch_size, workers=args.workers, verify=args.verify_data)
    stem = os.path.splitext(os.path.basename(args.model_load_path))[0]
    gsem = "alpha" in takes  # alpha and beta only for a model that has them (not a plain ResNet-18 or VGG)
    record = record_header("evaluate_gsem.py", args.model_load_path, ckpt, model, args.dataset_name, loader, n,
                           device, args,
                           model=args.classifier_name, dataset_name=args.dataset_name,
                           alpha=args.alpha if gsem else None, beta=args.beta if gsem else None)
    results = ResultFile(os.path.join(args.result_path, f"{stem}_{args.dataset_name}_eval.json"), record, say)

    def line(name, row):
        if row is None:
            say(f"Clean: {100 * results.clean['acc']:.2f}% ({n} test images)")
            return
        cw = f" (unbounded L2, {row['attack_settings'].get('steps')} steps)" if name == "CW100" else ""
        spread = (f"  [mean {100 * row['mean']:.2f} ± {100 * row['std']:.2f} over {len(row['accs'])} draws]"
                  if len(row["accs"]) > 1 else "")
        say(f"{row['label']}: {100 * row['acc']:.2f}%{cw}{spread}  ({100 * row['acc_on_clean_correct']:.2f}% of the "
            f"clean-correct points)")

    size = loader.dataset[0][0].shape[-1]
    rows, attacks = run_attacks(model, loader, device, args, n=n, n_total=n_total, n_classes=n_classes,
                                image_size=size, results=results, table=table, say=say, line=line)
    if args.worst_case:
        names = list(rows) or ["Clean"]
        robust = torch.tensor(row_flags(results.clean, "flags"))
        for name in rows:
            robust &= torch.tensor(row_flags(rows[name]))
        record["worst_case"] = {"attacks": names, "acc": int(robust.sum()) / n, "n": n}
        say(f"Worst case: {100 * record['worst_case']['acc']:.2f}%")
    record["checks"], record["warnings"] = masking_checks(results.rows)  # every row of the file: earlier runs too
    if args.sanity_checks:
        cfg = AttackConfig.from_args(args, seed=args.seed, n_classes=n_classes, image_size=size)
        record["sanity"], more = sanity_checks(model, loader, device, cfg, amp=args.amp, rows=rows, attacks=attacks,
                                               n=n, bar=args.bar)
        record["warnings"] += more
    for text in check_lines({**record["checks"], **record.get("sanity", {})}):
        say(text)
    for w in record["warnings"]:
        say(f"warning: {w}")
    say(f"wrote {results.path} and {results.write(table)}")
    return record


if __name__ == "__main__":
    main(get_args())
