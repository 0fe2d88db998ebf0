"""The one training loop, shared by every training script.

A *criterion* is any callable ``criterion(model, x, y) -> (loss, logits, logs)``: ``loss`` is the scalar to
backpropagate, ``logits`` the predictions used for the training accuracy, ``logs`` a dict of detached scalars to
average over the epoch. A criterion that accumulates gradients itself (EOT over several noisy passes) does its own
backward and returns a detached loss; the loop then only steps. A criterion may define ``after_step(model)``
(called after ``optimizer.step()``, e.g. to undo a weight perturbation). Plain CE, FGR/IGR, adversarial training,
MART and AWP differ only in the criterion.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .cli import format_args, seed_everything
from .errors import UserError

BAR_REFRESH = 20  # update the bar's running numbers every N steps (each update syncs with the device)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise the named device, with a clear error if it is unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.isdigit():  # the GSeM reference's --device 0 means cuda:0
        name = f"cuda:{name}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu")
    return device


def start_run(args):
    """What every script does first: resolve the device, join the process group under torchrun, print the full args
    (rank 0), seed. Returns ``(device, say)`` with ``say`` a print that only rank 0 executes."""
    device = resolve_device(args.device)
    dist.init(device.type)
    device = dist.local_device(device)
    say = print if dist.is_main() else (lambda *a, **k: None)
    say("args:", format_args(args), flush=True)
    seed_everything(args.seed)
    return device, say


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA GPUs with bf16, CPUs with AMX or AVX512-BF16 (oneDNN).
    Elsewhere bf16 is emulated and slower than fp32, so autocast stays off."""
    return _bf16_native(device.type)


@functools.lru_cache(maxsize=None)
def _bf16_native(device_type: str) -> bool:
    if device_type == "cuda":  # Ampere or newer; older GPUs only emulate bf16
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation
            return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, c, lambda: False)() for c in checks)
    return False


