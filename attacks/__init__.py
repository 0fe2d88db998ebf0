"""Attacks: small classes, every hyperparameter in the constructor, ``attack(x, y) -> x_adv`` in [0, 1]."""
from .base import Attack, eval_mode
from .flow import FlowAttack
from .pgd import PGD
from .stadv import StAdv
from .adef import ADef

__all__ = ["Attack", "eval_mode", "FlowAttack", "PGD", "StAdv", "ADef"]
