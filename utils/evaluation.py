"""The one evaluation pipeline, used by ``evaluate.py`` and ``evaluate_gsem.py`` (and the training scripts'
per-epoch test): load a checkpoint for evaluation, the (sharded) test loader, clean accuracy as a measurement, each
attack's pass over the test set, and one row format for every attack of both papers:

    acc (the headline: draw 0, judged by one forward as the references), accs / mean / std over ``--repeat`` draws,
    n_examples, n_clean_correct, acc_on_clean_correct, n_success / success_rate (correct points fooled), settings
    (the attack's knobs, flag units), attack_settings (what the attack object ran with), seeds, seconds,
    robust_flags (per-example outcome of draw 0, "1" = still correct), and for deformation attacks ``deformation``
    (T-norm and mean displacement of the successful flows, px).

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

from attacks import AttackConfig, add_attack_args, attack_label, build_attack, list_attacks
from attacks.multi import MultiAttack
from models import build_from_spec, build_model

from . import distributed as dist
from .argtypes import positive_int
from .checkpoint import load_model_state
from .cli import add_bool
from .datasets import load_dataset
from .eot import is_stochastic
from .errors import UserError
from .flow import flow_norms_pixels
from .modes import eval_mode
from .precision import autocast
from .runtime import fast_path, seed_everything

BAR_REFRESH = 1.0  # seconds between updates of the bar's running numbers (each update syncs with the device)
ROW_FORMAT = 2  # version of the result files' layout (1: the per-script layouts before the shared pipeline)


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


def adopt_checkpoint_settings(args, ckpt: dict, given: set, keys) -> None:
    """The checkpoint is the source of truth: for each of ``keys`` (model name, dataset, normalisation, GSeM alpha
    and beta, ...) stored in the checkpoint's args, a flag given on the command line must agree (else UserError), and
    a flag not given takes the stored value. A bare state_dict (no args) leaves the flags as they are."""
    stored = ckpt.get("args", {})
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
    return loader, n, len(test_set)


def add_eval_args(p, *, attacks: list[str], batch_size: int) -> None:
    """The flags of the shared pipeline (both evaluate scripts): ``--attacks`` (default ``attacks``), every attack
    knob of the registry, noise draws, precision, speed and resume."""
    p.add_argument("--attacks", type=str, nargs="+", default=attacks,
                   help=f"attacks to run, in order: Clean (the clean accuracy's line) or any registered attack: "
                        f"{' '.join(list_attacks())}")
    p.add_argument("--batch_size", type=positive_int, default=batch_size, help="evaluation batch size")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="R noise draws per attack; the first is the headline (as the references), mean +- std reported")
    add_bool(p, "amp", False, "bf16 autocast for the attacks where the device has native bf16 (CUDA, AMX/AVX512-BF16 "
                              "CPUs); accuracy is judged in fp32 either way; off: fp32, as the references")
    add_bool(p, "batched_eot", True, "EOT as copies of the batch in one forward (same expectation)")
    p.add_argument("--eot_batch", type=positive_int, default=None,
                   help="most images per batched-EOT forward (default: 64 on CPU, 1024 on CUDA; lower it on OOM)")
    add_bool(p, "resume", False, "skip attacks already in the result file for this checkpoint and these settings")
    add_attack_args(p)


def check_attack_names(p: argparse.ArgumentParser, args) -> None:
    unknown = [a for a in args.attacks if a != "Clean" and a not in list_attacks()]
    if unknown:
        p.error(f"unknown attack(s) {', '.join(unknown)}; valid: Clean, {', '.join(list_attacks())}")


def attack_pass(model, loader, device, attack, *, amp=False, bar=True, desc="attack") -> dict:
    """One pass of ``attack`` over ``loader``: per-example correctness after the attack (``flags``, bool, CPU) and,
    for a deformation attack (``attack.produces_flow``), each example's ``tnorm`` and ``mean`` displacement (px)."""
    norms = {"tnorm": [], "mean": []}

    def run(x, y):
        x_adv = attack(x, y)
        if getattr(attack, "produces_flow", False):
            for k, v in flow_norms_pixels(attack.last_flow).items():
                if k in norms:
                    norms[k].append(v.float().cpu())
        return x_adv

    _, flags = evaluate(model, loader, device, {desc: run}, bar=bar, desc=desc, return_flags=True, amp=amp,
                        clean=False)
    out = {"flags": flags[desc]}
    if norms["tnorm"]:
        out.update({k: dist.all_gather_cat(torch.cat(v)) for k, v in norms.items()})
    return out


def _stats(values: torch.Tensor) -> dict:
    if values.numel() == 0:
        return {"mean": None, "median": None}
    return {"mean": values.mean().item(), "median": values.median().item()}


def make_row(name: str, label: str, draws: list[dict], clean_flags: torch.Tensor, *, settings: dict,
             attack_settings: dict, seeds: list[int], seconds: float) -> dict:
    """The row of one attack from its draws (``attack_pass`` results; draw 0 is the headline)."""
    flags = draws[0]["flags"]
    accs = [d["flags"].float().mean().item() for d in draws]
    n_correct = int(clean_flags.sum())
    success = clean_flags & ~flags
    row = {"attack": name, "label": label, "acc": accs[0], "accs": accs, "mean": statistics.fmean(accs),
           "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n_examples": int(flags.numel()),
           "n_clean_correct": n_correct, "acc_on_clean_correct": int((flags & clean_flags).sum()) / max(n_correct, 1),
           "n_success": int(success.sum()), "success_rate": int(success.sum()) / max(n_correct, 1),
           "settings": settings, "attack_settings": attack_settings, "seeds": seeds, "seconds": seconds,
           "robust_flags": "".join("1" if f else "0" for f in flags.tolist())}
    if "tnorm" in draws[0]:
        row["deformation"] = {f"{k}_px": _stats(draws[0][k][success]) for k in ("tnorm", "mean")}
    return row


