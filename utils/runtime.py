"""How a run is set up: device choice, seeding, rank-0 printing, the layout fast path (cudnn autotuning,
channels_last), DDP/compile wrapping. Used by the scripts; attacks need only ``utils.precision`` and ``utils.modes``.
"""
from __future__ import annotations

import functools
import json
import random

import torch

from . import distributed as dist
from .errors import UserError
from .precision import bf16_native


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> cuda if available else cpu; ``'0'`` -> cuda:0 (the GSeM authors' ``--device 0``); otherwise the
    named device. Raises UserError when it is unknown or unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.isdigit():
        name = f"cuda:{name}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    torch.manual_seed(seed)


def start_run(args, print_args: bool = True):
    """What every script does first: resolve the device, join the process group under torchrun, print the full args
    (rank 0; ``print_args=False`` for a script that first adopts a checkpoint's settings and prints them then, with
    :func:`show_args`), seed.

    Returns:
        ``(device, say)``: the device, and a ``print`` that only rank 0 executes (flushed).
    """
    device = resolve_device(args.device)
    dist.init(device.type)
    device = dist.local_device(device)
    say = functools.partial(print, flush=True) if dist.is_main() else (lambda *a, **k: None)
    if print_args:
        show_args(say, args)
    seed_everything(args.seed)
    return device, say


def show_args(say, args) -> None:
    """The full args in one line (the first line of every run's output)."""
    say("args:", json.dumps(vars(args), sort_keys=True))


def fast_path(model, device, *, channels_last=None, amp=False, double_backward=False):
    """The layout part of the fast path, for training and evaluation alike (same mathematics).

    cudnn autotuning on CUDA; channels_last by default on CUDA, and on CPU when bf16 autocast is on and nothing is
    differentiated twice (measured on a 2-core AMX Xeon: GSeM-ResNet-18 bf16 passes 1.3x faster in channels_last,
    VGG-11 FGR steps with their double backward 2x slower, in fp32 and in bf16).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if channels_last is None:
        channels_last = device.type == "cuda" or (amp and bf16_native(device) and not double_backward)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_compile(compile: bool, double_backward: bool) -> None:
    """``--compile`` is refused, before anything runs, where the loss differentiates twice (torch.compile cannot)."""
    if compile and double_backward:
        raise UserError("--compile cannot differentiate twice (FGR/IGR with --fgr_lamb > 0); leave it off")


def prepare_training_model(model, device, *, channels_last=None, amp=False, double_backward=False, compile=False,
                           sync_bn=False):
    """The fast path around a model already on ``device``: :func:`fast_path`, DDP under torchrun, then
    ``torch.compile`` if asked.

    Returns:
        ``(train_model, model)``: the wrapped model for training steps and the plain module (attacks, evaluation,
        checkpoints).
    """
    model = fast_path(model, device, channels_last=channels_last, amp=amp, double_backward=double_backward)
    train_model = dist.wrap(model, device, sync_bn)
    if compile:
        train_model = torch.compile(train_model)
    return train_model, dist.unwrap(train_model)
