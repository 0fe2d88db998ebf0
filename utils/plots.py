"""Figures from the result files of both evaluate scripts (read as ``utils.tables`` reads them: one entry per
checkpoint and set of test points, copies once, every file not used named with its reason):

- the FGR paper's figure: clean accuracy against adversarial accuracy, one point per run, one panel per attack row
  at its default budget (FILE.png, FILE.pdf), in a grid; ``--reference`` adds the authors' CIFAR-10 VGG-11 points
  (flow attack, eps 0.01, K 100, all 10,000 test images) to the flow panel, or says why it adds nothing;
- robust accuracy against the budget, one panel per attack and budget, one curve per run (FILE_budgets.png and .pdf):
  for a minimum-deformation attack (stAdv, ADef without a cap) the accuracy at each T-norm budget of its row; for a
  budgeted attack run at several budgets (``--flow_eps 0.005 0.01 0.02``, ``--eps 2 4 8 16``, ``--rt_max_rotation
  10 30``) one point per row. A curve joins only rows of one checkpoint measured on the same points, at the same
  other settings; an attack needs two budgets or more to make a curve.

Every point's clean accuracy is measured on the points of its attack row. Titles name an attack as the tables' columns
do (``name [settings off their defaults]``); the number of test points is in the legend.

    python -m utils.plots --result_path results --out figures/cifar10_vgg11.png
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import textwrap

import torch

from attacks import ATTACKS

from .results import atomic_write_text
from .tables import PUBLISHED, PUBLISHED_N, collect_or_exit, on_authors_points, run_names

# the authors' result files (lambda: (clean, adversarial)), CIFAR-10 VGG-11, flow attack eps 0.01, K 100
REFERENCE_POINTS = {int(lam): v for (_, _, lam), v in PUBLISHED.items()}
COLUMNS = 3  # panels per line of the grid
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def _swept(label: str, row: dict) -> bool:
    """Is a budget knob off its default in this row (a point of a budget sweep, not the attack at its default)?"""
    spec = ATTACKS.get(row.get("attack")) if isinstance(row, dict) else None
    return bool(spec and spec.budget and any(re.search(rf"\b{k}=", label) for k in spec.budget.knobs))


def _grid(count: int, width: float = 4.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(COLUMNS, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _wrap(title: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(title, width, break_long_words=True)) or title


def _colours(names) -> dict:
    """One colour per curve name, the same in every panel (one legend for the figure)."""
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(names))}


def _finish(fig, axes, stem: str) -> list[str]:
    """One legend below the panels (every name once), then PNG and PDF."""
    handles = {}
    for ax in axes:
        for h, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, h)
    ncol = 1 if max(map(len, handles), default=0) > 60 else 2
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_rows = math.ceil(len(handles) / ncol)
    height = fig.get_size_inches()[1]
    fig.set_size_inches(fig.get_size_inches()[0], height + 0.2 * legend_rows)
    fig.tight_layout(rect=(0, 0.2 * legend_rows / (height + 0.2 * legend_rows) + 0.01, 1, 1))
    return save(fig, stem)


def plot(entries: list[dict], out: str, reference: bool = False, say=print) -> list[str]:
    """The paper figure (clean against adversarial accuracy per attack row at its default budget); [] if none."""
    panels = sorted({c for e in entries for c, row in e["rows"].items() if not _swept(c, row)},
                    key=lambda c: (c.split(" [")[0] not in ("flow", "stadv", "adef"), c))
    if not panels:
        return []
    names = run_names(entries)
    colour = _colours(set(names.values()))
    fig, axes = _grid(len(panels))
    added = False
    for ax, col in zip(axes, panels):
        points = sorted((names[id(e)], 100 * e["clean"], 100 * e["cols"][col]) for e in entries
                        if col in e["cols"] and e["clean"] is not None)
        for name, clean, adv in points:
            ax.scatter(clean, adv, s=30, zorder=3, label=name, color=colour[name])
        xs = [c for _, c, _ in points]
        theirs = any(on_authors_points(e["run"], e["n"]) for e in entries if col in e["cols"])
        if reference and col == "flow" and theirs:
            ref = [(100 * c, 100 * a) for c, a in REFERENCE_POINTS.values()]
            ax.plot(*zip(*ref), "k--", marker="x", lw=1, label="authors (λ = 0, 100, 200, 300; 10,000 points)")
            xs += [c for c, _ in ref]
            added = True
        if xs:  # a readable axis even for one point: at least 10 points of accuracy wide
            mid, half = (min(xs) + max(xs)) / 2, max(5.0, (max(xs) - min(xs)) / 2 + 2)
            ax.set_xlim(max(-2, mid - half), min(102, mid + half))
        ax.set_ylim(-2, 102)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.set_title(_wrap(col), fontsize=9)
        ax.grid(alpha=0.3)
    if reference and not added:
        say("note: --reference adds nothing: the authors' points are CIFAR-10 VGG-11 under the flow attack at its "
            f"defaults on all {PUBLISHED_N} test images, and no result here is one")
    return _finish(fig, axes, os.path.splitext(out)[0])


def machine_note(trained_s: float, total_s: float) -> str:
    """Where and how long a demonstration ran: the CPU, its cores, torch, minutes of training and of evaluation."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}: "
            f"{trained_s / 60:.1f} min of training, {(total_s - trained_s) / 60:.1f} min of evaluation")


