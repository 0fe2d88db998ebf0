"""The one model registry: a name -> constructor map shared by every script.

Register a constructor with ``@register("name", "Alias")``; build it with
``build_model(name, num_classes)``. Every model takes images in [0, 1]; pass
``normalize=(mean, std)`` to put a per-channel normalisation inside the model
(as non-persistent buffers, so state_dict keys stay those of the reference).
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_CANONICAL: dict[str, str] = {}  # lower-cased accepted name -> canonical (first registered) name
_DISPLAY: dict[str, str] = {}  # lower-cased accepted name -> name as registered


def register(*names: str):
    """Decorator: register a constructor ``fn(num_classes, **kwargs)`` under one or more names."""

    def deco(fn):
        for name in names:
            if name.lower() in _REGISTRY:
                raise ValueError(f"model name {name!r} registered twice")
            _REGISTRY[name.lower()] = fn
            _CANONICAL[name.lower()] = names[0]
            _DISPLAY[name.lower()] = name
        return fn

    return deco


def list_models() -> list[str]:
    """All accepted model names (canonical names and aliases; lookup ignores case), sorted."""
    return sorted(_DISPLAY.values(), key=str.lower)


def canonical_name(name: str) -> str:
    """The canonical registry name of ``name`` (case-insensitive); ValueError listing valid names if unknown."""
    key = name.lower()
    if key not in _REGISTRY:
        valid = ", ".join(list_models())
        raise ValueError(f"unknown model name {name!r}; valid names: {valid}")
    return _CANONICAL[key]


class Normalize(nn.Module):
    """Per-channel (x - mean) / std with non-persistent buffers (not in the state_dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def model_options(name: str) -> dict:
    """The keyword options the constructor of ``name`` takes besides ``num_classes``, with their defaults
    (GSeM: ``{"alpha": 6, "beta": 4, "gradient_correction": True}``; the other families: ``{}``)."""
    params = inspect.signature(_REGISTRY[canonical_name(name).lower()]).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def build_model(name: str, num_classes: int, normalize: tuple | None = None, options: dict | None = None,
                **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (case-insensitive), e.g. ``vgg11``, ``resnet18``, ``wrn28_10``, ``GSeMResNet18``.
        num_classes: size of the output layer.
        normalize: optional ``(mean, std)``; the model then normalises its [0, 1] input itself.
        options: settings offered to any family (e.g. ``{"alpha": 6, "beta": 4}``); only those the constructor
            takes (:func:`model_options`) are passed, so scripts need not know which family takes what.
        kwargs: passed to the constructor as they are.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    accepted = model_options(name)
    kwargs = {**{k: v for k, v in (options or {}).items() if k in accepted}, **kwargs}
    model = _REGISTRY[canonical_name(name).lower()](int(num_classes), **kwargs)
    if normalize is not None:
        model.input_norm = Normalize(*normalize)
    return model
