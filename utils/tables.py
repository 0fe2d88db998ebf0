"""The papers' tables from the result files of both evaluate scripts.

    python -m utils.tables --result_path results [--format markdown|latex|csv] [--out results/table.md]

One row per recipe and set of test points: runs whose training settings differ only in the seed (distinct
checkpoints, by SHA-256; copies of one result count once) are one row, mean ± std over them with n per cell; a
checkpoint evaluated on all test points and on a subset gives two rows, each with the clean accuracy measured on its
own points (``points``), so no number stands beside numbers from other test points. One column per attack row label
(``flow``, ``flow [flow_steps=1]``, ``PGD500``, ...) after the clean accuracy, in %; a minimum-deformation attack
(stAdv, ADef without a cap) adds its robust accuracy at each deformation budget (``adef @1px``, %) and its median
minimal deformation (``adef median px``, pixels of T-norm; inf where most points were never fooled).
Where the authors' numbers are known (FGR, CIFAR-10, VGG-11, lambda 0/100/200/300, all 10,000 test images: their
result files) they stand beside ours on the same points. Every file of the folder that is not used is named with the
reason. The table is printed and written to ``--out`` (default ``<result_path>/table.<md|tex|csv>``).
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
PUBLISHED_N = 10000  # the authors' numbers are on the whole CIFAR-10 test set

# training flags that choose how a run executes, not what it learns: runs differing only in these (and the seed)
# are seeds of one recipe
EXECUTION = {"seed", "bar", "workers", "device", "data_path", "weight_path", "result_path", "model_save_path",
             "model_load_path", "resume", "overwrite", "verify_data", "device_data", "channels_last", "compile",
             "sync_bn", "batched_eot", "eot_batch", "amp", "use_amp", "explicit"}
DEFAULT_LOSS = {"gsem": "mixed", "mart": "mart", "awp": "mart"}  # a GSeM script's loss when it is its method


def on_authors_points(run: dict, n) -> bool:
    """Whether a run was measured where the authors' numbers were: CIFAR-10, VGG-11, all 10,000 test images."""
    return (run["dataset"], run["model"]) == ("cifar10", "vgg11") and n in (None, PUBLISHED_N)


def strip_n(label: str) -> str:
    """A row label without its ``n=<points>`` setting (the points are a column of their own)."""
    label = re.sub(r"(, )?\bn=\d+", "", label).replace("[, ", "[")
    return label.replace(" []", "")


def _fgr_run(a: dict) -> dict:
    lamb = a.get("fgr_lamb", 0.0) or 0.0
    method = a.get("reg", "fgr").upper() if lamb > 0 else "plain"
    if a.get("loss") not in (None, "fgr", "igr"):  # main.py --loss: another objective, the flow attack its attack
        method = f"{a['loss']} (flow)"
    if a.get("adv_train", "none") != "none":
        method += " + flow AT"
    return {"dataset": a.get("data_name"), "model": a.get("model_name"), "method": method,
            "setting": f"λ={lamb:g}" if lamb > 0 else "", "lamb": float(lamb)}


