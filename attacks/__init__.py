"""Attacks: small classes, every hyperparameter in the constructor, ``attack(x, y) -> x_adv`` in [0, 1], and one
registry (``build_attack``) that both evaluate scripts use."""
from .adef import ADef
from .base import Attack
from .flow import FlowAttack
from .pgd import PGD
from .registry import ATTACKS, AttackConfig, build_attack, list_attacks
from .stadv import StAdv

__all__ = ["Attack", "FlowAttack", "PGD", "StAdv", "ADef", "ATTACKS", "AttackConfig", "build_attack", "list_attacks"]