def fast_path(model, device, *, channels_last=None, amp=False, double_backward=False):
    """The layout part of the fast path, for training and evaluation alike (exact: same mathematics): cudnn
    autotuning on CUDA; channels_last by default on CUDA, and on CPU when bf16 autocast is on and nothing is
    differentiated twice (measured on a 2-core AMX Xeon: GSeM-ResNet-18 bf16 passes 1.3x faster in channels_last,
    VGG-11 FGR steps with their double backward 2x slower, in fp32 and in bf16)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if channels_last is None:
        channels_last = device.type == "cuda" or (amp and bf16_native(device) and not double_backward)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_training_model(model, device, *, channels_last=None, amp=False, double_backward=False, compile=False,
                           sync_bn=False):
    """The fast path around a model already on ``device``: :func:`fast_path` (cudnn autotuning, channels_last),
    DDP under torchrun (``utils.distributed``), then ``torch.compile`` if asked. Returns ``(train_model, model)``:
    the wrapped model for training steps and the plain module (attacks, evaluation, checkpoints)."""
    model = fast_path(model, device, channels_last=channels_last, amp=amp, double_backward=double_backward)
    train_model = dist.wrap(model, device, sync_bn)
    if compile:
        train_model = torch.compile(train_model)
    return train_model, dist.unwrap(train_model)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when enabled and the device has native bf16 (:func:`bf16_native`); a no-op elsewhere. bf16
    keeps fp32's exponent range, so no GradScaler is needed."""
    if enabled and bf16_native(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, optimizer, criterion, x, y, device, amp=False):
    """One optimisation step on a batch. Returns the criterion's ``(loss, logits, logs)``."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp):
        loss, logits, logs = criterion(model, x, y)
    if loss.requires_grad:
        loss.backward()
    optimizer.step()
    if hasattr(criterion, "after_step"):
        criterion.after_step(model)
    return loss, logits, logs


def train_one_epoch(model, loader, optimizer, criterion, device, *, amp=False, bar=True, desc="train") -> dict:
    """One pass over ``loader``. Returns the epoch means of loss, accuracy (%) and the criterion's logs."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen = 0
    t0 = time.time()
    bar = bar and dist.is_main()
    pbar = tqdm(loader, desc=desc, disable=not bar, leave=False, dynamic_ncols=True)
    for step, (x, y) in enumerate(pbar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, logits, logs = train_step(model, optimizer, criterion, x, y, device, amp)
        b = y.shape[0]
        seen += b
        for k, v in {"loss": loss.detach(), **logs}.items():
            sums[k] = sums.get(k, 0) + v.float() * b
        correct += (logits.detach().argmax(1) == y).sum()
        if bar and step % BAR_REFRESH == 0:
            pbar.set_postfix(loss=f"{sums['loss'].item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}")
    pbar.close()
    # one reduction per epoch over ranks: [sums..., correct, seen]
    keys = list(sums)
    totals = dist.all_reduce_sum(torch.stack([*(sums[k] for k in keys), correct.float(),
                                              torch.tensor(float(seen), device=device)]))
    seen = totals[-1].item()
    if seen == 0:
        raise UserError("the training set is empty")
    out = {k: totals[i].item() / seen for i, k in enumerate(keys)}
    out["acc"] = 100.0 * totals[-2].item() / seen
    out["time"] = time.time() - t0
    return out


def evaluate(model, loader, device, attacks: dict | None = None, *, bar=True, desc="eval", return_flags=False):
    """Accuracy (%) on ``loader`` in eval mode: ``clean`` and one entry per attack in ``attacks`` (name -> callable
    ``attack(x, y) -> x_adv``), each judged by one forward of its output. The model's train/eval mode is restored
    afterwards. With ``return_flags`` also returns name -> per-example correctness (bool tensor, CPU)."""
    attacks = attacks or {}
    was_training = model.training
    model.eval()
    flags = {name: [] for name in ["clean", *attacks]}
    correct = {name: torch.zeros((), device=device) for name in flags}
    seen = 0
    bar = bar and dist.is_main()
    pbar = tqdm(loader, desc=desc, disable=not bar, leave=False, dynamic_ncols=True)
    try:
        for step, (x, y) in enumerate(pbar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for name in flags:
                x_in = x if name == "clean" else attacks[name](x, y)
                with torch.no_grad():
                    hit = model(x_in).argmax(1) == y
                correct[name] += hit.sum()
                if return_flags:
                    flags[name].append(hit.cpu())
            seen += y.shape[0]
            if bar and (attacks or step % BAR_REFRESH == 0):
                pbar.set_postfix({k: f"{100 * v.item() / seen:.2f}" for k, v in correct.items()})
    finally:
        pbar.close()
        model.train(was_training)
    names = list(correct)
    totals = dist.all_reduce_sum(torch.stack([*(correct[k].float() for k in names),
                                              torch.tensor(float(seen), device=device)]))
    seen = totals[-1].item()
    if seen == 0:
        raise UserError("the evaluation set is empty")
    acc = {name: 100.0 * totals[i].item() / seen for i, name in enumerate(names)}
    if return_flags:  # ranks hold contiguous shards: concatenating in rank order restores the order
        return acc, {name: dist.all_gather_cat(torch.cat(f)) for name, f in flags.items()}
    return acc


class JsonLog:
    """A JSON file holding the run's args and one record per epoch, rewritten atomically after each epoch."""

    def __init__(self, path: str, args: dict, history: list | None = None):
        self.path, self.args, self.history = path, args, list(history or [])

    def append(self, record: dict) -> None:
        self.history.append(record)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"args": self.args, "epochs": self.history}, f, indent=2)
        os.replace(tmp, self.path)


# args that may differ between an interrupted run and its resumption
RESUME_FREE_ARGS = {"epochs", "resume", "no_bar", "device", "workers"}


