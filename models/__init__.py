"""Models: one registry (``build_model``) for the FGR and GSeM families. All take [0, 1] images. Every module of
this package is imported here, so a model registers itself by being in a file of the package."""
import importlib
import pkgutil

from . import vgg, resnet, wideresnet, gsem  # noqa: F401  (registration order: FGR's families, then GSeM's)
from .gsem import GradSemiMaskModule, gradient_correction, set_gradient_correction
from .registry import build_from_spec, build_model, canonical_name, list_models, model_options, register, unregister

for _module in pkgutil.iter_modules(__path__):  # any other file of the package: a new model registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["build_model", "build_from_spec", "canonical_name", "list_models", "model_options", "register",
           "unregister", "GradSemiMaskModule", "set_gradient_correction", "gradient_correction"]
