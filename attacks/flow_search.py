"""A gradient-free attack on flow fields: random search inside the authors' L-inf flow budget, in the manner of the
Square Attack (Andriushchenko et al., ECCV 2020) on pixels.

The flow starts as vertical stripes of +-eps (each column and component a random sign) and, query after query, a
random square window of the flow is set to new random signs (one per component) and kept if it lowers the C&W margin
Z_y - max_{i != y} Z_i of the warped image; the window's area shrinks on Square's schedule (p from 0.8, halved at
fixed fractions of the query budget). An example leaves the search once fooled. Every flow stays within the budget
(|n| = eps per component), so against a model whose flow gradients are masked it still finds what a gradient attack
at the same budget misses.
"""
from __future__ import annotations

import math

import torch

from utils.argtypes import positive_int
from utils.flow import warp

from .base import Attack
from .flow import FLOW_EPS
from .registry import Budget, Knob, register_attack

# Square's schedule, as fractions of the query budget: p is halved at each (its iterations 10, 50, ... of 10,000)
HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


def margin(logits, y):
    """Z_y - max_{i != y} Z_i: negative once the example is misclassified."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(1)[0]
    return true - other


class FlowRandomSearch(Attack):
    """Args: eps (L-inf flow budget, normalised units: 0.01 = 0.155 px at 32 x 32), queries (forwards per example, at
    most), p_init (first window area, a fraction of the image)."""

    produces_flow = True

    def __init__(self, model, eps=0.01, queries=1000, p_init=0.8):
        super().__init__(model)
        self.eps, self.queries, self.p_init = float(eps), int(queries), p_init
        self.last_flow = self.last_success = None

    def _margin(self, x, n, y):
        with torch.no_grad():
            return margin(self.model(warp(x, n).clamp(0, 1)), y)

    def perturb(self, x, y):
        b, _, h, w = x.shape
        signs = torch.randint(0, 2, (b, 1, w, 2), device=x.device).to(x.dtype) * 2 - 1
        n = (self.eps * signs).expand(b, h, w, 2).clone()
        best = self._margin(x, n, y)
        for i in range(self.queries):
            todo = (best > 0).nonzero().squeeze(1)
            if todo.numel() == 0 or self.eps == 0:
                break
            p = self.p_init / 2 ** sum(i >= f * self.queries for f in HALVINGS)
            s = min(h, w, max(1, round(math.sqrt(p * h * w))))
            r = torch.randint(0, h - s + 1, (todo.numel(),), device=x.device)
            c = torch.randint(0, w - s + 1, (todo.numel(),), device=x.device)
            new = self.eps * (torch.randint(0, 2, (todo.numel(), 2), device=x.device).to(x.dtype) * 2 - 1)
            rows = torch.arange(h, device=x.device).view(1, h, 1)
            cols = torch.arange(w, device=x.device).view(1, 1, w)
            inside = ((rows >= r.view(-1, 1, 1)) & (rows < (r + s).view(-1, 1, 1)) & (cols >= c.view(-1, 1, 1))
                      & (cols < (c + s).view(-1, 1, 1))).unsqueeze(-1)
            cand = torch.where(inside, new.view(-1, 1, 1, 2), n[todo])
            m = self._margin(x[todo], cand, y[todo])
            better = m < best[todo]
            n[todo[better]], best[todo[better]] = cand[better], m[better]
        with torch.no_grad():
            x_def = warp(x, n).clamp(0, 1)
            success = self.model(x_def).argmax(1) != y
        self.last_flow, self.last_success = n * success.view(-1, 1, 1, 1), success
        return torch.where(success.view(-1, 1, 1, 1), x_def, x)


@register_attack("flow-rs", FLOW_EPS, Knob("flow_rs_queries", positive_int, 1000, "queries of the flow random search",
                                           steps=True), budget=Budget("flow_eps", "flow_linf"), gradient="black")
def flow_random_search(model, cfg):
    """Gradient-free: Square-style random search on the flow inside the flow attack's L-inf budget."""
    return FlowRandomSearch(model, eps=cfg.flow_eps, queries=cfg.flow_rs_queries)
