"""The one training loop, shared by every training script.

A method is three choices, plugged into :class:`TrainStep`:

- the *loss*, a pure function ``loss_fn(model, x_in, y, x) -> (loss, logits, terms)`` (``utils.losses``): ``x_in``
  the batch the input policy made, ``x`` the clean batch (MART and TRADES need both), ``terms`` a dict of scalar
  tensors to log (may be empty). It does not zero gradients, step or change modes;
- the *input policy* ``make_input(x, y) -> x_in``: the clean batch (``None``), the whole batch adversarial (the
  attack itself) or the even-indexed half adversarial (:func:`half_adversarial`);
- optionally an AWP object (``utils.awp``) and ``eot_iter`` noisy passes per update.

:func:`fit` runs epochs of steps, evaluates, and hands every epoch to a ``utils.checkpoint.Checkpointer`` (best and
last checkpoints, resume, JSON log). Schedules around the loop (GSeM's warm-restart reloads) belong to the method's
own module.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .eot import eot_backward
from .errors import Interrupted, UserError
from .precision import autocast

BAR_REFRESH = 1.0  # seconds between updates of the bar's running numbers (each update syncs with the device)


class Diverged(UserError):
    """A non-finite loss, loss term or gradient: training stops before anything of the epoch is saved."""


def _finite(loss, terms, model) -> torch.Tensor:
    """One device boolean: the loss, every term and every parameter gradient of the step just taken are finite."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    ok = torch.isfinite(loss)
    for v in terms.values():
        ok = ok & torch.isfinite(v).all()
    if grads:  # a sum of norms is finite iff every gradient is (norms are >= 0); one multi-tensor kernel
        norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
        ok = ok & torch.isfinite(torch.stack([n.float() for n in norms]).sum())
    return ok


def _check_finite(pending: list, epoch: int, n_steps: int) -> None:
    """Raise :class:`Diverged` naming the first step of ``pending`` ([(step, loss, terms, finite)]) that was not
    finite. One device sync for the whole list."""
    if not pending:
        return
    flags = torch.stack([f for *_, f in pending]).tolist()
    if all(flags):
        pending.clear()
        return
    step, loss, terms, _ = pending[flags.index(False)]
    parts = ", ".join(f"{k} {v.item():.4g}" for k, v in {"loss": loss, **terms}.items())
    raise Diverged(f"training diverged at epoch {epoch}, step {step + 1}/{n_steps}: {parts} "
                   f"(a loss, a loss term or a gradient is not finite)")


def half_adversarial(attack):
    """Input policy of GSeM's adversarial training: the even-indexed half of the batch replaced by
    ``attack(x, y)``, the odd half clean."""

    def make_input(x, y):
        x = x.clone()
        x[0::2] = attack(x[0::2], y[0::2])
        return x

    return make_input


