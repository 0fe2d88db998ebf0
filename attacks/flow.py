"""The FGR authors' L-infinity flow attack (xpf/Flow-Gradient-Regularization ``attacks/gradient.py``):
iterative sign-gradient ascent of the cross-entropy over a flow field.

Budget: ``eps`` is an L-infinity bound on every flow component in normalised align_corners=True units
(1 px = 2 / (W - 1)); the reference's eps = 0.01 is 0.155 px at 32 x 32. Step ``eps / steps``, no random start,
last iterate; ``steps=1`` is the single-step (FGSM-on-the-flow) attack.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.argtypes import flow_budget, positive_int
from utils.flow import warp

from .base import Attack
from .registry import Budget, Knob, register_attack


class FlowAttack(Attack):
    """Multi-step L-inf flow attack.

    Args:
        model: classifier on [0, 1] images.
        eps: flow budget, normalised units (0.01 = 0.155 px at 32 x 32).
        steps: number of sign steps K (reference evaluation K = 100; the function default of the reference is 7).
    Returns (call): deformed images ``clamp(grid_sample(x, id + n), 0, 1)`` (native sampler, zeros padding).
    """

    produces_flow = True

    def __init__(self, model, eps: float = 0.01, steps: int = 100):
        super().__init__(model)
        if eps < 0 or steps < 1:
            raise ValueError("FlowAttack needs eps >= 0 and steps >= 1")
        self.eps, self.steps = float(eps), int(steps)
        self.alpha = self.eps / self.steps
        self.last_flow = None  # flow of the last call, B x H x W x 2 (normalised units)

    def perturb(self, x, y):
        b, _, h, w = x.shape
        n = torch.zeros(b, h, w, 2, dtype=x.dtype, device=x.device)
        for _ in range(self.steps):
            n.requires_grad_(True)
            z = warp(x, n).clamp(0, 1)
            loss = F.cross_entropy(self.model(z), y)
            (g,) = torch.autograd.grad(loss, n)
            n = (n.detach() + self.alpha * g.sign()).clamp_(-self.eps, self.eps)
        self.last_flow = n.detach()
        with torch.no_grad():
            return warp(x, n).clamp(0, 1)


FLOW_EPS = Knob("flow_eps", flow_budget, 0.01, "L-inf flow budget of the authors' flow attack",
                unit="normalised align_corners=True units, 0.01 = 0.155 px at 32x32")
FLOW_STEPS = Knob("flow_steps", positive_int, 100, "flow attack steps K (step flow_eps/K; 1 = the single-step attack)",
                  flags=("--steps", "--flow_steps"), steps=True)


@register_attack("flow", FLOW_EPS, FLOW_STEPS, budget=Budget("flow_eps", "flow_linf"),
                 stronger_than=("flow-rs",))  # its gradient-free twin: masked flow gradients would make it weaker
def flow(model, cfg):
    """The FGR authors' multi-step L-inf flow attack: sign ascent of CE on the flow, step eps/K, last iterate."""
    return FlowAttack(model, eps=cfg.flow_eps, steps=cfg.flow_steps)
