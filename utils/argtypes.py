"""Range-checked argparse types, one per kind of number the scripts take, and :class:`Knob`, a setting declared
once with its flag (the attacks' knobs, the training objectives' hyperparameters). A bottom-floor helper: it imports
nothing of this repository."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Knob:
    """One setting, declared once (an attack's knob, an objective's hyperparameter).

    Args:
        name: the flag's dest and the keyword the setting is passed as.
        type: parses the flag (range-checked, ``utils.argtypes``); ``bool`` gives a ``--x/--no-x`` flag.
        default: in the flag's units (None: off / no bound).
        help: what it sets.
        unit: the flag's units, shown in ``--help`` and the docs.
        flags: the spellings (default ``--<name>``).
        scale: flag units -> the code's units (1/255 for ``--eps 8``, which means 8/255).
        choices: the allowed values of a string knob.
        steps: an attack's iteration, restart or query count, which ``--steps_scale`` multiplies (the registry does
            it before the attack is built, and gives the attack the ``steps_scale`` knob).
    """
    name: str
    type: Callable
    default: Any
    help: str
    unit: str = ""
    flags: tuple = ()
    scale: float = 1.0
    choices: tuple = ()
    steps: bool = False  # an iteration, restart or query count: the attack registry multiplies it by --steps_scale

    @property
    def option_strings(self) -> tuple:
        return self.flags or (f"--{self.name}",)

    def to_value(self, flag_value):
        """The flag's value in the code's units."""
        if self.scale == 1.0 or flag_value is None or isinstance(flag_value, bool):
            return flag_value
        return flag_value * self.scale

    def add_to(self, parser, help_suffix: str = "", several: bool = False) -> None:
        """Add this knob's flag to ``parser`` (an ``argparse`` parser or group); ``several``: it takes one or more
        values (a list when more than one is given)."""
        text = f"{self.help}{f' [{self.unit}]' if self.unit else ''}{help_suffix}"
        if self.type is bool:
            parser.add_argument(*self.option_strings, dest=self.name, action=argparse.BooleanOptionalAction,
                                default=self.default, help=text)
        else:
            parser.add_argument(*self.option_strings, dest=self.name, type=self.type, default=self.default, help=text,
                                **({"choices": self.choices} if self.choices else {}),
                                **({"nargs": "+", "action": _OneOrMore} if several else {}))


class _OneOrMore(argparse.Action):
    """``nargs="+"`` that stores a single value as itself and several as a list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def _number(text: str, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _checked(parse: Callable, ok: Callable, message: str) -> Callable:
    """An argparse type: ``parse(text)`` (a number, or another checked type), then ``ok(value)``, else ``message``
    (formatted with ``text``) as the error."""

    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(message.format(text=text))
        return value

    return check


def _float(text: str) -> float:
    return _number(text)


def _int(text: str) -> int:
    return _number(text, int)


positive_int = _checked(_int, lambda v: v >= 1, "must be an integer >= 1, got {text}")
nonneg_int = _checked(_int, lambda v: v >= 0, "must be an integer >= 0, got {text}")
nonneg_float = _checked(_float, lambda v: v >= 0, "must be a number >= 0, got {text}")
positive_float = _checked(_float, lambda v: v > 0, "must be a number > 0, got {text}")
# a random seed: what torch's generators take
seed = _checked(_int, lambda v: 0 <= v < 2 ** 63, "must be an integer in [0, 2^63 - 1], got {text}")
# an accuracy (a fraction) to beat: a model beats it only with a higher accuracy; -1 lets the first epoch through
accuracy_threshold = _checked(_float, lambda v: v < 1, "is an accuracy fraction to beat and must be below 1 (no model "
                              "would beat {text}, so nothing would be saved)")
# SGD momentum: at 1 or above the updates grow without bound
momentum = _checked(_float, lambda v: 0 <= v < 1, "must be in [0, 1) (SGD momentum; both papers use 0.9), got {text}")
# a step of pixel values in 1/255 units (a larger step leaves the [0, 1] range in one move)
step_255 = _checked(positive_float, lambda v: v <= 255, "is in 1/255 units and at most 255 (the whole [0, 1] range), "
                    "got {text}")
rotation_deg = _checked(nonneg_float, lambda v: v <= 180, "is a largest rotation in degrees, at most 180 (every "
                        "angle), got {text}")
# half of the 32 x 32 images of every dataset here: further, the centre of the image leaves it
translation_px = _checked(nonneg_float, lambda v: v <= 16, "is a largest translation in pixels, at most 16 (half of "
                          "the 32 x 32 images; further, the image's centre leaves it), got {text}")


def eps_255(text: str) -> float:
    """An L-inf budget in 1/255 units (8 means 8/255), in [0, 255]; a value in (0, 1) is taken for a fraction and
    refused."""
    value = nonneg_float(text)
    if 0 < value < 1:
        raise argparse.ArgumentTypeError(f"is in 1/255 units (8 means 8/255); {text} looks like a fraction: use "
                                         f"{value * 255:.4g}")
    if value > 255:
        raise argparse.ArgumentTypeError(f"is in 1/255 units and at most 255 (the whole [0, 1] range), got {text}")
    return value


def flow_budget(text: str) -> float:
    """A flow magnitude in normalised align_corners=True units, in [0, 1] (1 = half the image; 0.01 = 0.155 px at
    32 x 32)."""
    value = nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"is in normalised units (1 = half the image, 0.01 = 0.155 px at 32x32); "
                                         f"{text} = {value * 15.5:.4g} px at 32x32; use a value in [0, 1]")
    return value


