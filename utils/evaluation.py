"""Evaluation shared by ``evaluate.py`` and ``evaluate_gsem.py`` and by the training scripts' per-epoch test:
accuracy under attacks, loading a checkpoint for evaluation, the (sharded) test loader, one attack's row, and the
checks against gradient masking.
"""
from __future__ import annotations

import math
import os
import time

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from attacks import PGD
from attacks.multi import MultiAttack
from models import build_model

from . import distributed as dist
from .checkpoint import load_model_state
from .data import load_dataset
from .errors import UserError
from .flow import flow_norms_pixels
from .runtime import autocast, eval_mode, fast_path

BAR_REFRESH = 1.0  # seconds between updates of the bar's running numbers (each update syncs with the device)


def evaluate(model, loader, device, attacks: dict | None = None, *, bar=True, desc="eval", return_flags=False):
    """Accuracy (a fraction) on ``loader`` in eval mode: ``clean`` and one entry per attack (the bar shows %).

    Args:
        model: the classifier; its train/eval mode is restored afterwards.
        loader: batches ``(x, y)``.
        attacks: name -> callable ``attack(x, y) -> x_adv``, each judged by one forward of its output.
        return_flags: also return name -> per-example correctness (bool, CPU, in the dataset's order).
    """
    attacks = attacks or {}
    flags = {name: [] for name in ["clean", *attacks]}
    correct = {name: torch.zeros((), device=device) for name in flags}
    seen, shown = 0, 0.0
    bar = bar and dist.is_main()
    pbar = tqdm(loader, desc=desc, disable=not bar, leave=False, dynamic_ncols=True)
    with eval_mode(model):
        for x, y in pbar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for name in flags:
                x_in = x if name == "clean" else attacks[name](x, y)
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
    """Build model ``name`` and load the checkpoint ``ckpt`` (read from ``path``) into it, in eval mode on
    ``device``. ``options`` are offered to the family's constructor (``models.build_model``)."""
    model = build_model(name, num_classes, normalize=normalize, options=options)
    load_model_state(model, ckpt["model"], path, name)
    return fast_path(model.to(device), device, amp=amp).eval()


def test_loader(dataset: str, data_path: str, transform, *, n: int = 0, batch_size: int, workers: int,
                verify: bool = True):
    """The first ``n`` test images (0 = all); under torchrun each rank gets a contiguous block. ``verify`` checks
    the official files' MD5 sums.

    Returns:
        ``(loader, n)`` with ``n`` the number of images evaluated over all ranks.
    """
    test_set = load_dataset(dataset, data_path, False, transform, verify=verify)
    if n > len(test_set):
        print(f"note: {n} test points asked for, the test set has {len(test_set)}; all are used", flush=True)
    n = min(n or len(test_set), len(test_set))
    shard = Subset(test_set, list(dist.shard(n)))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=min(workers, os.cpu_count() or 1)), n


def attack_accuracy(model, loader, device, name: str, attack=None, *, bar=True, amp=False) -> dict:
    """Clean accuracy and, with ``attack``, accuracy under it, on the whole loader.

    Returns:
        ``clean`` and (with an attack) ``acc``, fractions; ``clean_flags`` and ``flags``, per-example correctness
        (bool, CPU); for deformation attacks (``attack.produces_flow``) also ``tnorm``, the T-norm in pixels of each
        example's flow.
    """
    tnorms = []

    def run(x, y):
        x_adv = attack(x, y)
        if getattr(attack, "produces_flow", False):
            tnorms.append(flow_norms_pixels(attack.last_flow)["tnorm"].cpu())
        return x_adv

    with autocast(device, amp):
        acc, flags = evaluate(model, loader, device, {name: run} if attack is not None else None, bar=bar, desc=name,
                              return_flags=True)
    out = {"clean": acc["clean"], "clean_flags": flags["clean"]}
    if attack is not None:
        out.update(acc=acc[name], flags=flags[name])
    if tnorms:
        out["tnorm"] = dist.all_gather_cat(torch.cat(tnorms))
    return out


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy (a fraction) measured on ``n`` points."""
    return math.sqrt(max(acc * (1 - acc), 1e-12) / max(n, 1))


def sanity_checks(model, loader, device, *, eps, eot_iter, steps_scale=1.0, pgd_kwargs=None, results=None,
                  stages=None, n=1, bar=True) -> tuple[dict, list]:
    """Checks against gradient masking on ``loader``: unbounded PGD (eps = 1) must reach ~0 %, 500 PGD steps must
    not do worse than 10, and gradient-free Square must not fool points that the white-box stages of an AA-style
    :class:`MultiAttack` missed.

    Args:
        eps: the L-inf budget ([0, 1] units); eot_iter: EOT passes; steps_scale: as ``--steps_scale``.
        pgd_kwargs: speed options for PGD (batched_eot, amp, eot_batch).
        results: name -> result row (``acc``, a fraction) of the attacks already run; ``stages``: name -> attack.
        n: number of evaluated points (for the standard error).
    Returns:
        ``(checks, warnings)``.
    """
    checks, warnings = {}, []
    results, stages, kw = results or {}, stages or {}, dict(pgd_kwargs or {})
    steps = max(1, int(round(50 * steps_scale)))
    big = PGD(model, eps=1.0, alpha=0.1, steps=steps, eot_iter=eot_iter, **kw)
    few = PGD(model, eps=eps, alpha=2 / 255, steps=max(1, int(round(10 * steps_scale))), eot_iter=eot_iter, **kw)
    acc = evaluate(model, loader, device, {"unbounded": big, "PGD10": few}, bar=bar, desc="sanity")
    checks["unbounded_pgd_acc"] = acc["unbounded"]
    if acc["unbounded"] > 0.01:
        warnings.append(f"PGD with eps = 1 (unbounded) leaves {100 * acc['unbounded']:.2f}% accuracy: gradients may "
                        f"be masked or the attack too short")
    checks["pgd10_acc"] = acc["PGD10"]
    if "PGD500" in results:
        longer = results["PGD500"]["acc"]
        checks["pgd500_minus_pgd10"] = longer - acc["PGD10"]
        if longer > acc["PGD10"] + 2 * standard_error(acc["PGD10"], n):
            warnings.append(f"PGD500 ({100 * longer:.2f}%) is weaker than PGD10 ({100 * acc['PGD10']:.2f}%): more "
                            f"steps should not help the model; suspect gradient masking")
    for name, attack in stages.items():
        if isinstance(attack, MultiAttack):
            square = attack.fooled_by.get("Square", 0)
            checks[f"{name}_square_only_successes"] = square
            if square > 0:
                warnings.append(f"{name}: gradient-free Square fooled {square} points the white-box stages missed; "
                                f"suspect gradient masking")
    return checks, warnings
