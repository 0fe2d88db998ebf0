"""The papers' tables from the result files of both evaluate scripts.

    python -m utils.tables --result_path results [--format markdown|latex|csv] [--out results/table.md]

One row per run (dataset, model, method, and lambda or alpha/beta; runs that differ only in the seed are one row,
mean ± std over them), one column per attack row label (``flow``, ``flow [flow_steps=1]``, ``PGD500``, ...) after
the clean accuracy, in %; a minimum-deformation attack (stAdv, ADef without a cap) adds its robust accuracy at each
deformation budget (``adef @1px``, %) and its median minimal deformation (``adef median px``, pixels of T-norm; inf
where most points were never fooled), which rank models where its plain accuracy is 0 for all.
Where the authors' numbers are known (FGR, CIFAR-10, VGG-11, lambda 0/100/200/300: their
result files) they stand beside ours. The table is printed and written to ``--out`` (default
``<result_path>/table.<md|tex|csv>``).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys

from .results import atomic_write_text

# the FGR authors' result files: (dataset, model, lambda) -> (clean, flow attack eps 0.01, K 100), fractions
PUBLISHED = {("cifar10", "vgg11", lam): v for lam, v in
             {0.0: (0.9027, 0.0641), 100.0: (0.8724, 0.4795), 200.0: (0.8602, 0.5306), 300.0: (0.8536, 0.5515)}.items()}


def _fgr_run(a: dict) -> dict:
    lamb = a.get("fgr_lamb", 0.0) or 0.0
    method = a.get("reg", "fgr").upper() if lamb > 0 else "plain"
    if a.get("adv_train", "none") != "none":
        method += " + flow AT"
    return {"dataset": a.get("data_name"), "model": a.get("model_name"), "method": method,
            "setting": f"λ={lamb:g}" if lamb > 0 else "", "lamb": float(lamb), "seed": a.get("seed", 0)}


def _gsem_run(record: dict) -> dict:
    a = record.get("train_args") or {}
    return {"dataset": record.get("dataset_name"), "model": record["model"], "method": a.get("method", "?"),
            "setting": f"α={record['alpha']}, β={record['beta']}" if record.get("alpha") is not None else "",
            "seed": a.get("seed", 0)}


def run_of(record: dict) -> tuple[dict, dict] | None:
    """``(run description, {column: accuracy})`` of one result file of either evaluate script, in the shared
    layout (``format`` 2) or the earlier per-script layouts; None if it is not one of ours."""
    if not isinstance(record, dict):
        return None
    if record.get("format") == 2 and isinstance(record.get("rows"), dict):
        if record.get("script") == "evaluate_gsem.py":
            run = _gsem_run(record)
        else:
            run = _fgr_run(record.get("train_args") or record.get("args", {}))
        cols = {"clean": record["clean"]["acc"]}
        for label, r in record["rows"].items():
            cols[label] = r["acc"]
            deform = r.get("deformation", {})
            for b, acc in deform.get("acc_at_budget_px", {}).items():
                cols[f"{label} @{b}px"] = acc
            if "median_min_tnorm_px" in deform:
                median = deform["median_min_tnorm_px"]  # "inf" (never fooled), or null in files before "inf"
                cols[f"{label} median px"] = float("inf") if median in (None, "inf") else median
        return run, cols
    if "attacks" in record and "val_acc" in record:  # evaluate.py, format 1
        run = _fgr_run(record.get("train_args") or record.get("args", {}))
        return run, {"clean": record["val_acc"], **{k: r["acc"] for k, r in record["attacks"].items()}}
    if "results" in record and "model" in record:  # evaluate_gsem.py, format 1 ("Clean" was a row)
        rows = {("clean" if k == "Clean" else k): r["acc"] for k, r in record["results"].items()}
        return _gsem_run(record), rows
    return None


def collect(result_path: str) -> list[tuple[dict, dict]]:
    """Every result file under ``result_path`` (recursively), as :func:`run_of` pairs."""
    runs = []
    for path in sorted(glob.glob(os.path.join(result_path, "**", "*.json"), recursive=True)):
        try:
            with open(path) as f:
                pair = run_of(json.load(f))
        except (OSError, json.JSONDecodeError, AttributeError, TypeError):
            continue
        if pair:
            runs.append(pair)
    return runs


def _column_order(col: str):
    """clean first, then the authors' flow attack, then by label, a label's budgets in increasing order."""
    m = re.fullmatch(r"(.*) @([0-9.]+)px", col)
    stem, budget = (m.group(1), float(m.group(2))) if m else (col.removesuffix(" median px"), -math.inf)
    return (col != "clean", stem != "flow", stem, col.endswith(" median px"), budget)


def build_table(runs, columns_like=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings, accuracies in %) with runs differing only in the seed merged (mean ± std);
    ``columns_like``: regular expressions, a column is kept if one matches it (``clean`` always)."""
    groups: dict[tuple, dict] = {}
    for run, accs in runs:
        key = (run["dataset"], run["model"], run["method"], run["setting"])
        g = groups.setdefault(key, {"run": run, "accs": {}})
        for col, acc in accs.items():
            g["accs"].setdefault(col, []).append(acc)
    columns = []
    for g in groups.values():
        columns += [c for c in g["accs"] if c not in columns and (c == "clean" or not columns_like or any(
            re.fullmatch(p, c) for p in columns_like))]
    columns.sort(key=_column_order)
    published = any((g["run"]["dataset"], g["run"]["model"], g["run"].get("lamb")) in PUBLISHED
                    and g["run"]["method"] in ("FGR", "plain") for g in groups.values())
    header = ["dataset", "model", "method", "setting", *columns] + (["clean (paper)", "flow (paper)"] if published
                                                                     else [])
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        g = groups[key]
        cells = []
        for col in columns:
            vals = g["accs"].get(col, [])
            scale = 1 if col.endswith(" px") else 100  # a deformation in pixels, else an accuracy in %
            if not vals:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(f"{scale * vals[0]:.2f}")
            elif any(v == float("inf") for v in vals):
                cells.append(f"{statistics.median(vals):.2f} (median, n={len(vals)})")
            else:
                mean, std = scale * statistics.fmean(vals), scale * statistics.stdev(vals)
                cells.append(f"{mean:.2f} ± {std:.2f} (n={len(vals)})")
        if published:
            paper = PUBLISHED.get((g["run"]["dataset"], g["run"]["model"], g["run"].get("lamb")))
            ok = paper and g["run"]["method"] in ("FGR", "plain")
            cells += [f"{100 * paper[0]:.2f}", f"{100 * paper[1]:.2f}"] if ok else ["–", "–"]
        rows.append([str(v) for v in key] + cells)
    return header, rows


