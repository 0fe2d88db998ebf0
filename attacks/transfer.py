"""Transfer attack (Papernot et al. 2017; the black-box check of Athalye et al., ICML 2018): PGD on a surrogate
model, its adversarial examples applied to the evaluated model. A defence that only masks its own gradients falls to
examples made on another model; robust accuracy under transfer far below the white-box attacks' is a red flag.

    python evaluate_gsem.py --model_load_path GSEM.pt --attacks transfer --surrogate PGD_AT.pt
"""
from __future__ import annotations

import os

import torch

from utils.errors import UserError

from .base import Attack
from .pgd import PGD
from .registry import EOT_ITER, EPS, STEPS_SCALE, Budget, Knob, register_attack, scaled

SURROGATE = Knob("surrogate", str, "", "checkpoint of the surrogate model whose PGD examples the transfer attack "
                 "applies (any checkpoint of this repository; its model is rebuilt from the file)", unit="path")
_LOADED: dict = {}  # (path, mtime) -> surrogate model on CPU, so several rows and draws load it once


def load_surrogate(path: str):
    """The model of checkpoint ``path`` (this repository's format: rebuilt from its ``model_spec``), in eval mode."""
    from models import build_from_spec
    from utils.checkpoint import load_checkpoint, load_model_state

    if not path:
        raise UserError("the transfer attack needs a surrogate model: --surrogate CHECKPOINT")
    key = (os.path.abspath(path), os.path.getmtime(path) if os.path.exists(path) else None)
    if key not in _LOADED:
        ckpt = load_checkpoint(path)
        spec = ckpt.get("model_spec")
        if not spec:
            raise UserError(f"--surrogate {path}: a bare state_dict does not say which model it holds; give a "
                            f"checkpoint written by this repository's training scripts")
        model = build_from_spec(spec)
        load_model_state(model, ckpt["model"], path, spec["name"])
        _LOADED[key] = model.eval()
    return _LOADED[key]


class Transfer(Attack):
    """Args: model (the evaluated model), surrogate (a model), eps, alpha, steps and eot_iter of the surrogate's PGD
    (random start, last iterate). Points the evaluated model already gets wrong are returned unchanged (one forward),
    so the attack never makes a point correct."""

    def __init__(self, model, surrogate, eps=8 / 255, alpha=2 / 255, steps=500, eot_iter=1, **pgd_options):
        super().__init__(model)
        self.surrogate, self.eps, self.alpha, self.steps, self.eot_iter = surrogate, eps, alpha, steps, eot_iter
        self.pgd_options = pgd_options

    def perturb(self, x, y):
        surrogate = self.surrogate.to(x.device)
        x_adv = PGD(surrogate, self.eps, self.alpha, self.steps, eot_iter=self.eot_iter, **self.pgd_options)(x, y)
        with torch.no_grad():
            wrong = self.model(x).argmax(1) != y
        return torch.where(wrong.view(-1, *[1] * (x.dim() - 1)), x, x_adv)


@register_attack("transfer", EPS, EOT_ITER, STEPS_SCALE, SURROGATE, budget=Budget("eps", "linf"), gradient="black")
def transfer(model, cfg):
    """PGD500 (step 2/255, EOT on a stochastic surrogate) on the --surrogate checkpoint, applied to the model."""
    return Transfer(model, load_surrogate(cfg.surrogate), eps=cfg.eps, alpha=2 / 255,
                    steps=scaled(500, cfg.steps_scale), eot_iter=cfg.eot_iter, batched_eot=cfg.batched_eot,
                    eot_batch=cfg.eot_batch)