# The flags the scripts define themselves (spellings without "--"), which an extension's knob may not take: attack
# knobs join evaluate.py and evaluate_gsem.py, objective hyperparameters the training scripts (main.py and GSeM's).
# tests/test_extending.py keeps these equal to the scripts' parsers.
EVALUATE_FLAGS = frozenset({
    "adv_eps", "adv_steps", "adv_train", "alpha", "amp", "attacks", "augment", "bar", "batch_size", "batched_eot",
    "beta", "budgets", "checkpoint", "classifier_name", "data_name", "data_path", "dataset_name", "device",
    "disable_bar", "eot_batch", "fgr_lamb", "lamb", "model_load_path", "model_name", "n_examples", "no_bar",
    "normalize", "reg", "repeat", "result_path", "resume", "rs_sigma", "sanity_checks", "save_adv", "seed", "subset",
    "verify_data", "weight_path", "workers", "worst_case"})
TRAIN_FLAGS = frozenset({
    "adv_eps", "adv_steps", "adv_train", "alpha", "amp", "att_eot_num", "attack_steps", "augment", "awp_gamma",
    "awp_lr", "awp_warmup", "bar", "batch_size", "batched_eot", "best_acc", "beta", "channels_last",
    "classifier_name", "compile", "data_name", "data_path", "dataset_name", "device", "device_data", "disable_bar",
    "eot_batch", "epochs", "eps", "fgr_lamb_ref_batch", "fgr_warmup", "gra_eot_num", "gradient_correction",
    "igr_match_fgr", "igr_match_on", "loss", "lr", "milestones", "model_load_path", "model_name", "model_save_path",
    "momentum", "no_bar", "normalize", "overwrite", "reg", "reload", "result_path", "resume", "seed", "select",
    "step_size", "subset", "sync_bn", "use_amp", "val_split", "verify_data", "weight_decay", "weight_path",
    "workers"})


def knob_clash(owner: str, knobs, declared: dict, reserved: frozenset) -> str | None:
    """Why the knobs of ``owner`` (``attack 'X'`` or ``objective 'X'``) cannot be registered, in one line with a free
    name to use, or None. A knob clashes when one of its flags is a script's own flag (``reserved``) or another
    knob's (``declared``: name -> Knob), or when its name is declared with another meaning; the same knob declared
    again (a shared one such as ``eps``) is fine."""
    spelled = {s.lstrip("-"): k for k in declared.values() for s in k.option_strings}
    for k in knobs:
        if declared.get(k.name, k) != k:
            why = f"its knob {k.name!r} is declared differently elsewhere"
        else:
            taken = [s.lstrip("-") for s in k.option_strings
                     if s.lstrip("-") in reserved or spelled.get(s.lstrip("-"), k) != k]
            if not taken:
                continue
            why = f"its knob {k.name!r} would take the flag --{taken[0]}, which " + (
                "a script already has" if taken[0] in reserved else "another knob has")
        stem = "".join(c if c.isalnum() else "_" for c in owner.split("'")[1].lower())
        free = f"{stem}_{k.name}"
        return f"{owner} not registered: {why}; rename it (e.g. {free!r})"
    return None