def render(header, rows, fmt: str) -> str:
    if fmt == "csv":
        return "\n".join(",".join(f'"{c}"' if "," in c else c for c in line) for line in [header, *rows]) + "\n"
    if fmt == "latex":
        body = [" & ".join(c.replace("±", r"$\pm$").replace("_", r"\_") for c in line) + r" \\" for line in rows]
        head = " & ".join(c.replace("_", r"\_") for c in header) + r" \\"
        return "\n".join([r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}", r"\toprule", head,
                          r"\midrule", *body, r"\bottomrule", r"\end{tabular}"]) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--result_path", type=str, default="./results", help="folder searched (recursively) for result JSON")
    p.add_argument("--format", type=str, default="markdown", choices=["markdown", "latex", "csv"], help="table format")
    p.add_argument("--out", type=str, default=None, help="output file (default <result_path>/table.<md|tex|csv>)")
    p.add_argument("--columns", type=str, nargs="+", default=None,
                   help="keep only the columns matching one of these regular expressions (clean is always kept)")
    args = p.parse_args(argv)
    runs = collect(args.result_path)
    if not runs:
        print(f"error: no result files of evaluate.py or evaluate_gsem.py in {args.result_path}", file=sys.stderr)
        raise SystemExit(2)
    text = render(*build_table(runs, args.columns), args.format)
    suffix = {"markdown": "md", "latex": "tex", "csv": "csv"}[args.format]
    out = args.out or os.path.join(args.result_path, f"table.{suffix}")
    atomic_write_text(out, text)
    print(text + f"wrote {out}")
    return text


if __name__ == "__main__":
    main()