def fit(*, model, criterion, optimizer, scheduler, train_loader, evaluate_fn, epochs: int, device, args: dict,
        best_path, last_path: str, log_path: str, select_key: str = "val_acc", select: str = "best",
        amp: bool = False, bar: bool = True, generator: torch.Generator | None = None, resume: bool = False,
        stage: int = 0, carry: dict | None = None, log=print) -> dict:
    """Train for ``epochs`` epochs (counting from 0, or from a resumed state), keeping two checkpoints:

    - the *best* checkpoint: the model with the best ``select_key`` so far (``select='best'``, the references' rule)
      or the last epoch's model (``select='last'``). ``best_path`` is a path, or a function of the epoch record
      giving one (e.g. with the accuracy in the name); when the name changes the previous best file is removed;
    - ``last_path``: the full training state after the latest finished epoch, for ``--resume``.

    Both hold ``model``, ``args``, ``epoch``, ``metrics``, ``optimizer``, ``scheduler``, ``rng``, ``history``,
    ``stage`` and are written atomically. ``evaluate_fn(model) -> dict`` gives the per-epoch metrics (must contain
    ``select_key``). ``stage`` numbers consecutive calls of one run (GSeM's warm-restart reloads); ``carry`` passes
    ``best``, ``best_file`` and ``history`` from one stage to the next. A resume continues the state at
    ``last_path`` only if it belongs to this ``stage``.
    Returns ``{"record", "best", "best_file", "history"}`` to carry on.
    """
    carry = carry or {}
    main_rank = dist.is_main()
    if not main_rank:
        log = lambda *a, **k: None  # noqa: E731
    net = dist.unwrap(model)  # what is saved and loaded (no DDP/compile prefixes)
    start = 0
    best, best_file, history = carry.get("best", -math.inf), carry.get("best_file"), list(carry.get("history", []))
    if resume and os.path.isfile(last_path):
        state = load_checkpoint(last_path, map_location=device)
        changed = {k: (state["args"].get(k), v) for k, v in args.items()
                   if k not in RESUME_FREE_ARGS and state["args"].get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise UserError(f"--resume: {last_path} was written with other settings ({detail})")
        if state.get("stage", 0) == stage:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], generator)
            start, best, history = state["epoch"], state["best"], state["history"]
            best_file = state.get("best_file", best_file)
            log(f"resumed from {last_path} at epoch {start} (best {select_key} {best:.4g})")
    elif resume:
        log(f"--resume: no state at {last_path}; starting from scratch")
    json_log = JsonLog(log_path, args, history)
    record = history[-1] if history else {}
    for epoch in range(start, epochs):
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):  # DistributedSampler: a new order every epoch
            train_loader.sampler.set_epoch(epoch + 1000 * stage)
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(model, train_loader, optimizer, criterion, device, amp=amp, bar=bar,
                                      desc=f"epoch {epoch + 1}/{epochs}")
        scheduler.step()
        metrics = evaluate_fn(model)
        improved = metrics[select_key] > best
        best = max(best, metrics[select_key])
        record = {"stage": stage, "epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()},
                  **metrics, f"best_{select_key}": best}
        if main_rank:
            json_log.append(record)
        else:
            json_log.history.append(record)
        state = {"format": "robust-deform/1", "model": net.state_dict(), "args": args, "epoch": epoch + 1,
                 "stage": stage, "metrics": record, "best": best, "history": json_log.history,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(generator)}
        if select == "last" or improved:
            path = best_path(record) if callable(best_path) else best_path
            state["best_file"] = path
            if main_rank:
                atomic_save(state, path)
            if main_rank and best_file and os.path.abspath(best_file) != os.path.abspath(path) and os.path.isfile(best_file) \
                    and best_file != carry.get("protected"):
                os.remove(best_file)
            best_file = path
        state["best_file"] = best_file
        if main_rank:
            atomic_save(state, last_path)
        parts = [f"epoch {epoch + 1:3d}/{epochs}", f"lr {lr:.4g}"]
        parts += [f"{k} {v:.4f}" for k, v in train_stats.items() if k not in ("acc", "time")]
        parts += [f"train_acc {train_stats['acc']:.2f}"] + [f"{k} {v:.4g}" for k, v in metrics.items()]
        parts += [f"best {best:.4g}{' *' if improved else ''}", f"{train_stats['time']:.1f}s"]
        log(" | ".join(parts))
    return {"record": record, "best": best, "best_file": best_file, "history": json_log.history}
