"""Train/eval mode save and restore (a bottom-floor helper: attacks run the model in eval mode and give every module
its own mode back, as torchattacks and AutoAttack do)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put ``model`` (every submodule) in eval mode, then give each module back its own train/eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
