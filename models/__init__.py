"""Models: one registry (``build_model``) for the FGR and GSeM families. All take [0, 1] images."""
from . import gsem, resnet, vgg, wideresnet  # noqa: F401  (registers the families)
from .gsem import GradSemiMaskModule, gradient_correction, set_gradient_correction
from .registry import Normalize, build_model, canonical_name, list_models, model_options, register

__all__ = ["build_model", "canonical_name", "list_models", "model_options", "register", "Normalize",
           "GradSemiMaskModule",
           "set_gradient_correction", "gradient_correction"]
