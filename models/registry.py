"""The one model registry: a name -> constructor map shared by every script.

Register a constructor with ``@register("name", "Alias")``; build it with ``build_model(name, num_classes,
**options)``. Every model takes images in [0, 1]. ``normalize=(mean, std)`` normalises the input inside any model,
whatever its class: the statistics are non-persistent buffers of the model (so state_dict keys stay the
reference's) applied by a forward pre-hook that the registry installs. An option the constructor does not take is an
error, never dropped. The built model carries ``model_spec`` (name, classes, options, normalisation), which checkpoints
store, so that :func:`build_from_spec` rebuilds the model from the file alone.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_CANONICAL: dict[str, str] = {}  # lower-cased accepted name -> canonical (first registered) name
_DISPLAY: dict[str, str] = {}  # lower-cased accepted name -> name as registered


def register(*names: str):
    """Decorator: register a constructor ``fn(num_classes, **options)`` under one or more names."""

    def deco(fn):
        for name in names:
            if name.lower() in _REGISTRY:
                raise ValueError(f"model name {name!r} is taken by {_DISPLAY[name.lower()]!r} (names are "
                                 f"case-insensitive)")
            _REGISTRY[name.lower()] = fn
            _CANONICAL[name.lower()] = names[0]
            _DISPLAY[name.lower()] = name
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove a model and its aliases (for tests and interactive use)."""
    fn = _REGISTRY[name.lower()]
    for key in [k for k, f in _REGISTRY.items() if f is fn]:
        del _REGISTRY[key], _CANONICAL[key], _DISPLAY[key]


def list_models(canonical: bool = False) -> list[str]:
    """All accepted model names (canonical names and aliases; lookup ignores case), sorted; ``canonical``: one name
    per model."""
    names = set(_CANONICAL.values()) if canonical else set(_DISPLAY.values())
    return sorted(names, key=str.lower)


def canonical_name(name: str) -> str:
    """The canonical registry name of ``name`` (case-insensitive); ValueError listing valid names if unknown."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    return _CANONICAL[key]


def model_options(name: str) -> dict:
    """The keyword options the constructor of ``name`` takes besides ``num_classes``, with their defaults
    (GSeM: ``{"alpha": 6, "beta": 4, "gradient_correction": True, "in_channels": 3}``)."""
    params = inspect.signature(_REGISTRY[canonical_name(name).lower()]).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}


def _normalize_input(module, args):
    return ((args[0] - module.input_mean) / module.input_std, *args[1:])


def build_model(name: str, num_classes: int, normalize: tuple | None = None, **options) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (case-insensitive), e.g. ``vgg11``, ``resnet18``, ``wrn28_10``, ``GSeMResNet18``.
        num_classes: size of the output layer.
        normalize: optional ``(mean, std)``; the model then normalises its [0, 1] input itself, whatever its class.
        options: keyword options of the constructor (``in_channels``, GSeM's ``alpha`` and ``beta``, ...).
    Raises:
        ValueError for an unknown name, ``num_classes < 1`` or an option the constructor does not take.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    canonical = canonical_name(name)
    accepted = model_options(canonical)
    refused = sorted(set(options) - set(accepted))
    if refused:
        raise ValueError(f"model {canonical!r} does not take {', '.join(refused)} (it takes: "
                         f"{', '.join(accepted) or 'no options'})")
    model = _REGISTRY[canonical.lower()](int(num_classes), **options)
    if normalize is not None:
        mean, std = (tuple(float(v) for v in t) for t in normalize)
        model.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        model.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        model.register_forward_pre_hook(_normalize_input)
    model.model_spec = {"name": canonical, "num_classes": int(num_classes),
                        "options": {**accepted, **options},
                        "normalize": [list(mean), list(std)] if normalize is not None else None}
    return model


def build_from_spec(spec: dict) -> nn.Module:
    """The model a checkpoint's ``model_spec`` describes (:func:`build_model`'s record of itself)."""
    normalize = spec.get("normalize")
    return build_model(spec["name"], spec["num_classes"], normalize=tuple(normalize) if normalize else None,
                       **spec.get("options", {}))
