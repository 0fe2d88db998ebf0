"""Figures from the result JSON files written by ``evaluate.py``:

- the FGR paper's figure: clean accuracy against adversarial accuracy, one point per run (lambda), one panel per
  attack row (FILE.png, FILE.pdf); ``--reference`` adds the authors' CIFAR-10 VGG-11 points (flow attack, eps 0.01,
  K 100) to the flow panel;
- robust accuracy against the deformation budget, one curve per run, one panel per attack (FILE_budgets.png and
  .pdf): for a minimum-deformation attack (stAdv, ADef without a cap) the accuracy at each T-norm budget of its row,
  for a budgeted attack run at several budgets (``--flow_eps 0.005 0.01 0.02``) one point per row. These rank
  defences where the minimum-deformation attacks' plain accuracy is 0 for every model.

    python -m utils.plots --result_path results --out figures/cifar10_vgg11.png
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from attacks import ATTACKS

from .tables import PUBLISHED, run_of

# the authors' result files (lambda: (clean, adversarial)), CIFAR-10 VGG-11, flow attack eps 0.01, K 100
REFERENCE_POINTS = {int(lam): v for (_, _, lam), v in PUBLISHED.items()}


def load_results(result_path: str) -> list[dict]:
    """Every FGR result record in ``result_path`` as ``{"val_acc", "attacks": {label: {"acc"}}, "_file", ...}``:
    evaluate.py's files in the shared layout or the earlier one, and the reference's (``val_acc`` and ``adv_acc``)."""
    records = []
    for path in sorted(glob.glob(os.path.join(result_path, "*.json"))):
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(rec, dict) or "val_acc" not in rec:
            continue
        if isinstance(rec.get("rows"), dict):  # the shared layout
            rec["attacks"] = rec["rows"]
        elif "attacks" not in rec and "adv_acc" in rec:  # the reference's files: val_acc and adv_acc only
            rec["attacks"] = {"flow": {"acc": rec["adv_acc"]}}
        if isinstance(rec.get("attacks"), dict):
            rec["_file"] = os.path.basename(path)
            records.append(rec)
    return records


def label_of(rec: dict) -> str:
    """``<dataset> <model> <method> <setting>`` (as the rows of ``utils.tables``)."""
    pair = run_of(rec)
    if pair is None:
        return rec["_file"][:-5]
    run = pair[0]
    return " ".join(str(v) for v in (run["dataset"], run["model"], run["method"], run["setting"]) if v)


def plot(records: list[dict], out: str, reference: bool = False) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["flow", "stadv", "adef"]
    attacks = sorted({name for rec in records for name in rec["attacks"]},
                     key=lambda n: (order.index(n) if n in order else len(order), n))
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.8), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        rows = [(100 * r["val_acc"], 100 * r["attacks"][attack]["acc"], label_of(r), r) for r in records
                if attack in r["attacks"]]
        rows.sort(key=lambda t: t[2])
        for clean, adv, label, _ in rows:
            ax.scatter(clean, adv, s=36, zorder=3)
            ax.annotate(label, (clean, adv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if reference and attack == "flow":
            xs, ys = zip(*[(100 * c, 100 * a) for c, a in REFERENCE_POINTS.values()])
            ax.plot(xs, ys, "k--", marker="x", lw=1, label="authors (λ = 0, 100, 200, 300)")
            ax.legend(fontsize=8, loc="lower left")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.set_title(attack)
        ax.grid(alpha=0.3)
    return save(fig, os.path.splitext(out)[0])


def save(fig, stem: str) -> list[str]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` (folders made as needed) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = [stem + ".png", stem + ".pdf"]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def budget_curves(records: list[dict]) -> dict:
    """``{panel: {run label: [(budget, accuracy %), ...]}}``: a panel per minimum-deformation row label (x: T-norm
    budget, px) and per budgeted attack with rows at several values of its budget knob (x: the knob, flag units)."""
    panels: dict = {}
    for rec in records:
        run = label_of(rec)
        for label, row in rec["attacks"].items():
            at = row.get("deformation", {}).get("acc_at_budget_px")
            if at:
                curve = [(float(b), 100 * a) for b, a in at.items()]
                panels.setdefault(f"{label}: T-norm budget (px)", {})[run] = curve
                continue
            spec = ATTACKS.get(row.get("attack"))
            if spec is None or spec.budget is None or len(spec.budget.knobs) != 1 or "settings" not in row:
                continue
            knob = spec.budget.knobs[0]
            value = row["settings"].get(knob)
            if value is not None:
                panels.setdefault(f"{row['attack']}: {knob}", {}).setdefault(run, []).append((value, 100 * row["acc"]))
    # a budgeted attack needs two budgets or more to make a curve
    return {p: {r: sorted(v) for r, v in runs.items()} for p, runs in panels.items()
            if p.endswith("(px)") or any(len(v) > 1 for v in runs.values())}


def plot_budgets(records: list[dict], out: str) -> list[str]:
    """The budget curves (:func:`budget_curves`) as ``<out stem>_budgets.png`` and ``.pdf``; nothing when no row has
    budgets."""
    panels = budget_curves(records)
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (panel, runs) in zip(axes[0], sorted(panels.items())):
        for run, points in sorted(runs.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", ms=3, label=run)
        title, xlabel = panel.split(": ", 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, os.path.splitext(out)[0] + "_budgets")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--result_path", type=str, default="./results", help="folder of evaluate.py JSON files")
    p.add_argument("--out", type=str, default="./figures/fgr.png", help="output file (PNG; a PDF is written too)")
    p.add_argument("--reference", action="store_true", help="overlay the authors' CIFAR-10 VGG-11 points")
    args = p.parse_args(argv)
    records = load_results(args.result_path)
    if not records:
        print(f"error: no evaluate.py result files (*.json with val_acc) in {args.result_path}", file=sys.stderr)
        raise SystemExit(2)
    for path in plot(records, args.out, args.reference) + plot_budgets(records, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
