"""The attack registry. Each attack registers itself beside its class, with the knobs it reads:

    @register_attack("flow", FLOW_EPS, FLOW_STEPS, budget=Budget("flow_eps", "flow_linf"))
    def flow(model, cfg):
        return FlowAttack(model, eps=cfg.flow_eps, steps=cfg.flow_steps)

A :class:`Knob` is one setting: its name, command-line flag(s), type, default and unit, declared once; knobs shared
by several attacks (``eps``, ``eot_iter``, ``steps_scale``) are declared here. Both evaluate scripts generate their
flags from the knobs (:func:`add_attack_args`), build a :class:`AttackConfig` from the parsed flags
(:meth:`AttackConfig.from_args`), and record each attack's knob values and label its result row with the knobs off
their defaults (:func:`attack_label`). :class:`Budget` names the knob that bounds the perturbation and how it is
measured, so that the contract tests check every bounded attack's budget without naming it.

A knob declared with ``steps=True`` (an iteration, restart or query count) is multiplied by ``--steps_scale`` before
the attack is built, and the attack gets the ``steps_scale`` knob: no attack has to remember it (an attack with a
fixed count, such as PGD500's 500 steps, declares ``STEPS_SCALE`` and calls :func:`scaled`).

Adding an attack: one file in this package (the class and its registration); the package imports every module in it.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from utils.argtypes import EVALUATE_FLAGS, Knob, eps_255, knob_clash, positive_float, positive_int
from utils.flow import flow_norms_pixels


@dataclass(frozen=True)
class Measure:
    """How a budget is measured: ``size(x, x_adv, attack)``, each example's perturbation size in the budget knobs'
    units (shape N for one knob, N x k for k knobs), and ``small``, a small budget (one value per knob) that the
    contract tests hold every attack with this measure to. A new measure is declared beside the attack that uses it
    (e.g. ``Measure("l2", lambda x, x_adv, attack: (x_adv - x).flatten(1).norm(dim=1), (0.5,))``)."""
    name: str
    size: Callable = field(compare=False)
    small: tuple = ()


def _flow_tnorm(x, x_adv, attack):
    return flow_norms_pixels(attack.last_flow)["tnorm"]


MEASURES = {m.name: m for m in (
    Measure("linf", lambda x, x_adv, attack: (x_adv - x).abs().flatten(1).max(1)[0], (4 / 255,)),  # pixel values
    Measure("flow_linf", lambda x, x_adv, attack: attack.last_flow.abs().flatten(1).max(1)[0], (0.02,)),  # flow
    Measure("tnorm_px", _flow_tnorm, (0.3,)),  # the flow's largest displacement length, pixels
)}


@dataclass(frozen=True)
class Budget:
    """The knob(s) that bound an attack's perturbation and how the bound is measured (a :class:`Measure`, or the
    name of a built-in one: ``linf``, largest change of a pixel value, [0, 1] units; ``flow_linf``, largest flow
    component, normalised align_corners=True units; ``tnorm_px``, largest displacement length of the flow, pixels).
    A knob at None is unbounded.

    A budget knob takes several values on the command line (``--flow_eps 0.005 0.01``): one row per value."""
    knob: str | tuple
    measure: Measure | str

    def __post_init__(self):
        if isinstance(self.measure, str):
            object.__setattr__(self, "measure", MEASURES[self.measure])

    @property
    def knobs(self) -> tuple:
        return (self.knob,) if isinstance(self.knob, str) else tuple(self.knob)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    factory: Callable
    knobs: tuple
    budget: Budget | None = None
    summary: str = field(default="", compare=False)
    label: str = ""  # the rows' label stem (default: the name)
    gradient: str = ""  # "white": uses the evaluated model's gradient; "black": never does; "": neither declared
    stronger_than: tuple = ()  # attacks it must not leave more accuracy than, at the same budget and points
    uses_labels: bool = True  # False: ascends a label-free objective (TRADES' KL), may turn a wrong point correct


ATTACKS: dict[str, AttackSpec] = {}
_KNOBS: dict[str, Knob] = {}  # every knob of every registered attack, by name (one declaration per name)

# knobs shared by several attacks
EPS = Knob("eps", eps_255, 8.0, "L-inf budget of the intensity attacks", unit="1/255", scale=1 / 255)
EOT_ITER = Knob("eot_iter", positive_int, 20, "noisy passes per attack step (EOT over the model's randomness; one "
                "pass on a deterministic model)", flags=("--att_eot_num", "--eot_iter"))
STEPS_SCALE = Knob("steps_scale", positive_float, 1.0, "every attack's iterations, restarts and queries times this "
                   "(at least 1 each); any value but 1 is in the row's label")


def register_attack(name: str, *knobs: Knob, budget: Budget | None = None, label: str = "", gradient: str = "",
                    stronger_than: tuple = (), uses_labels: bool = True):
    """Decorator: register ``factory(model, cfg) -> attack`` under ``name`` with the knobs it reads from ``cfg``
    (an :class:`AttackConfig`) and its budget. A knob name declared by two attacks must be the same knob; a knob
    whose flag a script or another knob already has, a taken name or a budget off the knobs is refused with one
    ``error:`` line on stderr (the attack is left out; everything else works).
    ``label``: what its result rows are called when the name alone would mislead (default: the name).
    ``gradient`` and ``stronger_than`` declare what the masking checks (``utils.evaluation.masking_checks``) hold it
    to: a white-box attack must not be weaker than a black-box one (``"black"``: never uses the model's gradient)
    at the same budget, nor than the attacks it names in ``stronger_than``, nor than itself with fewer EOT samples.
    ``uses_labels=False``: the attack ascends an objective without the labels (TRADES' KL to the clean prediction)."""

    if any(k.steps for k in knobs) and STEPS_SCALE not in knobs:  # declared step counts: --steps_scale reaches them
        knobs = (*knobs, STEPS_SCALE)

    def deco(factory):
        why = knob_clash(f"attack {name!r}", knobs, _KNOBS, EVALUATE_FLAGS)
        if name.lower() in {n.lower() for n in ATTACKS}:
            why = f"attack {name!r} not registered: the name is taken (names are case-insensitive)"
        elif budget is not None and not set(budget.knobs) <= {k.name for k in knobs}:
            why = f"attack {name!r} not registered: its budget knob(s) {budget.knobs} are not among its knobs"
        if why:  # one line, and the other attacks and every script still work
            print(f"error: {why}", file=sys.stderr)
            return factory
        for k in knobs:
            _KNOBS.setdefault(k.name, k)
        summary = (factory.__doc__ or "").strip().split("\n")[0]
        ATTACKS[name] = AttackSpec(name, factory, tuple(knobs), budget, summary, label or name, gradient,
                                   tuple(stronger_than), uses_labels)
        return factory

    return deco


def all_knobs() -> list[Knob]:
    """Every knob of every registered attack, in registry order, once each."""
    return list(_KNOBS.values())


def list_attacks() -> list[str]:
    """Every registered attack name, in registry order."""
    return list(ATTACKS)


def scaled(n: int, factor: float) -> int:
    """``--steps_scale``: iterations, restarts and queries multiplied by ``factor``, at least 1."""
    return max(1, int(round(n * factor)))


class AttackConfig(argparse.Namespace):
    """The value of every registered knob in the attacks' units, plus the run's context: ``seed``, ``n_classes``,
    ``image_size`` (px), the speed options ``batched_eot`` / ``eot_batch`` (same expectation) and ``train_mode`` (a
    training attack that leaves the model in train mode, as PGD-AT's official code; attacks that support it).

    ``AttackConfig(**overrides)`` takes the knobs' defaults for everything not given (values in the attacks' units,
    e.g. ``eps=8 / 255``); an unknown name is an error."""

    CONTEXT = {"seed": 0, "n_classes": 10, "image_size": 32, "batched_eot": True, "eot_batch": None,
               "train_mode": False}  # train_mode: a training attack in the model's train mode (PGD-AT)

    def __init__(self, **overrides):
        values = {**self.CONTEXT, **{k.name: k.to_value(k.default) for k in all_knobs()}}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise TypeError(f"AttackConfig has no setting {', '.join(unknown)}; valid: {', '.join(sorted(values))}")
        super().__init__(**{**values, **overrides})

    @classmethod
    def from_args(cls, args, **context) -> "AttackConfig":
        """From flags parsed with :func:`add_attack_args` (flag units converted once), plus ``context``; a budget
        knob given several values takes the first (:func:`sweep` expands them)."""
        return cls(**{k.name: k.to_value(_first(getattr(args, k.name))) for k in all_knobs() if hasattr(args, k.name)},
                   **{k: getattr(args, k) for k in ("batched_eot", "eot_batch") if hasattr(args, k)}, **context)

    def replace(self, **changes) -> "AttackConfig":
        new = copy.copy(self)
        for k, v in changes.items():
            if not hasattr(self, k):
                raise TypeError(f"AttackConfig has no setting {k}")
            setattr(new, k, v)
        return new


def _first(value):
    return value[0] if isinstance(value, list) else value


def budget_knobs() -> set:
    """The knobs that bound some attack: they take one or more values on the command line."""
    return {k for spec in ATTACKS.values() if spec.budget is not None for k in spec.budget.knobs}


def sweep(name: str, args, cfg: AttackConfig) -> list:
    """One configuration per combination of the values given to attack ``name``'s budget knobs (a knob given once:
    one configuration, ``cfg`` itself)."""
    configs = [cfg]
    for k in ATTACKS[name].knobs:
        values = getattr(args, k.name, None)
        if isinstance(values, list) and len(values) > 1:
            configs = [c.replace(**{k.name: k.to_value(v)}) for c in configs for v in values]
    return configs


def knob_values(name: str, cfg: AttackConfig) -> dict:
    """The knobs of attack ``name`` in ``cfg``, in the flags' units (what a user types to reproduce the row)."""
    out = {}
    for k in ATTACKS[name].knobs:
        v = getattr(cfg, k.name)
        out[k.name] = v / k.scale if isinstance(v, float) and k.scale != 1.0 else v
    return out


def attack_label(name: str, cfg: AttackConfig, extra: dict | None = None) -> str:
    """A result row's key: the attack's name, plus ``[knob=value, ...]`` for each of its knobs off the declared
    default (flag units) and each entry of ``extra`` (e.g. ``{"n": 16}`` for a subset). ``flow`` alone is the attack
    at its defaults on the whole test set."""
    defaults = {k.name: k.default for k in ATTACKS[name].knobs}
    diff = {k: v for k, v in knob_values(name, cfg).items() if v != defaults[k]}
    for k in ATTACKS[name].knobs:  # a file by its name (the transfer attack's surrogate)
        if k.unit == "path" and k.name in diff:
            diff[k.name] = os.path.basename(str(diff[k.name]))
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in {**diff, **(extra or {})}.items()]
    return ATTACKS[name].label + (f" [{', '.join(parts)}]" if parts else "")


def build_attack(name: str, model, cfg: AttackConfig | None = None):
    """The attack called ``name`` on ``model`` with the settings of ``cfg`` (defaults: the knobs' defaults).

    Returns:
        ``(attack, settings)``: a callable ``attack(x, y) -> x_adv`` and its knob values (flag units).
    Raises:
        ValueError naming the valid attacks when ``name`` is unknown.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    cfg = cfg if cfg is not None else AttackConfig()
    spec = ATTACKS[name]
    counts = {k.name: scaled(getattr(cfg, k.name), cfg.steps_scale) for k in spec.knobs
              if k.steps and getattr(cfg, k.name) is not None}  # --steps_scale on the declared step counts
    return spec.factory(model, cfg.replace(**counts) if counts else cfg), knob_values(name, cfg)


def add_attack_args(parser) -> None:
    """One flag per knob of every registered attack (both evaluate scripts): spellings, type, default and units as
    declared; the help names the attacks that read it."""
    users: dict[str, list] = {}
    for spec in ATTACKS.values():
        for k in spec.knobs:
            users.setdefault(k.name, []).append(spec.name)
    group = parser.add_argument_group("attack settings (each read by the attacks named; a budget takes several "
                                      "values, one row each)")
    budgets = budget_knobs()
    for k in all_knobs():
        k.add_to(group, f" ({', '.join(users[k.name])})", several=k.name in budgets)
