"""Evaluate an FGR-trained classifier: clean accuracy and accuracy under adversarial deformations: the authors'
multi-step L-inf flow attack (default), stAdv and ADef, or any registered attack.

    python evaluate.py --data_path your_path --data_name cifar10 --model_name vgg11 --fgr_lamb 300
    python evaluate.py ... --attacks flow stadv adef

The checkpoint is found from the same flags as main.py (``<weight_path>/<name>.pt``) or given with --checkpoint
(this repository's format or a bare reference state_dict). The model, dataset, normalisation and preprocessing are
read from the checkpoint; a flag that contradicts it is an error. Results go to ``<result_path>/<checkpoint>.json``
and a markdown table beside it, one row per attack and settings in the format both evaluate scripts share,
accumulating over runs (``flow`` is the authors' attack at its settings on the whole test set; other settings get
their own rows, e.g. ``flow [flow_steps=1]``). ``val_acc`` and ``adv_acc`` are the reference's keys (fractions;
``adv_acc`` only from the ``flow`` row).
"""
from __future__ import annotations

import os

from utils.checkpoint import load_checkpoint
from utils.cli import Parser, add_fgr_model_args, add_run_args, check_model_name, explicit_flags, fgr_run_name
from utils.data import fgr_transforms
from utils.datasets import dataset_stats, model_options_for, num_classes
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
    run_attacks,
    subsets,
    test_loader,
)
from utils.results import ResultFile, ensure_writable
from utils.runtime import show_args, start_run


def parser() -> tuple[Parser, list[str]]:
    """The parser and the flags that name the checkpoint (main.py's run name)."""
    p = Parser(__doc__)
    identity = add_fgr_model_args(p)
    add_run_args(p)
    p.add_argument("--checkpoint", type=str, default=None, help="checkpoint file (default <weight_path>/<name>.pt)")
    add_eval_args(p, attacks=["flow"], batch_size=128)
    return p, identity + ["seed"]


def get_args(argv=None):
    p, _ = parser()
    args = p.parse_args(argv)
    check_attack_names(p, args)
    args.explicit = sorted(explicit_flags(p, argv))  # flags given, to tell them from the checkpoint's settings
    return args


def table(record) -> list[str]:
    return markdown(record, f"`{record['name']}` ({record['checkpoint']}, sha256 {record['checkpoint_sha256']}): "
                            f"clean accuracy {100 * record['val_acc']:.2f}% on {record['val_n']} test images"
                            f"{subsets(record)}")


def runs_beside(path: str, args) -> str:
    """The runs of the same dataset and model in the checkpoint's folder, as a hint."""
    folder = os.path.dirname(path) or "."
    prefix = f"{args.data_name}_{args.model_name}"
    runs = sorted(f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".pt")
                  and not f.endswith(".last.pt")) if os.path.isdir(folder) else []
    if not runs:
        return f"; no {prefix} run is in {folder}"
    return (f"; runs of {prefix} in {folder}: {', '.join(runs[:5])}{' ...' if len(runs) > 5 else ''}. A run with "
            f"settings off the recipe has them in its name: give it with --checkpoint")


def reference_keys(old: dict, record: dict) -> None:
    """The reference's keys, settled at every write: ``val_acc`` is the clean accuracy on the most points evaluated
    (a subset never replaces the whole test set's); ``adv_acc`` is the ``flow`` row's (the authors' attack at their
    settings, whole test set)."""
    record["val_acc"], record["val_n"] = record["clean"]["acc"], record["clean"]["n"]
    record["adv_acc"] = record["rows"]["flow"]["acc"] if "flow" in record["rows"] else None


@cli_entry
def main(args):
    args.model_name = check_model_name(args.model_name)
    device, say = start_run(args, print_args=False)
    p, identity = parser()
    name = fgr_run_name(args, vars(p.parse_args([])), identity)
    path = args.checkpoint or os.path.join(args.weight_path, f"{name}.pt")
    if not args.checkpoint and not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path} (the name these flags give)" + runs_beside(path, args))
    ckpt = load_checkpoint(path)
    adopt_checkpoint_settings(args, ckpt, set(args.explicit), ("model_name", "data_name", "normalize", "augment"))
    show_args(say, args)  # after adopting the checkpoint's settings: what this run uses
    if ckpt.get("finished") is False:
        say(f"note: {path} is from epoch {ckpt.get('epoch')} of a run of {ckpt.get('epochs')} epochs that has not "
            f"finished (interrupted, or still running; --resume continues it)")
    n_classes = num_classes(args.data_name)
    model = load_for_evaluation(ckpt, path, args.model_name, n_classes, device,
                                normalize=dataset_stats(args.data_name) if args.normalize else None,
                                options=model_options_for(args.data_name))
    ensure_writable(args.result_path)
    loader, n, n_total = test_loader(args.data_name, args.data_path, fgr_transforms(args.augment)[1], n=args.subset,
                                     batch_size=args.batch_size, workers=args.workers, verify=args.verify_data)
    stem = os.path.splitext(os.path.basename(path))[0]
    record = record_header("evaluate.py", path, ckpt, model, args.data_name, loader, n, device, args, name=stem,
                           val_acc=None, val_n=n, adv_acc=None, trained_epochs=ckpt.get("epoch"),
                           **({"finished": ckpt["finished"]} if "finished" in ckpt else {}))
    results = ResultFile(os.path.join(args.result_path, f"{stem}.json"), record, say, merge=reference_keys)

    def line(attack, row):
        if row is None:  # "Clean" in --attacks: the clean accuracy's line
            return
        deform = row.get("deformation", {}).get("tnorm_px", {}).get("median", "absent")
        note = "" if deform == "absent" else \
            f"; median T-norm of successful flows {'-' if deform is None else f'{deform:.3f} px'}"
        at = row.get("deformation", {}).get("acc_at_budget_px")
        if at:
            note += "; accuracy at " + ", ".join(f"{b} px {100 * a:.1f}%" for b, a in at.items())
        say(f"adv   - acc: {row['acc']:.4f}  ({row['label']}: {100 * row['success_rate']:.1f}% success, "
            f"{row['n_success']} of {row['n_clean_correct']} correctly classified points fooled{note})")

    size = loader.dataset[0][0].shape[-1]
    rows, _ = run_attacks(model, loader, device, args, n=n, n_total=n_total, n_classes=n_classes, image_size=size,
                          results=results, table=table, say=say, line=line,
                          on_clean=lambda acc: say(f"val   - acc: {acc:.4f}  ({n} test images)"))
    record["checks"], record["warnings"] = masking_checks(results.rows)  # every row of the file: earlier runs too
    for text in check_lines(record["checks"]):
        say(text)
    for w in record["warnings"]:
        say(f"warning: {w}")
    md = results.write(table)
    say(f"wrote {results.path} and {md}")
    return record


if __name__ == "__main__":
    main(get_args())
