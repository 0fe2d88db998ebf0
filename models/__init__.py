"""Models: one registry (``build_model``) for the FGR and GSeM families. All take [0, 1] images."""
from . import gsem, resnet, vgg, wideresnet  # noqa: F401  (registers the families)
from .gsem import GradSemiMaskModule, gradient_correction, set_gradient_correction
from .registry import build_from_spec, build_model, canonical_name, list_models, model_options, register, unregister

__all__ = ["build_model", "build_from_spec", "canonical_name", "list_models", "model_options", "register",
           "unregister", "GradSemiMaskModule", "set_gradient_correction", "gradient_correction"]
