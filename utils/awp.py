"""Adversarial Weight Perturbation (Wu et al., NeurIPS 2020; csdongxian/AWP ``utils_awp.py``): one step of SGD (no
momentum, no weight decay) on a proxy copy of the model to maximise the objective's proxy loss (EOT over the GSeM
noise), then every conv/linear weight (state_dict entries with 'weight' in the name and more than one dimension) is
moved by gamma * ||w|| * (w_proxy - w) / ||w_proxy - w||, from the warm-up epoch on.

The proxy loss, gamma and warm-up are the objective's (``utils.losses.Objective``): -CE on the adversarial batch,
gamma 0.01, no warm-up for AT-AWP and for GSeM's AWP (X-L-Liu/GSeM ``train_gsem_awp.py``, proxy lr 0.01);
-(CE(x) + beta KL) with gamma 0.005 and AWP from epoch 10 on for TRADES-AWP (``TradesAWP``).

Use: ``state = awp.perturb(awp.calc(x_adv, y, x))`` before the loss, ``awp.restore(state)`` after
``optimizer.step()`` (``utils.training.TrainStep`` does both, from the warm-up epoch on).
"""
from __future__ import annotations

import torch

from models import gradient_correction

from .distributed import all_reduce_sum, world_size
from .eot import eot_backward
from .losses import awp_adversarial_ce

EPS = 1e-20


class AWP:
    """Args:
        model: the model to perturb (the plain module, not a DDP wrapper).
        proxy: a second instance of the same architecture.
        gamma: perturbation size relative to each weight's norm.
        proxy_lr: the proxy's SGD step.
        eot_iter: noisy passes for the proxy gradient.
        loss_fn: the proxy's objective ``loss_fn(proxy, x_in, y, x) -> (loss, logits, terms)``, descended (so it is
            the negative of what AWP maximises); default -CE on the adversarial batch.
        warmup: the first epoch (1-indexed) with AWP; 0 = from the start.
        correct: GSeM's gradient correction in the proxy's passes (``--gradient_correction`` governs it).
    """

    def __init__(self, model, proxy, gamma: float = 0.01, proxy_lr: float = 0.01, eot_iter: int = 10, loss_fn=None,
                 warmup: int = 0, correct: bool = True):
        self.model, self.proxy, self.gamma, self.eot_iter = model, proxy, gamma, eot_iter
        self.loss_fn, self.warmup, self.correct = loss_fn or awp_adversarial_ce, warmup, correct
        self.proxy_optim = torch.optim.SGD(proxy.parameters(), lr=proxy_lr)

    def active(self, epoch: int) -> bool:
        """Whether AWP perturbs the weights in ``epoch`` (1-indexed, counted over the whole run)."""
        return epoch >= self.warmup

    def calc(self, x_adv, y, x=None) -> dict:
        """The normalised weight-perturbation direction per perturbed parameter name (``x``: the clean batch, for
        proxy objectives that need it)."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        self.proxy_optim.zero_grad(set_to_none=True)
        with gradient_correction(self.proxy, self.correct):
            eot_backward(lambda: self.loss_fn(self.proxy, x_adv, y, x), self.eot_iter, params=self.proxy.parameters())
        for p in self.proxy.parameters():  # distributed: the proxy step uses the gradient of the global batch
            if p.grad is not None:
                all_reduce_sum(p.grad).div_(world_size())
        self.proxy_optim.step()
        diff = {}
        proxy_sd = self.proxy.state_dict()
        with torch.no_grad():
            for name, w in self.model.state_dict().items():
                if w.dim() > 1 and "weight" in name:  # the authors' order: ||w|| / (||d|| + eps) * d
                    d = proxy_sd[name] - w
                    diff[name] = w.norm() / (d.norm() + EPS) * d
        return diff

    def perturb(self, diff: dict) -> dict:
        """w <- w + gamma * diff (the authors' ``add_into_weights``). Returns the state ``restore`` needs."""
        self._add(diff, self.gamma)
        return diff

    def restore(self, diff: dict):
        """w <- w - gamma * diff on the weights the optimizer has just updated, as the authors' ``restore``: the
        perturbation leaves and the update stays."""
        self._add(diff, -self.gamma)

    def _add(self, diff: dict, coeff: float):
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, d in diff.items():
                params[name].add_(coeff * d)
