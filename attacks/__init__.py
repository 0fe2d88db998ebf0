"""Attacks: small classes, every hyperparameter in the constructor, ``attack(x, y) -> x_adv`` in [0, 1], and one
registry (``attacks.registry``) that both evaluate scripts use. Every module of this package is imported here, so an
attack registers itself by being in a file of the package."""
# the imports below fix the registration order (the FGR attacks, then the GSeM suite): not sorted (pyproject.toml)
import importlib
import pkgutil

from .base import Attack, Uncorrected
from .registry import (ATTACKS, AttackConfig, Budget, Knob, Measure, add_attack_args, attack_label, build_attack,
                       list_attacks, register_attack)

from .flow import FlowAttack
from .stadv import StAdv
from .adef import ADef
from .pgd import PGD
from . import flow_search, spatial  # noqa: F401  (the gradient-free deformation attacks)
from . import cw, autoattack_lib  # noqa: F401

for _module in pkgutil.iter_modules(__path__):  # any other file of the package: a new attack registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Attack", "Uncorrected", "FlowAttack", "PGD", "StAdv", "ADef", "ATTACKS", "AttackConfig", "Budget", "Knob",
           "Measure", "add_attack_args", "attack_label", "build_attack", "list_attacks", "register_attack"]