def to_docs(doc: str, tag: str, table: str, figure: str, png: str, *, command: str, note: str, alt: str,
            docs: str = DOCS) -> None:
    """A demonstration's results into ``<docs>/<doc>``: the block between ``<!-- <tag>:start -->`` and
    ``<!-- <tag>:end -->`` (appended when absent) becomes the command, ``note``, ``table`` and the figure, copied from
    ``figure`` to ``<docs>/<png>``."""
    os.makedirs(os.path.dirname(os.path.join(docs, png)), exist_ok=True)
    shutil.copy(figure, os.path.join(docs, png))
    path = os.path.join(docs, doc)
    with open(path) as f:
        text = f.read()
    block = (f"<!-- {tag}:start -->\nCommand: `{command.strip()}`; measured on {note}.\n\n{table}\n![{alt}]({png})\n"
             f"<!-- {tag}:end -->")
    pattern = rf"<!-- {re.escape(tag)}:start -->.*<!-- {re.escape(tag)}:end -->"
    text = re.sub(pattern, lambda _: block, text, flags=re.S) if re.search(pattern, text, flags=re.S) else \
        f"{text}\n{block}\n"
    atomic_write_text(path, text)


def save(fig, stem: str) -> list[str]:
    """Write ``fig`` (laid out) as ``<stem>.png`` and ``<stem>.pdf`` (folders made as needed) and close it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = [stem + ".png", stem + ".pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight", pad_inches=0.1)  # a wide legend stays whole
    plt.close(fig)
    return paths


def budget_curves(entries: list[dict]) -> dict:
    """``{(title, x): {curve name: [(budget, accuracy %), ...]}}``: a panel per minimum-deformation row label
    (x: ``T-norm budget (px)``) and per budgeted attack and budget knob with rows at two values or more of that knob
    (x: the knob's name, values in flag units); a curve per entry (checkpoint and points) and other settings of the
    attack."""
    names = run_names(entries)
    panels: dict = {}
    for e in entries:
        for col, row in e["rows"].items():
            at = (row.get("deformation") or {}).get("acc_at_budget_px") if isinstance(row, dict) else None
            if at:
                panels.setdefault((col, "T-norm budget (px)"), {})[names[id(e)]] = [(float(b), 100 * a)
                                                                                  for b, a in at.items()]
                continue
            spec = ATTACKS.get(row.get("attack"))
            if spec is None or spec.budget is None or not isinstance(row.get("settings"), dict):
                continue
            for k in spec.budget.knobs:
                value = row["settings"].get(k)
                if not isinstance(value, (int, float)):
                    continue
                rest = re.sub(rf"(, )?\b{k}=[^,\]]*", "", col).replace("[, ", "[").replace(" []", "")
                curve = panels.setdefault((spec.name, k), {}).setdefault((names[id(e)], rest), [])
                curve.append((value, 100 * row["acc"]))
    out = {}
    for panel, curves in panels.items():
        if panel[1].startswith("T-norm"):
            out[panel] = {name: sorted(points) for name, points in curves.items()}
            continue
        kept = {key: sorted(points) for key, points in curves.items() if len({x for x, _ in points}) > 1}
        variants = {name for name, _ in kept if sum(n == name for n, _ in kept) > 1}  # one run, several settings
        if kept:
            out[panel] = {name + (f" · {rest}" if name in variants else ""): points
                          for (name, rest), points in kept.items()}
    return out


def plot_budgets(entries: list[dict], out: str) -> list[str]:
    """The budget curves (:func:`budget_curves`) as ``<out stem>_budgets.png`` and ``.pdf``; nothing when no row has
    budgets."""
    panels = budget_curves(entries)
    if not panels:
        return []
    colour = _colours({name for curves in panels.values() for name in curves})
    fig, axes = _grid(len(panels), width=5.2, height=3.8)
    for ax, ((title, xlabel), curves) in zip(axes, sorted(panels.items())):
        for name, points in sorted(curves.items()):
            ax.plot(*zip(*points), marker="o", ms=3, label=name, color=colour[name])
        xs = [x for points in curves.values() for x, _ in points]
        if min(xs) > 0 and max(xs) / min(xs) >= 8:  # budgets doubling: equal steps on a log axis
            ax.set_xscale("log", base=2)
            ticks = sorted(set(xs))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_title(_wrap(title), fontsize=9)
        unit = next((k.unit for k in getattr(ATTACKS.get(title), "knobs", ()) if k.name == xlabel and k.unit), "")
        ax.set_xlabel(_wrap(f"{xlabel} ({unit})" if unit else xlabel, 60), fontsize=9)
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    return _finish(fig, axes, os.path.splitext(out)[0] + "_budgets")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--result_path", type=str, default="./results",
                   help="folder searched (recursively) for result JSON of either evaluate script")
    p.add_argument("--out", type=str, default="./figures/fgr.png", help="output file (PNG; a PDF is written too)")
    p.add_argument("--reference", action="store_true", help="overlay the authors' CIFAR-10 VGG-11 points")
    args = p.parse_args(argv)
    entries = collect_or_exit(args.result_path)
    paths = plot(entries, args.out, args.reference) + plot_budgets(entries, args.out)
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