class TrainStep:
    """One optimisation step, top to bottom: make the input, AWP perturb, ``eot_iter`` passes of ``loss.backward()``
    and the gradients divided by ``eot_iter`` (synchronised once, on the last pass, under DDP), optimizer step, AWP
    restore.

    Args:
        model: the training model (possibly DDP/compile-wrapped); ``loss_fn`` calls it.
        optimizer: its optimizer.
        loss_fn: ``loss_fn(model, x_in, y, x) -> (loss, logits, terms)`` (see the module docstring).
        make_input: input policy ``(x, y) -> x_in``; ``None`` trains on the clean batch.
        eot_iter: noisy forward/backward passes per update (GSeM's ``--gra_eot_num``), gradients averaged.
        awp: an object with ``active(epoch)``, ``calc(x_in, y, x)``, ``perturb(diff)`` and ``restore(state)``
            (``utils.awp.AWP``), or None.
        amp: bf16 autocast where the device has it natively (input, AWP and passes; the optimizer step in fp32).
        device: the device of the batches.
    Calling it with a batch returns ``(mean loss, logits of the last pass, mean terms)``, all detached.
    ``epoch`` (1-indexed over the whole run) is set by :func:`fit`; AWP's warm-up reads it.
    """

    def __init__(self, model, optimizer, loss_fn, *, make_input=None, eot_iter: int = 1, awp=None, amp=False,
                 device=None):
        if eot_iter < 1:
            raise ValueError(f"eot_iter must be >= 1, got {eot_iter}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.make_input, self.eot_iter, self.awp, self.amp = make_input, int(eot_iter), awp, amp
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epoch = 1

    def __call__(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            x_in = self.make_input(x, y) if self.make_input is not None else x
            awp = self.awp is not None and self.awp.active(self.epoch)
            perturbed = self.awp.perturb(self.awp.calc(x_in, y, x)) if awp else None
            loss, logits, terms = eot_backward(lambda: self.loss_fn(self.model, x_in, y, x), self.eot_iter,
                                               self.model)
        self.optimizer.step()
        if perturbed is not None:
            self.awp.restore(perturbed)
        return loss, logits, terms


def _console(key: str, value: float) -> str:
    """Accuracies (keys ending in ``acc``: fractions in every file) in % on the console; other numbers as they are."""
    return f"{key} {100 * value:.2f}%" if key.endswith("acc") else f"{key} {value:.4g}"


def train_one_epoch(step: TrainStep, loader, *, bar=True, desc="train", epoch: int = 1) -> dict:
    """One pass of ``step`` over ``loader`` with the model in train mode. Stops with :class:`Diverged` at the first
    step whose loss, loss terms or gradients are not finite (checked with the bar's refresh, at least once a second,
    and at the end of the epoch).

    Returns:
        the epoch means of ``loss``, every loss term, ``acc`` (a fraction) and ``time`` (s), reduced over processes.
    """
    step.model.train()
    device = step.device
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device)
    seen, pending = 0, []
    t0 = last_check = time.time()
    bar = bar and dist.is_main()
    pbar = tqdm(loader, desc=desc, disable=not bar, leave=False, dynamic_ncols=True)
    for i, (x, y) in enumerate(pbar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, logits, terms = step(x, y)
        pending.append((i, loss, terms, _finite(loss, terms, step.model)))
        b = y.shape[0]
        seen += b
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0) + v.float() * b
        correct += (logits.argmax(1) == y).sum()
        if time.time() - last_check >= BAR_REFRESH:
            _check_finite(pending, epoch, len(pbar))
            last_check = time.time()
            if bar:
                pbar.set_postfix(loss=f"{sums['loss'].item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    pbar.close()
    _check_finite(pending, epoch, len(pbar))
    keys = list(sums)  # one reduction per epoch over ranks: [sums..., correct, seen]
    totals = dist.all_reduce_sum(torch.stack([*(sums[k] for k in keys), correct.float(),
                                              torch.tensor(float(seen), device=device)]))
    seen = totals[-1].item()
    if seen == 0:
        raise UserError("the training set is empty")
    out = {k: totals[i].item() / seen for i, k in enumerate(keys)}
    out["acc"] = totals[-2].item() / seen
    out["time"] = time.time() - t0
    return out


def fit(step: TrainStep, train_loader, scheduler, evaluate_fn, checkpointer, *, epochs: int, generator=None,
        resume: bool = False, bar: bool = True, log=print, hint: str = "the learning rate may be too high",
        check=None) -> dict:
    """Train for ``epochs`` epochs, from 0 or from the checkpointer's resume state.

    Args:
        step: the :class:`TrainStep` (its model and optimizer are the ones trained and saved).
        train_loader: batches ``(x, y)``.
        scheduler: learning-rate scheduler, stepped once per epoch.
        evaluate_fn: ``evaluate_fn() -> dict`` of metrics after each epoch (must hold the checkpointer's key).
        checkpointer: a ``utils.checkpoint.Checkpointer`` (best/last checkpoints, JSON log, resume).
        epochs: the number of epochs of this call.
        generator: the data-order generator (saved and restored with the resume state).
        resume: continue from the checkpointer's resume state when it belongs to this call.
        bar: progress bars; log: where the per-epoch line goes.
        hint: the likely cause of a divergence, for its error message.
        check: ``check(history) -> str | None`` after each epoch's line (the records so far): a warning to print.
    Returns:
        the last epoch's record.
    Raises:
        Diverged (a UserError) at the first non-finite step, before anything of that epoch is saved.
    """
    net = dist.unwrap(step.model)
    start = checkpointer.restore(net, step.optimizer, scheduler, generator) if resume else 0
    if start:
        log(f"resumed from {checkpointer.last_path} at epoch {start} "
            f"(best {checkpointer.select_key} {checkpointer.best:.4g})")
    record = checkpointer.history[-1] if checkpointer.history else {}
    for epoch in range(start, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new order for every epoch of the run
            sampler.set_epoch(len(checkpointer.history))
        lr = step.optimizer.param_groups[0]["lr"]
        step.epoch = len(checkpointer.history) + 1  # over the whole run (a method's outer schedule included)
        try:
            stats = train_one_epoch(step, train_loader, bar=bar, desc=f"epoch {epoch + 1}/{epochs}", epoch=epoch + 1)
        except Diverged as e:
            kept = f"the last good state is {checkpointer.last_path}" if checkpointer.history else "nothing was saved"
            raise Diverged(f"{e}. Likely cause: {hint}. The model is not saved: {kept}.") from None
        except KeyboardInterrupt:
            done = len(checkpointer.history)
            raise Interrupted(f"interrupted in epoch {epoch + 1}: " + (
                f"{done} finished epoch{'s' if done > 1 else ''} saved in {checkpointer.last_path}; run the same "
                f"command with --resume to continue" if done else "no epoch had finished, nothing was saved; run the "
                "same command again to start")) from None
        scheduler.step()
        metrics = evaluate_fn()
        record = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v for k, v in stats.items()}, **metrics}
        improved = checkpointer.save(record, net, step.optimizer, scheduler, generator)
        parts = [f"epoch {epoch + 1:3d}/{epochs}", f"lr {lr:.4g}"]
        parts += [f"{k} {v:.4f}" for k, v in stats.items() if k not in ("acc", "time")]
        parts += [_console("train_acc", stats["acc"])] + [_console(k, v) for k, v in metrics.items()]
        parts += [f"best {_console(checkpointer.select_key, checkpointer.best)}{' *' if improved else ''}",
                  f"{stats['time']:.1f}s"]
        log(" | ".join(parts))
        warning = check(checkpointer.history) if check is not None else None
        if warning:
            log(warning)
    return record
