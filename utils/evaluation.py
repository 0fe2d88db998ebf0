"""The one evaluation pipeline, used by ``evaluate.py`` and ``evaluate_gsem.py`` (and the training scripts'
per-epoch test): load a checkpoint for evaluation, the (sharded) test loader, clean accuracy as a measurement, each
attack's pass over the test set, and one row format for every attack of both papers:

    acc (the headline: draw 0, judged by one forward as the references), accs / mean / std over ``--repeat`` draws,
    n_examples, n_clean_correct, acc_on_clean_correct, n_success / success_rate (correct points fooled), settings
    (the attack's knobs, flag units), attack_settings (what the attack object ran with), seeds, seconds,
    robust_flags (per-example outcome of draw 0, true = still correct; earlier files hold "0101" strings), and for
    deformation attacks ``deformation`` (T-norm and mean displacement of the successful flows, px).

Rows are keyed by ``attacks.attack_label`` and merged into the checkpoint's result file (``utils.results``); each
script adds its own header keys and console lines.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from attacks import ATTACKS, AttackConfig, add_attack_args, attack_label, build_attack, list_attacks
from attacks.multi import MultiAttack
from attacks.registry import sweep
from models import build_from_spec, build_model

from . import distributed as dist
from .argtypes import positive_float, positive_int
from .checkpoint import atomic_save, file_sha256, load_model_state
from .cli import add_bool
from .datasets import fingerprint, load_dataset
from .eot import is_stochastic
from .errors import UserError
from .flow import flow_norms_pixels
from .modes import eval_mode
from .precision import autocast
from .runtime import fast_path, seed_everything
from .training import BAR_REFRESH

# deformation budgets (T-norm: the largest displacement length, px) at which the minimum-deformation attacks' rows
# report robust accuracy: from a fifth of a pixel, where the authors' flow attack sits (0.155 px per coordinate), to
# 3 px, where undefended 32 x 32 classifiers are fooled almost everywhere
DEFAULT_BUDGETS_PX = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
KEPT = ("x_adv", "y", "flow")  # what attack_pass keeps for --save_adv


def evaluate(model, loader, device, attacks: dict | None = None, *, bar=True, desc="eval", return_flags=False,
             amp=False, clean=True):
    """Accuracy (a fraction) on ``loader`` in eval mode: ``clean`` and one entry per attack (the bar shows %).

    Args:
        model: the classifier; its train/eval mode is restored afterwards.
        loader: batches ``(x, y)``.
        attacks: name -> callable ``attack(x, y) -> x_adv``, run under bf16 autocast when ``amp``; each judged by one
            fp32 forward of its output.
        return_flags: also return name -> per-example correctness (bool, CPU, in the dataset's order).
        clean: also measure the clean accuracy (``clean``).
    """
    attacks = attacks or {}
    flags = {name: [] for name in (["clean"] if clean else []) + list(attacks)}
    correct = {name: torch.zeros((), device=device) for name in flags}
    seen, shown = 0, 0.0
    bar = bar and dist.is_main()
    pbar = tqdm(loader, desc=desc, disable=not bar, leave=False, dynamic_ncols=True)
    with eval_mode(model):
        for x, y in pbar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for name in flags:
                if name == "clean":
                    x_in = x
                else:
                    with autocast(device, amp):
                        x_in = attacks[name](x, y)
                with torch.no_grad():
                    hit = model(x_in).argmax(1) == y
                correct[name] += hit.sum()
                if return_flags:
                    flags[name].append(hit.cpu())
            seen += y.shape[0]
            if bar and time.time() - shown >= BAR_REFRESH:
                pbar.set_postfix({k: f"{100 * v.item() / seen:.2f}" for k, v in correct.items()})
                shown = time.time()
    pbar.close()
    names = list(correct)
    totals = dist.all_reduce_sum(torch.stack([*(correct[k].float() for k in names),
                                              torch.tensor(float(seen), device=device)]))
    seen = totals[-1].item()
    if seen == 0:
        raise UserError("the evaluation set is empty")
    acc = {name: totals[i].item() / seen for i, name in enumerate(names)}
    if return_flags:  # ranks hold contiguous shards: concatenating in rank order restores the order
        return acc, {name: dist.all_gather_cat(torch.cat(f)) for name, f in flags.items()}
    return acc


ALIASES = {"classifier_name": "model_name", "dataset_name": "data_name", "model_name": "classifier_name",
           "data_name": "dataset_name"}


def adopt_checkpoint_settings(args, ckpt: dict, given: set, keys) -> None:
    """The checkpoint is the source of truth: for each of ``keys`` (model name, dataset, normalisation, GSeM alpha
    and beta, ...) stored in the checkpoint's args, a flag given on the command line must agree (else UserError), and
    a flag not given takes the stored value. A bare state_dict (no args) leaves the flags as they are."""
    stored = dict(ckpt.get("args") or {})
    for key, other in ALIASES.items():  # an FGR checkpoint evaluated by evaluate_gsem.py, or the other way round
        if key not in stored and other in stored:
            stored[key] = stored[other]
    for key in keys:
        if key not in stored:
            continue
        flag, saved = getattr(args, key), stored[key]
        if key in given and str(flag).lower() != str(saved).lower():
            raise UserError(f"--{key} {flag} contradicts the checkpoint, which was trained with {key} {saved}; "
                            f"leave the flag out to use the checkpoint's")
        setattr(args, key, saved)


def load_for_evaluation(ckpt: dict, path: str, name: str, num_classes: int, device, *, normalize=None,
                        options: dict | None = None, amp: bool = False):
    """The model of checkpoint ``ckpt`` (read from ``path``) in eval mode on ``device``: rebuilt from the file's
    ``model_spec`` when it has one (its name and classes must be ``name`` and ``num_classes``), else (a bare
    state_dict) built as ``build_model(name, num_classes, normalize, **options)``."""
    spec = ckpt.get("model_spec")
    try:
        if spec:
            if spec["name"] != name or spec["num_classes"] != num_classes:
                raise UserError(f"checkpoint {path} holds a {spec['name']} with {spec['num_classes']} classes, not "
                                f"a {name} with {num_classes}; check the model name and the dataset")
            model = build_from_spec(spec)
        else:
            model = build_model(name, num_classes, normalize=normalize, **(options or {}))
    except ValueError as e:
        raise UserError(str(e)) from None
    load_model_state(model, ckpt["model"], path, name)
    return fast_path(model.to(device), device, amp=amp).eval()


def test_loader(dataset: str, data_path: str, transform, *, n: int = 0, batch_size: int, workers: int,
                verify: bool = True):
    """The first ``n`` test images (0 = all); under torchrun each rank gets a contiguous block. ``verify`` checks
    the official files' MD5 sums.

    Returns:
        ``(loader, n, n_total)``: ``n`` images evaluated over all ranks, of ``n_total`` in the test set.
    """
    test_set = load_dataset(dataset, data_path, False, transform, verify=verify)
    if n > len(test_set):
        print(f"note: {n} test points asked for, the test set has {len(test_set)}; all are used", flush=True)
    n = min(n or len(test_set), len(test_set))
    shard = Subset(test_set, list(dist.shard(n)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=min(workers, os.cpu_count() or 1))
    loader.data_sha256 = fingerprint(test_set)  # the result file is keyed by the test set it was computed on
    return loader, n, len(test_set)


def record_header(script: str, path: str, ckpt: dict, net, data_name: str, loader, n: int, device, args,
                  **extra) -> dict:
    """The header both evaluate scripts write: what was evaluated (checkpoint path and SHA-256, the model's spec,
    the test data's name, size and fingerprint), where and with what (device, torch, the run's args and the
    checkpoint's training args), plus the script's own keys ``extra``."""
    return {"script": script, **extra, "checkpoint": os.path.abspath(path), "checkpoint_sha256": file_sha256(path),
            "model_spec": getattr(net, "model_spec", None),
            "data": {"name": data_name, "n": n, "sha256": loader.data_sha256},
            "device": str(device), "torch": torch.__version__, "train_args": ckpt.get("args"), "args": vars(args),
            "warnings": []}


def add_eval_args(p, *, attacks: list[str], batch_size: int) -> None:
    """The flags of the shared pipeline (both evaluate scripts): ``--attacks`` (default ``attacks``), every attack
    knob of the registry, noise draws, precision, speed and resume."""
    p.add_argument("--attacks", type=str, nargs="+", default=attacks,
                   help="attacks to run, in order: Clean (the clean accuracy's line) or any registered attack: "
                        + "; ".join(f"{name}: {spec.summary}" for name, spec in ATTACKS.items()))
    p.add_argument("--batch_size", type=positive_int, default=batch_size, help="evaluation batch size")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="R noise draws per attack; the first is the headline (as the references), mean +- std reported")
    add_bool(p, "amp", False, "bf16 autocast for the attacks where the device has native bf16 (CUDA, AMX/AVX512-BF16 "
                              "CPUs); accuracy is judged in fp32 either way; off: fp32, as the references")
    add_bool(p, "batched_eot", True, "EOT as copies of the batch in one forward (same expectation)")
    p.add_argument("--eot_batch", type=positive_int, default=None,
                   help="most images per batched-EOT forward (default: 64 on CPU, 1024 on CUDA; lower it on OOM)")
    add_bool(p, "resume", False, "skip attacks already in the result file for this checkpoint and these settings")
    p.add_argument("--save_adv", type=str, default="",
                   help="folder: write each row's adversarial images (and flows, for deformation attacks) with labels, "
                        "indices and outcomes to <folder>/<checkpoint>__<row label>.pt (tensors only)")
    p.add_argument("--budgets", type=positive_float, nargs="+", default=DEFAULT_BUDGETS_PX,
                   help="deformation budgets (T-norm, px) at which the rows of minimum-deformation attacks report "
                        "robust accuracy")
    add_attack_args(p)


def check_attack_names(p: argparse.ArgumentParser, args) -> None:
    """Unknown attack names, and a file knob an attack needs left empty (``transfer`` without ``--surrogate``), are
    errors before anything runs."""
    unknown = [a for a in args.attacks if a != "Clean" and a not in list_attacks()]
    if unknown:
        p.error(f"unknown attack(s) {', '.join(unknown)}; valid: Clean, {', '.join(list_attacks())}")
    for name in (a for a in args.attacks if a in ATTACKS):
        for k in ATTACKS[name].knobs:
            if k.type is str and k.default == "" and not getattr(args, k.name, ""):
                p.error(f"the {name} attack needs {k.option_strings[0]} ({k.help})")
            if k.unit == "path" and getattr(args, k.name, "") and not os.path.isfile(getattr(args, k.name)):
                p.error(f"{k.option_strings[0]}: no such file: {getattr(args, k.name)}")


def attack_pass(model, loader, device, attack, *, amp=False, bar=True, desc="attack", keep=False) -> dict:
    """One pass of ``attack`` over ``loader``: per-example correctness after the attack (``flags``, bool, CPU) and,
    for a deformation attack (``attack.produces_flow``), each example's ``tnorm`` and ``mean`` displacement (px) and
    whatever else it measures per example (``attack.last_stats``, e.g. stAdv's smoothness). ``keep``: also the
    adversarial images (``x_adv``), labels (``y``) and, for a deformation attack, the flows (``flow``, normalised
    B x H x W x 2), on CPU (``--save_adv``)."""
    stats: dict[str, list] = {}

    def run(x, y):
        x_adv = attack(x, y)
        flow = getattr(attack, "produces_flow", False)
        if flow:
            norms = flow_norms_pixels(attack.last_flow)
            for k, v in {"tnorm": norms["tnorm"], "mean": norms["mean"], **getattr(attack, "last_stats", {})}.items():
                stats.setdefault(k, []).append(v.detach().float().cpu())
        if keep:
            kept = dict(zip(KEPT, (x_adv, y, attack.last_flow if flow else None)))
            kept = {k: v for k, v in kept.items() if v is not None}
            for k, v in kept.items():
                stats.setdefault(k, []).append(v.detach().cpu())
        return x_adv

    _, flags = evaluate(model, loader, device, {desc: run}, bar=bar, desc=desc, return_flags=True, amp=amp,
                        clean=False)
    return {"flags": flags[desc], **{k: dist.all_gather_cat(torch.cat(v)) for k, v in stats.items()}}


def save_adversarial(folder: str, stem: str, label: str, draw: dict) -> str:
    """``--save_adv``: draw 0 of a row as ``<folder>/<stem>__<label>.pt``, tensors only (loadable with
    ``torch.load(weights_only=True)``): ``x_adv`` (N x C x H x W in [0, 1], the unchanged image where the attack
    failed), ``y``, ``index`` (the test-set index), ``robust`` (True = still classified correctly, as the row's
    flags) and, for deformation attacks, ``flow`` (N x H x W x 2, normalised align_corners=True units; zero where the
    attack failed). Re-applied with ``utils.flow.warp(x, flow, padding_mode=...)`` as the attack warps."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)
    path = os.path.join(folder, f"{stem}__{safe}.pt")
    tensors = {k: draw[k] for k in KEPT if k in draw}
    tensors["index"] = torch.arange(len(draw["flags"]))
    tensors["robust"] = draw["flags"].clone()
    os.makedirs(folder, exist_ok=True)
    atomic_save(tensors, path)
    return path


def _stats(values: torch.Tensor) -> dict:
    if values.numel() == 0:
        return {"mean": None, "median": None}
    return {"mean": values.mean().item(), "median": values.median().item()}


def deformation_record(draw: dict, clean_flags: torch.Tensor, *, min_norm: bool, budgets) -> dict:
    """The deformation part of a row: the T-norm and mean displacement of the successful flows (px, mean and median),
    each example's values (None where the attack did not fool it), and for a minimum-deformation attack the robust
    accuracy at each budget of ``budgets`` (px): a point counts at budget e if the attack did not fool it or needed a
    T-norm above e. That is an upper bound on the true robust accuracy at e (an attack finds a deformation, not the
    smallest one), comparable between models only for the same attack and settings."""
    flags = draw["flags"]
    fooled = ~flags
    success = clean_flags & fooled
    per = {f"{k}_px" if k in ("tnorm", "mean") else k: [round(float(v), 5) if f else None
                                                        for v, f in zip(draw[k].tolist(), fooled.tolist())]
           for k in draw if k not in ("flags", *KEPT)}
    out = {"tnorm_px": _stats(draw["tnorm"][success]), "mean_px": _stats(draw["mean"][success]),
           "per_example": per, "minimum_deformation": min_norm}
    if min_norm:
        needed = torch.where(fooled, draw["tnorm"], torch.full_like(draw["tnorm"], float("inf")))
        out["acc_at_budget_px"] = {f"{b:g}": (needed > b).float().mean().item() for b in budgets}
        correct = needed[clean_flags]
        median = correct.median().item() if correct.numel() else None  # None: no correctly classified point
        # JSON has no infinity: "inf" (most correct points never fooled), as the docs and tables write it
        out["median_min_tnorm_px"] = "inf" if median == math.inf else median
    return out


def make_row(name: str, label: str, draws: list[dict], clean_flags: torch.Tensor, *, settings: dict,
             attack_settings: dict, seeds: list[int], seconds: float, min_norm: bool = False,
             budgets=DEFAULT_BUDGETS_PX) -> dict:
    """The row of one attack from its draws (``attack_pass`` results; draw 0 is the headline)."""
    flags = draws[0]["flags"]
    accs = [d["flags"].float().mean().item() for d in draws]
    n_correct = int(clean_flags.sum())
    success = clean_flags & ~flags
    row = {"attack": name, "label": label, "acc": accs[0], "accs": accs, "mean": statistics.fmean(accs),
           "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n_examples": int(flags.numel()),
           "clean_acc": n_correct / max(int(flags.numel()), 1), "n_clean_correct": n_correct,
           "acc_on_clean_correct": int((flags & clean_flags).sum()) / max(n_correct, 1),
           "n_success": int(success.sum()), "success_rate": int(success.sum()) / max(n_correct, 1),
           "settings": settings, "attack_settings": attack_settings, "seeds": seeds, "seconds": seconds,
           "robust_flags": flags.tolist()}
    if "tnorm" in draws[0]:
        row["deformation"] = deformation_record(draws[0], clean_flags, min_norm=min_norm, budgets=budgets)
    return row


def run_attacks(model, loader, device, args, *, n: int, n_total: int, n_classes: int, image_size: int, results,
                table, say, line, on_clean=None) -> tuple[dict, dict]:
    """The shared pipeline: the clean accuracy on this run's points (``results.clean``; the file keeps one per number
    of points, ``record["clean"]`` the one on the most), then each of ``args.attacks``
    built from the parsed flags through the registry, ``args.repeat`` draws (seeds ``args.seed + r``), one row each,
    merged into ``results`` (a ``utils.results.ResultFile``) after every attack.

    Args:
        args: flags of :func:`add_eval_args` (and ``seed``, ``bar``).
        n, n_total: points evaluated, of the whole test set (a subset is in the label).
        results: the result file; ``table(record) -> markdown lines`` is written beside it.
        say: rank-0 print; ``line(name, row_or_clean)`` prints the script's console line of each finished attack
            (``row`` is None for ``Clean``); ``on_clean(acc)`` is called once the clean accuracy is measured.
    Returns:
        ``(rows, attacks)``: label -> row, and -> the attack object of draw 0 (for checks on its stages). A budget
        knob given several values (``--flow_eps 0.005 0.01``) makes one row per value.
    """
    seed_everything(args.seed)
    clean = evaluate(model, loader, device, bar=args.bar, desc="clean", return_flags=True)[1]["clean"]
    results.clean = {"acc": clean.float().mean().item(), "n": int(clean.numel()), "data_sha256": loader.data_sha256,
                     "flags": clean.tolist()}
    results.record["clean"] = results.clean
    if on_clean is not None:
        on_clean(results.clean["acc"])
    stochastic = is_stochastic(model)
    extra = {**({"n": n} if n < n_total else {}), **({"repeat": args.repeat} if args.repeat > 1 else {}),
             **({"seed": args.seed} if stochastic and args.seed != 0 else {}), **({"amp": True} if args.amp else {})}
    rows, objects = {}, {}
    stem = os.path.splitext(os.path.basename(results.record.get("checkpoint") or "adv"))[0]
    base = AttackConfig.from_args(args, seed=args.seed, n_classes=n_classes, image_size=image_size)
    for name in args.attacks:
        if name == "Clean":
            line(name, None)
            continue
        for cfg in sweep(name, args, base):
            label = attack_label(name, cfg, extra)
            if args.resume and label in results.earlier:
                rows[label] = results.earlier[label]
                say(f"resume: {label} already done")
                line(name, rows[label])
                continue
            if label in results.earlier:
                say(f"note: replacing the earlier row {label!r} (same attack, same settings)")
            rows[label], objects[label] = run_one(model, loader, device, args, name, cfg, label, clean, stem=stem)
            results.add(label, rows[label])
            results.write(table)
            line(name, rows[label])
    return rows, objects


def run_one(model, loader, device, args, name, cfg, label, clean_flags, stem="adv"):
    """One row: ``args.repeat`` draws of attack ``name`` at ``cfg`` (seeds ``args.seed + r``). Returns the row and
    the attack object of draw 0. ``stem``: the checkpoint's file stem, naming the ``--save_adv`` files."""
    spec = ATTACKS[name]
    min_norm = spec.budget is None or any(getattr(cfg, k) is None for k in spec.budget.knobs)
    draws, seeds, t0 = [], [args.seed + r for r in range(args.repeat)], time.time()
    for seed in seeds:
        seed_everything(seed)
        attack, settings = build_attack(name, model, cfg.replace(seed=seed))
        keep = bool(getattr(args, "save_adv", "")) and seed == seeds[0]
        draws.append(attack_pass(model, loader, device, attack, amp=args.amp, bar=args.bar, desc=name, keep=keep))
        if seed == seeds[0]:
            first = (attack, settings, attack.settings())
    row = make_row(name, label, draws, clean_flags, settings=first[1], attack_settings=first[2], seeds=seeds,
                   seconds=time.time() - t0, min_norm=min_norm, budgets=args.budgets)
    if getattr(args, "save_adv", "") and dist.is_main():
        row["saved"] = save_adversarial(args.save_adv, stem, label, draws[0])
        for k in KEPT:
            draws[0].pop(k, None)
    return row, first[0]


def markdown(record: dict, title: str, extra_rows=()) -> list[str]:
    """The one markdown rendering of a result file's rows (both evaluate scripts): ``title``, a table row per attack
    row (accuracy, on the clean-correct points, success among correct, spread over draws, points, deformation sizes,
    accuracy at T-norm budgets, settings, time), ``extra_rows`` (cells), then the checks and warnings."""
    lines = [title, "", "| attack | accuracy (%) | on clean-correct points (%) | success among correct (%) | mean ± "
             "std over draws | points | T-norm of successful flows, px (mean / median) | accuracy (%) at T-norm "
             "budgets, px | settings | time (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in record["rows"].items():
        deform = r.get("deformation", {})
        tn = deform.get("tnorm_px", {})
        tn = f"{tn['mean']:.3f} / {tn['median']:.3f}" if tn.get("mean") is not None else "–"
        at = ", ".join(f"{b}: {100 * a:.1f}" for b, a in deform.get("acc_at_budget_px", {}).items()) or "–"
        spread = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} (R={len(r['accs'])})" if len(r["accs"]) > 1 else "–"
        sets = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {label} | {100 * r['acc']:.2f} | {100 * r['acc_on_clean_correct']:.2f} | "
                     f"{100 * r['success_rate']:.1f} ({r['n_success']} / {r['n_clean_correct']}) | {spread} | "
                     f"{r['n_examples']} | {tn} | {at} | {sets} | {r['seconds']:.0f} |")
    lines += ["| " + " | ".join(cells) + " |" for cells in extra_rows]
    checks = check_lines({**record.get("checks", {}), **record.get("sanity", {})})
    lines += ["", "Gradient-masking checks:"] + [f"- {c}" for c in checks] if checks else []
    lines += ["", "Warnings:"] + [f"- {w}" for w in record["warnings"]] if record.get("warnings") else []
    return lines


def subsets(record: dict) -> str:
    """The markdown tables' note of the clean accuracy on fewer points (the subsets evaluated), beside a row's own."""
    cleans = [c for c in (record.get("cleans") or {}).values() if c["n"] != record["clean"]["n"]]
    return "".join(f"; on the first {c['n']}: {100 * c['acc']:.2f}%" for c in cleans)


def row_flags(row: dict, key: str = "robust_flags") -> list | None:
    """A row's per-example outcome (True = still correct; ``key="flags"`` for a clean measurement) as a list of
    booleans, from either stored form (a list, or the earlier "0101" string); None when the row has none."""
    flags = row.get(key)
    if flags is None:
        return None
    return [c == "1" for c in flags] if isinstance(flags, str) else [bool(f) for f in flags]


def acc_at_budget(row: dict, budget: float) -> float | None:
    """A minimum-deformation row's accuracy at T-norm ``budget`` (px), from its per-example minimal deformations:
    a point counts if it was not fooled or needed more than ``budget``. Any budget, not only those of
    ``--budgets``."""
    tnorms = row.get("deformation", {}).get("per_example", {}).get("tnorm_px")
    flags = row_flags(row)
    if tnorms is None or flags is None or len(tnorms) != len(flags):
        return None
    return sum(f or t is None or t > budget for f, t in zip(flags, tnorms)) / max(len(flags), 1)


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def weaker_than(strong: dict, weak: dict, strong_acc: float | None = None, weak_acc: float | None = None) -> bool:
    """Whether the attack of row ``strong`` is suspiciously weaker than that of row ``weak`` on the same points:
    it leaves more accuracy, and either the weaker attack fooled at least twice as many points (and 3 more), or, on
    the points where the two disagree, the weaker one wins significantly (one-sided sign test, p < 0.05; per-example
    outcomes of both rows), or, without per-example outcomes, the gap exceeds two binomial standard errors."""
    n = strong["n_examples"]
    sa = strong["acc"] if strong_acc is None else strong_acc
    wa = weak["acc"] if weak_acc is None else weak_acc
    if sa <= wa:
        return False
    fooled_strong, fooled_weak = round((1 - sa) * n), round((1 - wa) * n)
    if fooled_weak >= max(2 * fooled_strong, fooled_strong + 3):
        return True
    a, b = row_flags(strong), row_flags(weak)
    if strong_acc is None and weak_acc is None and a is not None and b is not None and len(a) == len(b):
        only_weak = sum(x and not y for x, y in zip(a, b))  # fooled by the weaker attack only
        only_strong = sum(y and not x for x, y in zip(a, b))
        return sign_test_p(only_weak, only_strong) < 0.05
    return sa - wa > 2 * standard_error(wa, n)


def _declared(row: dict, what: str):
    spec = ATTACKS.get(row["attack"])
    return getattr(spec, what) if spec is not None else ("" if what == "gradient" else ())


def _same_budget(a: dict, b: dict) -> bool:
    """Both rows bound by the same budget knobs at the same values (an unbounded attack has no budget to share)."""
    ka, kb = (ATTACKS[r["attack"]].budget.knobs if ATTACKS.get(r["attack"]) and ATTACKS[r["attack"]].budget else ()
              for r in (a, b))
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return bool(ka) and ka == kb and all(sa.get(k) is not None and sa.get(k) == sb.get(k) for k in ka)


def _same_but(a: dict, b: dict, *keys) -> bool:
    """Whether two rows' settings agree on every knob except ``keys``."""
    sa, sb = a.get("settings", {}), b.get("settings", {})
    return all(sa.get(k) == sb.get(k) for k in set(sa) | set(sb) if k not in keys)


def masking_checks(rows: dict) -> tuple[dict, list]:
    """Checks on the rows of one run, without running anything: a stronger attack must not leave more accuracy than
    a weaker one at the same budget on the same points (:func:`weaker_than`: twice the fooled points, or a paired
    sign test on the points where they disagree), else the stronger one's gradients are suspect or it was cut short.
    The relations are declared with the attacks (``register_attack(..., gradient=, stronger_than=)``), so a new
    attack is checked by its declaration:

    - an attack must not be weaker than those it declares ``stronger_than`` at the same budget: AutoAttack (any
      version) and APGD500 than PGD500; PGD500 (corrected gradient) than ``PGD-uncorrected`` (masked: GSeM's claim
      that the correction restores the true gradient); the flow attack than its gradient-free twin ``flow-rs``;
    - the strongest white-box attack at a budget must not be weaker than a black-box one (``Square``, ``transfer``)
      at that budget (masked gradients make a white-box attack weaker than one that does not use them);
    - more EOT samples must not make a white-box attack stronger: the same attack at the same settings with more
      ``eot_iter`` must not leave less accuracy (else the EOT count is too small to see through the noise);
    - ADef capped at e must not be weaker than the minimum-deformation ADef within e (any cap: the accuracy at e is
      computed from the per-example minimal deformations).

    Returns:
        ``(checks, warnings)``: ``checks`` maps "<stronger> vs <weaker>" to ``{"passed", "stronger_acc",
        "weaker_acc", "difference", "n", "what"}``; a warning per failed check.
    """
    checks, warnings = {}, []

    def compare(strong: dict, weak: dict, weak_label: str, why: str, what: str, weak_acc: float | None = None):
        wa = weak["acc"] if weak_acc is None else weak_acc
        failed = weaker_than(strong, weak, None if weak_acc is None else strong["acc"], weak_acc)
        checks[f"{strong['label']} vs {weak_label}"] = {
            "passed": not failed, "what": what, "stronger_acc": strong["acc"], "weaker_acc": wa,
            "difference": strong["acc"] - wa, "n": strong["n_examples"]}
        if failed:
            warnings.append(f"{strong['label']} leaves {100 * strong['acc']:.2f}% where {weak_label} leaves "
                            f"{100 * wa:.2f}% on the same points: {why}")

    pairs = [(a, b) for a in rows.values() for b in rows.values() if a is not b and a["n_examples"] == b["n_examples"]]
    for strong, weak in pairs:
        kind = (strong["attack"], weak["attack"])
        # at the same budget, and at the same settings where the two have the same knobs (like with like)
        alike = set(strong.get("settings", {})) != set(weak.get("settings", {})) or _same_but(strong, weak)
        if weak["attack"] in _declared(strong, "stronger_than") and _same_budget(strong, weak) and alike:
            why = ("a gradient-free attack beats it at the same budget; suspect masked gradients"
                   if _declared(weak, "gradient") == "black" else
                   f"{strong['attack']} is declared at least as strong as {weak['attack']} at the same budget; "
                   f"suspect gradient masking (PGD500 vs PGD-uncorrected: the correction does not restore the "
                   f"gradient) or a run cut short (see its label)")
            compare(strong, weak, weak["label"], why, f"{strong['attack']} not weaker than {weak['attack']}")
        if kind[0] == kind[1] and _declared(strong, "gradient") == "white" and _same_but(strong, weak, "eot_iter") \
                and strong["settings"].get("eot_iter", 0) < weak["settings"].get("eot_iter", 0):
            compare(strong, weak, weak["label"], f"more EOT samples make the attack stronger; "
                    f"{strong['settings'].get('eot_iter')} are too few to see through the model's noise",
                    "EOT count large enough")
        cap = strong["settings"].get("adef_max_norm")
        if kind == ("adef", "adef") and cap is not None and weak["settings"].get("adef_max_norm") is None:
            at = acc_at_budget(weak, cap)
            if at is not None:
                # ADef capped at e follows the minimum-deformation ADef's path and overshoots up to e: it fools at
                # least what that one fooled within e
                compare(strong, weak, f"{weak['label']} at {cap:g} px", "the capped ADef is weaker than the "
                        "minimum-deformation ADef within the same T-norm", "capped ADef not weaker", weak_acc=at)
    for weak in (r for r in rows.values() if _declared(r, "gradient") == "black"):
        white = [r for r in rows.values() if _declared(r, "gradient") == "white"
                 and r["n_examples"] == weak["n_examples"] and _same_budget(r, weak)]
        if white:
            strong = min(white, key=lambda r: r["acc"])  # the strongest white-box attack at this eps
            compare(strong, weak, weak["label"], f"{weak['attack']} does not use the model's gradient and is "
                    f"stronger than every white-box attack at this eps; suspect gradient masking",
                    f"white-box not weaker than {weak['attack']}")
    return checks, warnings


def check_lines(checks: dict) -> list[str]:
    """One console line per check: ``check <name>: pass|FAIL (numbers)``."""
    out = []
    for name, c in checks.items():
        if isinstance(c, dict) and "passed" in c:
            nums = ", ".join(f"{k} {100 * v:.2f}%" if k.endswith("acc") else f"{k} {v}" for k, v in c.items()
                             if k not in ("passed", "what", "difference") and isinstance(v, (int, float)))
            out.append(f"check {name}: {'pass' if c['passed'] else 'FAIL'} ({nums})")
    return out


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy (a fraction) measured on ``n`` points."""
    return math.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1))


def sanity_checks(model, loader, device, cfg: AttackConfig, *, amp=False, rows=None, attacks=None, n=1,
                  bar=True) -> tuple[dict, list]:
    """Checks against gradient masking on ``loader``, with the registry's PGD at ``cfg``'s budget, EOT and step
    scaling: unbounded PGD (eps = 1, step 0.1, 50 steps whatever the step scaling) must reach ~0 %, PGD500 must not
    do worse than PGD-10, and gradient-free Square must not fool points that the white-box stages of an AA-style
    :class:`MultiAttack` missed.

    Args:
        rows: label -> row (``attack``, ``acc``) of the attacks already run; ``attacks``: label -> attack object.
        n: number of evaluated points (for the standard error).
    Returns:
        ``(checks, warnings)``: checks as :func:`masking_checks`'s (``passed`` and the numbers).
    """
    checks, warnings = {}, []
    rows, attacks = rows or {}, attacks or {}
    pgd500 = [r for r in rows.values() if r["attack"] == "PGD500"]
    big, _ = build_attack("PGD", model, cfg.replace(eps=1.0, pgd_steps=50, pgd_alpha=0.1, steps_scale=1.0))
    few, _ = build_attack("PGD", model, cfg.replace(pgd_steps=10, pgd_alpha=2 / 255))
    acc = evaluate(model, loader, device, {"unbounded": big, "PGD10": few}, bar=bar, desc="sanity", amp=amp)
    checks["unbounded PGD reaches 0"] = {"passed": acc["unbounded"] <= 0.01, "what": "PGD at eps 1 (50 steps of "
                                         "0.1) leaves at most 1%", "unbounded_acc": acc["unbounded"], "n": n}
    if acc["unbounded"] > 0.01:
        warnings.append(f"PGD with eps = 1 (unbounded) leaves {100 * acc['unbounded']:.2f}% accuracy: gradients may "
                        f"be masked or the attack too short")
    if pgd500:
        longer = pgd500[0]["acc"]
        failed = longer > acc["PGD10"] + 2 * standard_error(acc["PGD10"], n)
        checks["PGD500 vs PGD10"] = {"passed": not failed, "what": "more PGD steps do not help the model",
                                     "pgd500_acc": longer, "pgd10_acc": acc["PGD10"], "n": n}
        if failed:
            warnings.append(f"PGD500 ({100 * longer:.2f}%) is weaker than PGD10 ({100 * acc['PGD10']:.2f}%): more "
                            f"steps should not help the model; suspect gradient masking")
    for name, attack in attacks.items():
        if isinstance(attack, MultiAttack):
            square = attack.fooled_by.get("Square", 0)
            checks[f"{name}: Square finds nothing new"] = {
                "passed": square == 0, "what": "gradient-free Square fools no point the white-box stages missed",
                "square_only_successes": square, "n": n}
            if square > 0:
                warnings.append(f"{name}: gradient-free Square fooled {square} points the white-box stages missed; "
                                f"suspect gradient masking")
    return checks, warnings