def _gsem_run(record: dict) -> dict:
    a = record.get("train_args") or {}
    method = a.get("method", "?")
    loss = a.get("loss")
    if loss and loss != DEFAULT_LOSS.get(method, loss):
        method = loss  # train_gsem.py --loss pgd_at is PGD-AT
    return {"dataset": record.get("dataset_name"), "model": record.get("model"), "method": method,
            "setting": f"α={record['alpha']}, β={record['beta']}" if record.get("alpha") is not None else ""}


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def entries_of(record, name: str) -> list[dict]:
    """The entries of one result file of either evaluate script (the shared layout, ``format`` 2, or the earlier
    per-script layouts, or the authors' ``val_acc``/``adv_acc`` files), one per set of test points:
    ``{"run", "recipe", "key", "n", "clean", "cols": {column: accuracy}, "rows": {label: row}}``. Raises
    ValueError (the reason) for a file that is not one."""
    if not isinstance(record, dict):
        raise ValueError(f"not a result file (a JSON {type(record).__name__}, not an object)")
    train = record.get("train_args") if isinstance(record.get("train_args"), dict) else None
    if record.get("script") == "evaluate_gsem.py" or "results" in record:
        run = _gsem_run(record)
    elif train or isinstance(record.get("args"), dict):
        run = _fgr_run(train or record["args"])
    else:
        run = {"dataset": "–", "model": "–", "method": name, "setting": ""}
    recipe = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in (train or {}).items() if k not in EXECUTION))
    source = (record.get("checkpoint_sha256"), (record.get("data") or {}).get("sha256")
              if isinstance(record.get("data"), dict) else None)
    groups: dict = {}

    def group(n):
        key = (source, n) if source[0] else (name, n)
        return groups.setdefault(n, {"run": run, "recipe": recipe, "key": key, "n": n, "clean": None, "cols": {},
                                     "rows": {}, "seed": (train or {}).get("seed", 0)})

    if record.get("format") == 2:
        rows = record.get("rows")
        if not isinstance(rows, dict) or not all(isinstance(r, dict) and _num(r.get("acc")) is not None
                                                 for r in rows.values()):
            raise ValueError("its rows are not an object of rows with an accuracy")
        cleans = [c for c in [record.get("clean"), *(record.get("cleans") or {}).values()] if isinstance(c, dict)]
        for c in cleans:
            if _num(c.get("acc")) is not None and isinstance(c.get("n"), int):
                group(c["n"])["clean"] = c["acc"]
        only = groups.copy().popitem()[0] if len(groups) == 1 else None  # one clean measurement: its points
        for label, r in rows.items():
            n = r.get("n_examples") if isinstance(r.get("n_examples"), int) else only
            g = group(n)
            if g["clean"] is None and _num(r.get("clean_acc")) is not None:
                g["clean"] = r["clean_acc"]
            if g["clean"] is None and n and isinstance(r.get("n_clean_correct"), int):
                g["clean"] = r["n_clean_correct"] / n  # measured with the row, on its points
            col = strip_n(label)
            g["rows"][col], g["cols"][col] = r, r["acc"]
            deform = r.get("deformation") if isinstance(r.get("deformation"), dict) else {}
            for b, acc in (deform.get("acc_at_budget_px") or {}).items():
                g["cols"][f"{col} @{b}px"] = acc
            if "median_min_tnorm_px" in deform:
                median = deform["median_min_tnorm_px"]  # "inf" (never fooled), or null in files before "inf"
                g["cols"][f"{col} median px"] = float("inf") if median in (None, "inf") else median
    elif "val_acc" in record and isinstance(record.get("attacks"), dict):  # evaluate.py, format 1
        g = group(record.get("val_n") if isinstance(record.get("val_n"), int) else None)
        g["clean"] = record["val_acc"]
        for k, r in record["attacks"].items():
            g["rows"][k] = r
            g["cols"][k] = r["acc"]
    elif "results" in record and isinstance(record["results"], dict):  # evaluate_gsem.py, format 1 ("Clean" a row)
        g = group(None)
        for k, r in record["results"].items():
            if k == "Clean":
                g["clean"] = r["acc"]
            else:
                g["rows"][k], g["cols"][k] = r, r["acc"]
    elif _num(record.get("val_acc")) is not None and _num(record.get("adv_acc")) is not None:  # the authors' files
        g = group(None)
        g["clean"], g["cols"]["flow"], g["rows"]["flow"] = record["val_acc"], record["adv_acc"], {
            "acc": record["adv_acc"], "attack": "flow"}
    elif "epochs" in record and "args" in record:
        raise ValueError("a training log, not evaluation results")
    else:
        raise ValueError("not a result file of evaluate.py or evaluate_gsem.py")
    for g in groups.values():
        if not all(_num(v) is not None for v in g["cols"].values()) or (g["clean"] is not None and
                                                                         _num(g["clean"]) is None):
            raise ValueError("an accuracy that is not a number")
    return [g for g in groups.values() if g["cols"] or g["clean"] is not None]


def collect(result_path: str, say=None) -> list[dict]:
    """Every result file under ``result_path`` (recursively) as :func:`entries_of` entries; copies of one result (same
    checkpoint, test data and points) count once. Every JSON file not used is named with its reason through ``say``
    (default: stderr)."""
    say = say or (lambda text: print(text, file=sys.stderr))
    entries: dict = {}
    for path in sorted(glob.glob(os.path.join(result_path, "**", "*.json"), recursive=True)):
        rel = os.path.relpath(path, result_path)
        try:
            with open(path, encoding="utf-8") as f:
                found = entries_of(json.load(f), os.path.splitext(os.path.basename(path))[0])
        except UnicodeDecodeError:
            say(f"note: skipped {rel}: not UTF-8 text")
            continue
        except json.JSONDecodeError as e:
            say(f"note: skipped {rel}: not valid JSON ({e.msg}, line {e.lineno})")
            continue
        except OSError as e:
            say(f"note: skipped {rel}: cannot be read ({e.strerror or e})")
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            say(f"note: skipped {rel}: {e if isinstance(e, ValueError) else 'not a result file (unexpected layout)'}")
            continue
        for entry in found:
            entry["file"] = rel
            first = entries.get(entry["key"])
            if first is None:
                entries[entry["key"]] = entry
                continue
            new = [c for c in entry["cols"] if c not in first["cols"]]
            first["cols"].update({c: entry["cols"][c] for c in new})
            first["rows"].update({c: entry["rows"][c] for c in new if c in entry["rows"]})
            say(f"note: {rel}: the same checkpoint evaluated on the same points as {first['file']} (a copy): counted "
                f"once" + (f", adding its columns {', '.join(new)}" if new else ""))
    return list(entries.values())


def collect_or_exit(result_path: str) -> list[dict]:
    """:func:`collect`, or one error line and exit status 2 when the folder holds no result file (both CLIs)."""
    entries = collect(result_path)
    if not entries:
        print(f"error: no result files of evaluate.py or evaluate_gsem.py in {result_path}", file=sys.stderr)
        raise SystemExit(2)
    return entries


