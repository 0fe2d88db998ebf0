"""Deformation robustness on real digits, in one command: trains the models on the built-in ``digits`` (scikit-learn's
handwritten digits, 32 x 32), evaluates each under every deformation attack at several budgets, and writes the table
and the robust-accuracy-against-budget figure.

    python benchmarks/deformation_demo.py                       # smallcnn, 5 models: about an hour on a 2-core CPU
    python benchmarks/deformation_demo.py --model vgg11 --epochs 8 --n 64 --stadv_ref_max_iter 100
                                                                # VGG-11, 4 models: over an hour on a 2-core CPU
                                                                # (the released stAdv alone 10 min per model)
    python benchmarks/deformation_demo.py --epochs 1 --n 8      # a smoke run (the test suite runs one)

Models (lr 0.01, ``--epochs`` with the milestones at 1/2 and 3/4): ``smallcnn`` at the reference batch 128: plain;
FGR lambda 300; IGR at the strength of FGR lambda 300 (``--igr_match_fgr 300`` measured on the FGR model); flow
adversarial training (K 7, eps 0.01); FGR lambda 300 + flow adversarial training. ``vgg11`` (the model users train)
at the quick start's batch 64 with the FGR recipe that trains (lambda 300 held at its batch-128 weight,
``--fgr_lamb_ref_batch 128``, and ramped over the first 2 epochs, ``--fgr_warmup 2``; IGR likewise): plain, FGR, IGR
matched, flow adversarial training.
Attacks, on the first ``--n`` test digits (default 100): the authors' flow attack at eps 0.01, 0.02 and 0.05 (0.155,
0.31, 0.775 px per coordinate), the flow random search at 0.02, stAdv (ours, and the released recipe with its L-BFGS-B
capped at ``--stadv_ref_max_iter`` 100 iterations per image: SciPy's default of 15,000 takes hours on 2 cores), ADef
(minimum deformation, and capped at 1 px), the rotation-translation grid. ``--reuse`` keeps models already trained in
``--out``; ``--docs`` writes the table and the figure into docs/fgr.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


import evaluate  # noqa: E402
import main as train  # noqa: E402
from utils import plots, tables  # noqa: E402

VGG_RECIPE = ["--batch_size", "64", "--fgr_lamb_ref_batch", "128", "--fgr_warmup", "2"]  # (no-ops without lambda)
RUNS = {  # name -> main.py flags
    "plain": ["--fgr_lamb", "0"],
    "fgr": ["--fgr_lamb", "300"],
    "igr": ["--reg", "igr", "--igr_match_fgr", "300"],
    "flow-at": ["--adv_train", "flow"],
    "fgr+flow-at": ["--fgr_lamb", "300", "--adv_train", "flow"],
}
ATTACKS = [["flow", "--flow_eps", "0.01", "0.02", "0.05"], ["flow-rs", "--flow_eps", "0.02"], ["stadv"],
           ["stadv-ref"], ["adef"], ["adef", "--adef_max_norm", "1"], ["rt-grid"]]
# the columns of the docs' table (every column is in <out>/results/table.md)
COLUMNS = [r"flow.*", r"rt-grid.*", r"stadv(-ref)?( \[[^\]]*\])?( @(0\.5|1)px| median px)?",
           r"adef.*( @(0\.5|1)px| median px)", r"adef \[adef_max_norm=1.*"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=str, default="", help="folder of checkpoints and result files (default "
                   "results/digits_demo, results/digits_demo_vgg11 for VGG-11)")
    p.add_argument("--model", type=str, default="smallcnn", choices=["smallcnn", "vgg11"],
                   help="the model trained (vgg11: 4 models at batch 64 with the FGR recipe that trains)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs of each model")
    p.add_argument("--n", type=int, default=100, help="test digits evaluated (0 = all 300)")
    p.add_argument("--stadv_ref_max_iter", type=int, default=100, help="L-BFGS-B iterations per image of the released "
                   "stAdv")
    p.add_argument("--reuse", action="store_true", help="keep the models already trained in --out")
    p.add_argument("--docs", action="store_true", help="write the table and the figure into docs/fgr.md")
    p.add_argument("--no_bar", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    args.out = args.out or ("results/digits_demo" if args.model == "smallcnn" else f"results/digits_demo_{args.model}")
    runs = RUNS if args.model == "smallcnn" else {k: v + VGG_RECIPE for k, v in RUNS.items() if k != "fgr+flow-at"}
    weights, results = os.path.join(args.out, "weights"), os.path.join(args.out, "results")
    common = ["--data_name", "digits", "--model_name", args.model, "--weight_path", weights, "--workers", "0"]
    common += ["--no_bar"] if args.no_bar else []
    schedule = ["--epochs", str(args.epochs), "--milestones", str(max(1, args.epochs // 2)),
                str(max(1, 3 * args.epochs // 4))]
    t0, paths = time.time(), {}
    for name, flags in runs.items():
        extra = ["--igr_match_on", paths["fgr"]] if name == "igr" else []
        run = train.get_args(common + schedule + flags + extra + ["--overwrite"])
        p_ = train.parser()
        if run.igr_match_fgr:  # the name holds the lambda the match finds: find the run by its other flags
            found = [f for f in sorted(os.listdir(weights)) if "_igr_" in f and f.endswith(".pt")
                     and not f.endswith(".last.pt")] if os.path.isdir(weights) else []
            paths[name] = os.path.join(weights, found[0]) if found else None
        else:
            paths[name] = os.path.join(weights, train.fgr_run_name(run, vars(p_.parse_args([])), p_.result_flags())
                                       + ".pt")
        if not (args.reuse and paths[name] and os.path.isfile(paths[name])):
            train.main(run)
            if run.igr_match_fgr:
                paths[name] = os.path.join(weights, train.fgr_run_name(run, vars(p_.parse_args([])),
                                                                       p_.result_flags()) + ".pt")
    trained = time.time() - t0
    for path in paths.values():
        for attack in ATTACKS:
            evaluate.main(evaluate.get_args(common + ["--checkpoint", path, "--result_path", results, "--subset",
                                                      str(args.n), "--stadv_ref_max_iter",
                                                      str(args.stadv_ref_max_iter), "--attacks", *attack]))
    seconds = time.time() - t0
    tables.main(["--result_path", results, "--out", os.path.join(results, "table.md")])
    text = tables.main(["--result_path", results, "--out", os.path.join(results, "table_docs.md"), "--columns",
                        *COLUMNS])
    figure = plots.plot_budgets(tables.collect(results), os.path.join(results, "digits.png"))
    note = plots.machine_note(trained, seconds)
    print(f"{note}\nwrote {os.path.join(results, 'table.md')} and {', '.join(figure)}")
    if args.docs:
        tag, png = ("demo", "digits") if args.model == "smallcnn" else (f"demo-{args.model}", f"digits_{args.model}")
        plots.to_docs("fgr.md", tag, text, figure[0], f"figures/{png}_deformation_budgets.png", note=note,
                      command=" ".join(["python benchmarks/deformation_demo.py"] + (argv or sys.argv[1:])),
                      alt="robust accuracy against the deformation budget")
    return {"paths": paths, "table": text, "figure": figure}


if __name__ == "__main__":
    main()