def run_attacks(model, loader, device, args, *, n: int, n_total: int, n_classes: int, image_size: int, results,
                table, say, line, on_clean=None) -> tuple[dict, dict]:
    """The shared pipeline: the clean accuracy (one measurement, ``record["clean"]``), then each of ``args.attacks``
    built from the parsed flags through the registry, ``args.repeat`` draws (seeds ``args.seed + r``), one row each,
    merged into ``results`` (a ``utils.results.ResultFile``) after every attack.

    Args:
        args: flags of :func:`add_eval_args` (and ``seed``, ``bar``).
        n, n_total: points evaluated, of the whole test set (a subset is in the label).
        results: the result file; ``table(record) -> markdown lines`` is written beside it.
        say: rank-0 print; ``line(name, row_or_clean)`` prints the script's console line of each finished attack
            (``row`` is None for ``Clean``); ``on_clean(acc)`` is called once the clean accuracy is measured.
    Returns:
        ``(rows, attacks)``: attack name -> row, and -> the attack object of draw 0 (for checks on its stages).
    """
    seed_everything(args.seed)
    clean = evaluate(model, loader, device, bar=args.bar, desc="clean", return_flags=True)[1]["clean"]
    results.record["clean"] = {"acc": clean.float().mean().item(), "n": int(clean.numel()),
                               "flags": "".join("1" if f else "0" for f in clean.tolist())}
    if on_clean is not None:
        on_clean(results.record["clean"]["acc"])
    stochastic = is_stochastic(model)
    extra = {**({"n": n} if n < n_total else {}), **({"repeat": args.repeat} if args.repeat > 1 else {}),
             **({"seed": args.seed} if stochastic and args.seed != 0 else {}), **({"amp": True} if args.amp else {})}
    rows, objects = {}, {}
    for name in args.attacks:
        if name == "Clean":
            line(name, None)
            continue
        cfg = AttackConfig.from_args(args, seed=args.seed, n_classes=n_classes, image_size=image_size)
        label = attack_label(name, cfg, extra)
        if args.resume and label in results.earlier:
            rows[name] = results.earlier[label]
            say(f"resume: {label} already done")
            line(name, rows[name])
            continue
        if label in results.earlier:
            say(f"note: replacing the earlier row {label!r} (same attack, same settings)")
        draws, seeds, t0 = [], [args.seed + r for r in range(args.repeat)], time.time()
        for seed in seeds:
            seed_everything(seed)
            attack, settings = build_attack(name, model, cfg.replace(seed=seed))
            draws.append(attack_pass(model, loader, device, attack, amp=args.amp, bar=args.bar, desc=name))
            if seed == seeds[0]:
                objects[name], first = attack, (settings, attack.settings())
        rows[name] = make_row(name, label, draws, clean, settings=first[0], attack_settings=first[1], seeds=seeds,
                              seconds=time.time() - t0)
        results.add(label, rows[name])
        results.write(table)
        line(name, rows[name])
    return rows, objects


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy (a fraction) measured on ``n`` points."""
    return math.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1))


def sanity_checks(model, loader, device, cfg: AttackConfig, *, amp=False, rows=None, attacks=None, n=1,
                  bar=True) -> tuple[dict, list]:
    """Checks against gradient masking on ``loader``, with the registry's PGD at ``cfg``'s budget, EOT and step
    scaling: unbounded PGD (eps = 1, step 0.1, 50 steps) must reach ~0 %, PGD500 must not do worse than PGD-10, and
    gradient-free Square must not fool points that the white-box stages of an AA-style :class:`MultiAttack` missed.

    Args:
        rows: attack name -> row (``acc``) of the attacks already run; ``attacks``: name -> attack object.
        n: number of evaluated points (for the standard error).
    Returns:
        ``(checks, warnings)``.
    """
    checks, warnings = {}, []
    rows, attacks = rows or {}, attacks or {}
    big, _ = build_attack("PGD", model, cfg.replace(eps=1.0, pgd_steps=50, pgd_alpha=0.1))
    few, _ = build_attack("PGD", model, cfg.replace(pgd_steps=10, pgd_alpha=2 / 255))
    acc = evaluate(model, loader, device, {"unbounded": big, "PGD10": few}, bar=bar, desc="sanity", amp=amp)
    checks["unbounded_pgd_acc"] = acc["unbounded"]
    if acc["unbounded"] > 0.01:
        warnings.append(f"PGD with eps = 1 (unbounded) leaves {100 * acc['unbounded']:.2f}% accuracy: gradients may "
                        f"be masked or the attack too short")
    checks["pgd10_acc"] = acc["PGD10"]
    if "PGD500" in rows:
        longer = rows["PGD500"]["acc"]
        checks["pgd500_minus_pgd10"] = longer - acc["PGD10"]
        if longer > acc["PGD10"] + 2 * standard_error(acc["PGD10"], n):
            warnings.append(f"PGD500 ({100 * longer:.2f}%) is weaker than PGD10 ({100 * acc['PGD10']:.2f}%): more "
                            f"steps should not help the model; suspect gradient masking")
    for name, attack in attacks.items():
        if isinstance(attack, MultiAttack):
            square = attack.fooled_by.get("Square", 0)
            checks[f"{name}_square_only_successes"] = square
            if square > 0:
                warnings.append(f"{name}: gradient-free Square fooled {square} points the white-box stages missed; "
                                f"suspect gradient masking")
    return checks, warnings
