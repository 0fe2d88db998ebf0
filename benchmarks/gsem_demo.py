"""GSeM's claims on real digits, in one command: trains GSeM models, the paper's ablation and the baselines on the
built-in ``digits`` (scikit-learn's handwritten digits, 32 x 32) through the real training scripts, evaluates every
model through ``evaluate_gsem.py`` (the paper's suite with the corrected gradient and EOT, the masked-gradient PGD,
gradient-free Square, a transfer attack, robust accuracy against eps, noise draws) and gives each model a
gradient-masking verdict from the declared checks (``utils.evaluation.masking_checks`` and ``sanity_checks``).

    python benchmarks/gsem_demo.py --docs     # 2-core CPU: 46 min of training, 42 min of attacks; docs/gsem.md
    python benchmarks/gsem_demo.py --quick    # the same pipeline at toy size, about a minute (the suite runs it)

Models (``--dataset_name digits``, batch 64, lr 0.05 with x0.1 at 70 % of the epochs, one reload, PGD-10 at 8/255
with EOT 4 and 4 noisy passes per update; the reference recipe's EOT 10/10, batch 256, lr 0.01 and 150 x 5 epochs
do not fit a CPU; MART and MART + AWP at the reference's lr 0.01, where they train): on ``GSeMSmallCNN``
(``smallcnn`` with a GSeM(16) module after its first conv-BN-ReLU):
GSeM with gradient-corrected AT (``train_gsem.py``), the paper's ablation ``--gradient_correction none`` (also
``attack`` and ``update`` with ``--ablations none attack update``), GSeM-MART, GSeM-AWP; the baselines PGD-AT and
TRADES on ``smallcnn`` (the same network without GSeM), and the control ``mixed`` (GSeM's objective on
``smallcnn``: is it the module or the objective?); and GSeM-ResNet-18 with corrected AT beside PGD-AT on
ResNet-18, for ``--resnet_epochs`` 10 with PGD-5, EOT 2 and 2 passes per update (ResNet-18's cost on 2 cores).

Evaluation on the first ``--n`` test digits (100 for the ResNets): Clean; PGD500, CW100, APGD500 and AutoAttack
(the reference's AA-10it) with the corrected gradient, EOT ``--eot`` and every iteration count times ``--steps_scale``
(in the row labels); PGD500 with the masked gradient (``PGD-uncorrected``); ``Square`` alone (AutoAttack's 5000
queries, scaled); ``transfer`` (PGD500 on the PGD-AT model of the same family, applied to the model; TRADES for
PGD-AT itself); PGD500 at twice the EOT over 3 noise draws (mean +- std; the EOT check); PGD500 at eps 2-64/255 (the
curve); the sanity checks (unbounded PGD reaches 0, PGD500 not weaker than PGD-10). ``--reuse`` keeps trained models
and finished evaluations in ``--out``.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


import evaluate_gsem  # noqa: E402
import train_gsem  # noqa: E402
import train_gsem_awp  # noqa: E402
import train_gsem_mart  # noqa: E402
from utils import plots  # noqa: E402
from utils.evaluation import check_lines  # noqa: E402
from utils.results import atomic_write_text, write_json  # noqa: E402

SCRIPTS = {"train_gsem.py": train_gsem, "train_gsem_mart.py": train_gsem_mart, "train_gsem_awp.py": train_gsem_awp}
SMALL, PLAIN = ["--classifier_name", "GSeMSmallCNN"], ["--classifier_name", "smallcnn", "--gra_eot_num", "1"]
RESNET = ["--attack_steps", "5", "--att_eot_num", "2", "--gra_eot_num", "2"]
MART_LR = ["--lr", "0.01"]  # the reference's learning rate (after the schedule's 0.05, so it wins)
# key -> (row name, training script, flags, surrogate of the transfer attack)
MODELS = {
    "gsem": ("GSeM, corrected AT", "train_gsem.py", SMALL, "pgd-at"),
    "gsem-none": ("GSeM, no correction (ablation)", "train_gsem.py", SMALL + ["--gradient_correction", "none"],
                  "pgd-at"),
    "gsem-attack": ("GSeM, correction in the attack only", "train_gsem.py",
                    SMALL + ["--gradient_correction", "attack"], "pgd-at"),
    "gsem-update": ("GSeM, correction in the update only", "train_gsem.py",
                    SMALL + ["--gradient_correction", "update"], "pgd-at"),
    # MART at lr 0.05 (and 0.02) stays a flat network at chance (loss 2.41 = ln 10 + the boosted term) for the whole
    # schedule; at the reference's 0.01 it leaves chance in its fourth epoch
    "gsem-mart": ("GSeM-MART (lr 0.01)", "train_gsem_mart.py", SMALL + MART_LR, "pgd-at"),
    "gsem-awp": ("GSeM-AWP (MART + AWP, lr 0.01)", "train_gsem_awp.py", SMALL + MART_LR, "pgd-at"),
    "pgd-at": ("PGD-AT (smallcnn, no GSeM)", "train_gsem.py", PLAIN + ["--loss", "pgd_at"], "trades"),
    "trades": ("TRADES (smallcnn, no GSeM)", "train_gsem.py", PLAIN + ["--loss", "trades"], "pgd-at"),
    # the control: GSeM's objective (half the batch adversarial) without the module
    "mixed": ("GSeM's AT without GSeM (smallcnn)", "train_gsem.py", PLAIN, "pgd-at"),
    "gsem-resnet18": ("GSeM-ResNet-18, corrected AT", "train_gsem.py", ["--classifier_name", "GSeMResNet18"] + RESNET,
                      "pgd-at-resnet18"),
    "pgd-at-resnet18": ("PGD-AT (ResNet-18, no GSeM)", "train_gsem.py",
                        ["--classifier_name", "resnet18", "--loss", "pgd_at"] + RESNET + ["--gra_eot_num", "1"],
                        "pgd-at"),
}
SUITE = ["Clean", "PGD500", "PGD-uncorrected", "CW100", "APGD500", "AA", "Square", "transfer"]
COLUMNS = [("PGD500", "PGD"), ("PGD-uncorrected", "PGD, masked grad."), ("CW100", "CW"), ("APGD500", "APGD"),
           ("AA", "AA-10it"), ("Square", "Square"), ("transfer", "transfer")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=str, default="", help="folder of checkpoints and result files (default "
                   "results/gsem_demo, results/gsem_demo_quick for --quick: --reuse never mixes the two)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each small-CNN model")
    p.add_argument("--resnet_epochs", type=int, default=10, help="training epochs of the ResNet-18 pair")
    p.add_argument("--n", type=int, default=200, help="test digits evaluated (of 300); the ResNets: half")
    p.add_argument("--eot", type=int, default=8,
                   help="EOT passes of the attacks (the reference: 20); the ResNets: half")
    p.add_argument("--steps_scale", type=float, default=0.05, help="iterations of every attack times this")
    p.add_argument("--ablations", nargs="+", default=["none"], choices=["none", "attack", "update"],
                   help="--gradient_correction settings of the ablation")
    p.add_argument("--no_resnet", action="store_true", help="leave out the ResNet-18 pair")
    p.add_argument("--quick", action="store_true", help="toy size (128 training digits, 1 epoch, 16 test digits, "
                   "2-step attacks), GSeM, its ablation and PGD-AT only: the pipeline end to end in about a minute")
    p.add_argument("--reuse", action="store_true", help="keep the models, rows and finished evaluations in --out")
    p.add_argument("--docs", action="store_true", help="write the table and the figure into docs/gsem.md")
    p.add_argument("--no_bar", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    args.out = args.out or ("results/gsem_demo_quick" if args.quick else "results/gsem_demo")
    # the order they run in: the ablations beyond --gradient_correction none last (the table keeps MODELS' order)
    keys = ["gsem"] + (["gsem-none"] if "none" in args.ablations else []) + ["gsem-mart", "gsem-awp", "pgd-at",
                                                                              "trades", "mixed"]
    keys += ([] if args.no_resnet else ["gsem-resnet18", "pgd-at-resnet18"])
    keys += [f"gsem-{a}" for a in args.ablations if a != "none"]
    epochs, n, eot, scale, eps = args.epochs, args.n, args.eot, args.steps_scale, [2, 4, 8, 16, 32, 64]
    train_extra, repeat, surrogate = [], 3, {k: m[3] for k, m in MODELS.items()}
    if args.quick:
        keys, epochs, n, eot, scale, eps, repeat = ["gsem", "gsem-none", "pgd-at"], 1, 16, 2, 0.004, [4, 8, 64], 2
        train_extra = ["--subset", "128", "--attack_steps", "2", "--att_eot_num", "2", "--gra_eot_num", "2"]
        surrogate["pgd-at"] = "gsem"
    schedule = ["--dataset_name", "digits", "--batch_size", "64", "--lr", "0.05", "--reload", "1", "--att_eot_num",
                "4", "--gra_eot_num", "4", "--workers", "0", "--best_acc", "-1"] + (["--no_bar"] if args.no_bar else [])
    t0, paths, trained_s = time.time(), {}, {}
    for key in keys:
        _, script, flags, _ = MODELS[key]
        folder = os.path.join(args.out, "models", key)
        paths[key] = best_checkpoint(folder)
        if args.reuse and paths[key]:
            continue
        start = time.time()
        module = SCRIPTS[script]
        e = epochs if "resnet" not in key or args.quick else args.resnet_epochs
        length = ["--epochs", str(e), "--milestones", str(max(1, math.ceil(0.7 * e)))]
        result = module.main(module.get_args(schedule + length + flags + train_extra + ["--model_save_path", folder,
                                                                                        "--overwrite"]))
        paths[key], trained_s[key] = result["best_file"], time.time() - start
    trained = time.time() - t0
    records = {}
    for key in keys:
        resnet = "resnet" in key
        records[key] = evaluate(paths[key], paths[surrogate[key]], os.path.join(args.out, "results", key),
                                n=max(n // 2, 8) if resnet else n, eot=max(eot // 2, 1) if resnet else eot,
                                scale=scale, eps=eps[:-1] if resnet else eps, repeat=repeat,
                                stochastic=key.startswith("gsem"), amp=resnet, reuse=args.reuse, bar=not args.no_bar)
    seconds = time.time() - t0
    keys = [k for k in MODELS if k in keys]
    summary = summarise(records, keys, eot=eot, n=n)
    note = plots.machine_note(trained, seconds)
    table = markdown(summary, keys)
    figure = plot(summary, keys, os.path.join(args.out, "gsem_demo_eps"))
    write_json(os.path.join(args.out, "gsem_demo.json"), {"note": note, "argv": argv or sys.argv[1:],
                                                          "checkpoints": paths, "train_seconds": trained_s,
                                                          "models": summary})
    atomic_write_text(os.path.join(args.out, "gsem_demo.md"), table)
    print(f"{table}\n{note}\nwrote {os.path.join(args.out, 'gsem_demo.md')}, {os.path.join(args.out, 'gsem_demo.json')}"
          f" and {', '.join(figure)}")
    if args.docs:
        plots.to_docs("gsem.md", "gsem-demo", table, figure[0], "figures/digits_gsem_eps.png", note=note,
                      command=" ".join(["python benchmarks/gsem_demo.py"] + (argv or sys.argv[1:])),
                      alt="robust accuracy under PGD against eps")
    return {"paths": paths, "summary": summary, "table": table, "figure": figure}


def best_checkpoint(folder: str) -> str | None:
    """The model a training script saved under ``folder`` (its best file), if any."""
    found = [f for f in glob.glob(os.path.join(folder, "*", "*.pt")) if not f.endswith(".last.pt")]
    return max(found, key=os.path.getmtime) if found else None


def evaluate(path, surrogate, results, *, n, eot, scale, eps, repeat, stochastic, amp, reuse, bar) -> dict:
    """Three ``evaluate_gsem.py`` runs on one checkpoint, rows accumulating in one result file: the suite; PGD500
    at twice the EOT over ``repeat`` noise draws (GSeM models); PGD500 at every eps of ``eps`` (1/255) with the
    sanity checks. Returns the result record (every row, the checks of all rows and the sanity checks)."""
    done = finished(path, results)
    if reuse and done:  # every row and the sanity checks of an earlier run
        return done
    common = ["--model_load_path", path, "--result_path", results, "--n_examples", str(n), "--steps_scale",
              str(scale), "--workers", "0", "--batch_size", "256"] + ([] if bar else ["--no_bar"]) \
        + (["--amp"] if amp else []) + (["--resume"] if reuse else [])
    evaluate_gsem.main(evaluate_gsem.get_args(common + ["--attacks", *SUITE, "--att_eot_num", str(eot), "--surrogate",
                                                        surrogate, "--no-sanity_checks"]))
    if stochastic:
        evaluate_gsem.main(evaluate_gsem.get_args(common + ["--attacks", "PGD500", "--att_eot_num", str(2 * eot),
                                                            "--repeat", str(repeat), "--no-sanity_checks"]))
    # eps 8 first: the sanity checks run at the first value; its row is the suite's (--resume skips it)
    eps = [8] + [e for e in eps if e != 8]
    return evaluate_gsem.main(evaluate_gsem.get_args(common + ["--attacks", "PGD500", "--att_eot_num", str(eot),
                                                               "--eps", *map(str, eps), "--resume"]))


def finished(path: str, results: str) -> dict | None:
    """The result record of checkpoint ``path`` in ``results`` if its last evaluation (the curve and the sanity
    checks) has finished, else None."""
    stem = os.path.splitext(os.path.basename(path))[0]
    found = glob.glob(os.path.join(results, f"{glob.escape(stem)}_*_eval.json"))
    if not found:
        return None
    with open(found[0]) as f:
        record = json.load(f)
    return record if "sanity" in record else None


def summarise(records: dict, keys, *, eot: int, n: int) -> dict:
    """Per model: clean accuracy, each column's robust accuracy at eps 8/255 (EOT ``eot``), the PGD500 mean +- std at
    twice the EOT, the PGD500 curve against eps, and every check with its outcome."""
    out = {}
    for key in keys:
        record = records[key]
        rows = list(record["rows"].values())

        def pick(attack, eps=8.0, eot_iter=None, repeat=False, rows=rows):
            for r in rows:
                s = r["settings"]
                if r["attack"] == attack and s.get("eps", eps) == eps and (len(r["accs"]) > 1) == repeat \
                        and (eot_iter is None or s.get("eot_iter", eot_iter) == eot_iter):
                    return r
            return None

        e = min((r["settings"].get("eot_iter", 1) for r in rows if r["attack"] == "PGD500"), default=eot)
        cols = {name: (r["acc"] if (r := pick(name, eot_iter=e if name != "transfer" else None)) else None)
                for name, _ in COLUMNS}
        draws = pick("PGD500", eot_iter=2 * e, repeat=True)
        curve = {r["settings"]["eps"]: r["acc"] for r in rows if r["attack"] == "PGD500"
                 and r["settings"].get("eot_iter") == e and len(r["accs"]) == 1}
        checks = {**record.get("checks", {}), **record.get("sanity", {})}
        out[key] = {"name": MODELS[key][0], "checkpoint": record["checkpoint"], "clean": record["clean"]["acc"],
                    "n": record["clean"]["n"], "eot": e, "columns": cols,
                    "pgd_2eot": {"mean": draws["mean"], "std": draws["std"], "accs": draws["accs"],
                                 "eot": 2 * e} if draws else None,
                    "curve": dict(sorted(curve.items())), "checks": checks, "check_lines": check_lines(checks)}
    return out


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(summary: dict, keys) -> str:
    """The demonstration's table: accuracy (%) per attack at eps 8/255, then the verdict of the masking checks."""
    head = ["model", "points", "clean"] + [label for _, label in COLUMNS] + ["PGD, 2x EOT (mean ± std)",
                                                                             "masking checks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        s = summary[key]
        failed = [name for name, c in s["checks"].items() if isinstance(c, dict) and not c.get("passed", True)]
        total = sum(isinstance(c, dict) and "passed" in c for c in s["checks"].values())
        verdict = f"{total - len(failed)}/{total} pass" + (f"; fail: {'; '.join(failed)}" if failed else "")
        draws = s["pgd_2eot"]
        spread = f"{100 * draws['mean']:.1f} ± {100 * draws['std']:.1f} (R={len(draws['accs'])})" if draws else "–"
        cells = [s["name"], f"{s['n']}, EOT {s['eot']}", pct(s["clean"])] + [pct(s["columns"][a]) for a, _ in COLUMNS]
        lines.append("| " + " | ".join(cells + [spread, verdict]) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, keys, stem: str) -> list:
    """Robust accuracy under PGD500 (corrected gradient) against eps, one curve per model: PNG and PDF."""
    fig, (ax,) = plots._grid(1, 8, 5)
    for key in keys:
        curve = summary[key]["curve"]
        if len(curve) < 2:
            continue
        style = "--" if "resnet" in key else ("-" if key.startswith("gsem") else ":")
        ax.plot(list(curve), [100 * v for v in curve.values()], style, marker="o", label=summary[key]["name"])
    ax.set_xscale("log", base=2)
    ticks = sorted({e for key in keys for e in summary[key]["curve"]})
    ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
    ax.axvline(8, color="grey", lw=0.8, ls="-.")
    ax.text(8, 101, " training eps", fontsize=8, color="grey", va="top")
    ax.set_xlabel("eps (1/255, L-inf)")
    ax.set_ylabel("robust accuracy under PGD (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title("digits: PGD with the corrected gradient and EOT, against eps")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return plots.save(fig, stem)


if __name__ == "__main__":
    main()
