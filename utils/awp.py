"""Adversarial Weight Perturbation (Wu et al., NeurIPS 2020; csdongxian/AWP ``utils_awp.py``), as the GSeM
reference uses it (X-L-Liu/GSeM ``train_gsem_awp.py``): one step of SGD (lr 0.01, no momentum, no weight decay) on
a proxy copy of the model to maximise the cross-entropy on the adversarial batch (EOT over the GSeM noise), then
every conv/linear weight (state_dict entries with 'weight' in the name and more than one dimension) is moved by
gamma * ||w|| * (w_proxy - w) / ||w_proxy - w||, with gamma = 0.01 and no warm-up.

Use: ``state = awp.perturb(awp.calc(x_adv, y))`` before the loss, ``awp.restore(state)`` after ``optimizer.step()``
(``utils.training.TrainStep`` does both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum, world_size
from .eot import eot_backward

EPS = 1e-20


class AWP:
    """Args:
        model: the model to perturb (the plain module, not a DDP wrapper).
        proxy: a second instance of the same architecture.
        gamma: perturbation size relative to each weight's norm.
        proxy_lr: the proxy's SGD step.
        eot_iter: noisy passes for the proxy gradient.
    """

    def __init__(self, model, proxy, gamma: float = 0.01, proxy_lr: float = 0.01, eot_iter: int = 10):
        self.model, self.proxy, self.gamma, self.eot_iter = model, proxy, gamma, eot_iter
        self.proxy_optim = torch.optim.SGD(proxy.parameters(), lr=proxy_lr)

    def calc(self, x_adv, y) -> dict:
        """The normalised weight-perturbation direction per perturbed parameter name."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        self.proxy_optim.zero_grad(set_to_none=True)

        def one_pass():
            logits = self.proxy(x_adv)
            return -F.cross_entropy(logits, y), logits, {}

        eot_backward(one_pass, self.eot_iter)
        for p in self.proxy.parameters():  # distributed: the proxy step uses the gradient of the global batch
            if p.grad is not None:
                all_reduce_sum(p.grad).div_(world_size())
        self.proxy_optim.step()
        diff = {}
        proxy_sd = self.proxy.state_dict()
        with torch.no_grad():
            for name, w in self.model.state_dict().items():
                if w.dim() > 1 and "weight" in name:
                    d = proxy_sd[name] - w
                    diff[name] = d * w.norm() / (d.norm() + EPS)
        return diff

    def perturb(self, diff: dict):
        """Add gamma * diff to the weights. Returns the state ``restore`` needs."""
        params = dict(self.model.named_parameters())
        state = {}
        with torch.no_grad():
            for name, d in diff.items():
                p = params[name]
                original = p.detach().clone()
                p.add_(self.gamma * d)
                state[name] = (original, p.detach().clone())
        return state

    def restore(self, state):
        """Remove the perturbation, keeping whatever update the optimizer made since ``perturb``:
        w <- w_original + (w_now - w_perturbed), which is exactly w_original when no step was taken."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, (original, perturbed) in state.items():
                p = params[name]
                p.copy_(original + (p - perturbed))