def _column_order(col: str):
    """clean first, then the authors' flow attack, then by label, a label's budgets in increasing order."""
    m = re.fullmatch(r"(.*) @([0-9.]+)px", col)
    stem, budget = (m.group(1), float(m.group(2))) if m else (col.removesuffix(" median px"), -math.inf)
    return (col != "clean", stem != "flow", stem, col.endswith(" median px"), budget)


def _recipe_key(e: dict) -> tuple:
    run = e["run"]
    return run["dataset"], run["model"], run["method"], run["setting"], e["recipe"]


def settings(entries) -> dict:
    """Per recipe (:func:`_recipe_key`), its setting cell: lambda or alpha/beta, and the training settings that tell
    it from other recipes of the same dataset, model and method."""
    families: dict = {}
    for key in {_recipe_key(e) for e in entries}:
        families.setdefault(key[:3], []).append(key)
    out = {}
    for keys in families.values():
        recipes = {key: dict(key[4]) for key in keys}
        varying = sorted({k for r in recipes.values() for k in r if len({q.get(k) for q in recipes.values()}) > 1})
        for key in keys:
            own = [f"{k}={json.loads(recipes[key][k]) if k in recipes[key] else '–'}" for k in varying
                   if k not in ("fgr_lamb", "alpha", "beta")]
            out[key] = ", ".join(([key[3]] if key[3] else []) + own)
    return out


def run_names(entries) -> dict:
    """Each entry's name in a figure: ``<dataset> <model> <method> <setting>`` as the table's row, its seed where
    seeds of one recipe stand side by side, its number of test points where the entries have several."""
    cells = settings(entries)
    names = {id(e): " ".join(str(v) for v in (*_recipe_key(e)[:3], cells[_recipe_key(e)]) if v and v != "–")
             for e in entries}
    several = len({e["n"] for e in entries}) > 1
    for e in entries:
        twins = [f for f in entries if names[id(f)] == names[id(e)] and f["n"] == e["n"]]
        seed = f" seed {e['seed']}" if len(twins) > 1 else ""
        points = f" (n={e['n']})" if several else ""
        e["name"] = names[id(e)] + seed + points
    return {id(e): e["name"] for e in entries}


def _cell(vals: list, col: str, runs: int) -> str:
    if not vals:
        return "–"
    scale = 1 if col.endswith(" px") else 100  # a deformation in pixels, else an accuracy in %
    count = f" (n={len(vals)})" if runs > 1 else ""
    if len(vals) == 1:
        return f"{scale * vals[0]:.2f}{count}"
    if any(v == float("inf") for v in vals):
        return f"{statistics.median(vals):.2f} (median){count}"
    return f"{scale * statistics.fmean(vals):.2f} ± {scale * statistics.stdev(vals):.2f}{count}"


def build_table(entries, columns_like=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings, accuracies in %): entries of one recipe on the same points merged (mean ± std, n
    runs per cell); ``columns_like``: regular expressions, a column is kept if one matches it (``clean`` always)."""
    groups: dict[tuple, dict] = {}
    for e in entries:
        run = e["run"]
        key = (*_recipe_key(e), e["n"])
        g = groups.setdefault(key, {"run": run, "n": e["n"], "runs": 0, "accs": {}})
        g["runs"] += 1
        for col, acc in [*([("clean", e["clean"])] if e["clean"] is not None else []), *e["cols"].items()]:
            g["accs"].setdefault(col, []).append(acc)
    columns = []
    for g in groups.values():
        columns += [c for c in g["accs"] if c not in columns and (c == "clean" or not columns_like or any(
            re.fullmatch(p, c) for p in columns_like))]
    columns.sort(key=_column_order)

    def paper(g):
        run = g["run"]
        on_theirs = run["method"] in ("FGR", "plain") and on_authors_points(run, g["n"])
        return PUBLISHED.get((run["dataset"], run["model"], run.get("lamb"))) if on_theirs else None

    published = any(paper(g) for g in groups.values())
    header = ["dataset", "model", "method", "setting", "points", *columns] + (
        ["clean (paper)", "flow (paper)"] if published else [])
    cells_of = settings(entries)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in (*k[:4], cells_of[k[:5]], k[5]))):
        g = groups[key]
        cells = [_cell(g["accs"].get(col, []), col, g["runs"]) for col in columns]
        if published:
            p = paper(g)
            cells += [f"{100 * p[0]:.2f}", f"{100 * p[1]:.2f}"] if p else ["–", "–"]
        rows.append([str(key[0]), str(key[1]), str(key[2]), cells_of[key[:5]], str(g["n"] or "–")] + cells)
    return header, rows


def render(header, rows, fmt: str) -> str:
    """The table as markdown, LaTeX (booktabs) or CSV."""
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
    entries = collect_or_exit(args.result_path)
    text = render(*build_table(entries, args.columns), args.format)
    suffix = {"markdown": "md", "latex": "tex", "csv": "csv"}[args.format]
    out = args.out or os.path.join(args.result_path, f"table.{suffix}")
    atomic_write_text(out, text)
    print(text + f"wrote {out}")
    return text


if __name__ == "__main__":
    main()
