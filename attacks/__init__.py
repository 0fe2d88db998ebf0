"""Attacks: small classes, every hyperparameter in the constructor, ``attack(x, y) -> x_adv`` in [0, 1], and one
registry (``attacks.registry``) that both evaluate scripts use. Every module of this package is imported here, so an
attack registers itself by being in a file of the package."""
import importlib
import pkgutil

from . import autoattack_lib, cw, flow_search, spatial  # noqa: E402,F401  (the gradient-free deformation attacks)  # noqa: E402,F401
from .adef import ADef  # noqa: E402
from .base import Attack, Uncorrected
from .flow import FlowAttack  # noqa: E402  (registration order: the FGR attacks, then the GSeM suite)
from .pgd import PGD  # noqa: E402
from .registry import (
    ATTACKS,
    AttackConfig,
    Budget,
    Knob,
    add_attack_args,
    attack_label,
    build_attack,
    list_attacks,
    register_attack,
)
from .stadv import StAdv  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # any other file of the package: a new attack registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Attack", "Uncorrected", "FlowAttack", "PGD", "StAdv", "ADef", "ATTACKS", "AttackConfig", "Budget", "Knob",
           "add_attack_args", "attack_label", "build_attack", "list_attacks", "register_attack"]
