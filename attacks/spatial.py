"""Gradient-free spatial attacks: the worst case over a grid of rotations and translations (Engstrom et al.,
"Exploring the Landscape of Spatial Robustness", ICML 2019: on CIFAR-10, rotations within +-30 degrees and
translations within +-3 px (about 10 % of the image), a grid of 31 rotations x 5 x 5 translations, zero padding).

An example counts as fooled if any transform of the grid fools it; the transforms are tried in order of their largest
displacement (T-norm), so the one returned is the smallest fooling transform of the grid. ``last_params`` holds each
example's (angle in degrees, tx px, ty px), zero where nothing fooled it; ``last_flow`` the transform as a flow
(normalised align_corners=True units), so evaluation reports its size in pixels like the other deformations.
"""
from __future__ import annotations

import math

import torch

from utils.argtypes import positive_int, rotation_deg, translation_px
from utils.flow import pixel_flow_to_normalized, warp

from .base import Attack
from .registry import STEPS_SCALE, Budget, Knob, Measure, register_attack


def rigid_flow(angle_deg: float, tx: float, ty: float, h: int, w: int, device=None) -> torch.Tensor:
    """The 2 x H x W pixel flow (channel 0 horizontal) of sampling each output pixel p at R(angle)(p - c) + c + t,
    c the image centre: a rotation about the centre, then a translation (backward warp)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    cx, cy, a = (w - 1) / 2, (h - 1) / 2, math.radians(angle_deg)
    u, v = xs - cx, ys - cy
    dx = math.cos(a) * u - math.sin(a) * v - u + tx
    dy = math.sin(a) * u + math.cos(a) * v - v + ty
    return torch.stack([dx, dy])


def grid_values(limit: float, count: int) -> list:
    """``count`` values evenly spaced in [-limit, limit] (0 alone when count is 1 or the limit 0)."""
    if count <= 1 or limit == 0:
        return [0.0]
    return torch.linspace(-limit, limit, count).tolist()


class RotationTranslationGrid(Attack):
    """Args: max_rotation (degrees), max_translation (px), rotations and translations (grid values per axis)."""

    produces_flow = True

    def __init__(self, model, max_rotation=30.0, max_translation=3.0, rotations=31, translations=5):
        super().__init__(model)
        self.max_rotation, self.max_translation = float(max_rotation), float(max_translation)
        self.rotations, self.translations = int(rotations), int(translations)
        self.last_flow = self.last_success = self.last_params = None

    def transforms(self, h: int, w: int, device=None) -> list:
        """Every (angle, tx, ty) of the grid with its pixel flow, smallest T-norm first."""
        out = []
        for a in grid_values(self.max_rotation, self.rotations):
            for tx in grid_values(self.max_translation, self.translations):
                for ty in grid_values(self.max_translation, self.translations):
                    f = rigid_flow(a, tx, ty, h, w, device)
                    out.append((f.pow(2).sum(0).sqrt().max().item(), (a, tx, ty), f))
        return sorted(out, key=lambda t: t[0])

    def perturb(self, x, y):
        b, _, h, w = x.shape
        x_adv, params = x.clone(), torch.zeros(b, 3, device=x.device)
        flow = torch.zeros(b, 2, h, w, device=x.device, dtype=x.dtype)
        todo = torch.arange(b, device=x.device)
        with torch.no_grad():
            for _, p, f in self.transforms(h, w, x.device):
                if todo.numel() == 0:
                    break
                fb = f.to(x.dtype).expand(todo.numel(), 2, h, w)
                moved = warp(x[todo], pixel_flow_to_normalized(fb), padding_mode="zeros").clamp(0, 1)
                fooled = self.model(moved).argmax(1) != y[todo]
                idx = todo[fooled]
                x_adv[idx], flow[idx] = moved[fooled], fb[fooled]
                params[idx] = torch.tensor(p, device=x.device)
                todo = todo[~fooled]
        success = torch.ones(b, dtype=torch.bool, device=x.device)
        success[todo] = False
        self.last_flow, self.last_success, self.last_params = pixel_flow_to_normalized(flow), success, params
        return x_adv


# the largest rotation (degrees) and translation (pixels) of each example's rigid transform (``last_params`` holds
# its (angle, tx, ty))
ROTATION_TRANSLATION = Measure("rotation_translation", lambda x, x_adv, attack: torch.stack(
    [attack.last_params[:, 0].abs(), attack.last_params[:, 1:].abs().max(1)[0]], 1), (2.0, 0.5))


def _odd(count: int, scale: float) -> int:
    """``--steps_scale`` on a grid axis: the count scaled, kept odd so that 0 stays on the grid."""
    return max(1, 2 * round((count - 1) / 2 * scale) + 1)


@register_attack("rt-grid", Knob("rt_max_rotation", rotation_deg, 30.0, "largest rotation of the grid", unit="deg"),
                 Knob("rt_max_translation", translation_px, 3.0, "largest translation of the grid", unit="px"),
                 Knob("rt_rotations", positive_int, 31, "rotations on the grid"),
                 Knob("rt_translations", positive_int, 5, "translations per axis on the grid"), STEPS_SCALE,
                 budget=Budget(("rt_max_rotation", "rt_max_translation"), ROTATION_TRANSLATION))
def rt_grid(model, cfg):
    """Gradient-free: the smallest fooling rotation + translation of Engstrom et al.'s grid (+-30 deg, +-3 px)."""
    return RotationTranslationGrid(model, cfg.rt_max_rotation, cfg.rt_max_translation,
                                   _odd(cfg.rt_rotations, cfg.steps_scale), _odd(cfg.rt_translations, cfg.steps_scale))
