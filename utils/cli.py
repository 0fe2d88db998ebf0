"""Command-line pieces shared by the scripts: the parser (defaults in --help, one-line errors, which flags change a
run's result), common flags, and run names.

One rule names runs and checks resumes: every flag changes the result unless it is declared with ``result=False``
(``Parser.add_argument``): device, workers, progress bars, output folders, speed options that keep the mathematics.
A run's file name is the reference's name plus ``_<flag><value>`` for every result-changing flag off its default
(:func:`run_suffix`); a resume is refused when a result-changing flag differs from the interrupted run's.
"""
from __future__ import annotations

import argparse
import os

from models import canonical_name, list_models

from .argtypes import flow_budget, nonneg_int, positive_int, seed
from .datasets import DATASET_HELP
from .errors import UserError
from .losses import FGR_LAMB, OBJECTIVES, RS_SIGMA, objective_params


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default after its help."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the defaults shown in ``--help``, a bad flag reported in one line, and
    ``add_argument(..., result=False)`` for a flag that does not change the run's result (:attr:`free`)."""

    def __init__(self, description: str | None = None):
        super().__init__(description=description, formatter_class=_Formatter)
        self.free: set[str] = {"help"}

    def add_argument(self, *args, result: bool = True, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if not result:
            self.free.add(action.dest)
        return action

    def result_flags(self) -> list[str]:
        """The dests of the flags that change a run's result, in declaration order (each once)."""
        return list(dict.fromkeys(a.dest for a in self._actions if a.dest not in self.free
                                  and a.default is not argparse.SUPPRESS))

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_bool(p: argparse.ArgumentParser, name: str, default, help: str, *aliases: str, result: bool = True) -> None:
    """A boolean flag spelled ``--name`` / ``--no-name`` (every boolean of every script)."""
    p.add_argument(f"--{name}", *aliases, action=argparse.BooleanOptionalAction, default=default, help=help,
                   result=result)


def add_run_args(p: Parser) -> None:
    """Flags every script has: data, device, progress bars, seed, smoke-run subset."""
    p.add_argument("--data_path", type=str, default="./data", result=False,
                   help="dataset folder (torchvision layout or <data_path>/<data_name>/...); downloaded if missing")
    p.add_argument("--device", type=str, default="auto", result=False,
                   help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--subset", type=nonneg_int, default=0,
                   help="use only the first N train and N test images (0 = all); for smoke runs")
    p.add_argument("--workers", type=nonneg_int, default=4, result=False, help="DataLoader worker processes")
    add_bool(p, "verify_data", True, "check the MD5 sums of the official CIFAR/SVHN files before reading them (as "
                                     "torchvision); --no-verify_data for your own data in the same format",
             result=False)
    add_bool(p, "bar", True, "progress bars", result=False)
    p.add_argument("--no_bar", "--disable_bar", dest="bar", action="store_false", help=argparse.SUPPRESS,
                   result=False)


def add_speed_args(p: Parser) -> None:
    """Training-speed flags shared by the training scripts (none changes the mathematics)."""
    add_bool(p, "channels_last", None, "channels_last memory format (None: on for CUDA; on CPU with bf16 autocast, "
                                       "except for FGR/IGR's double backward)", result=False)
    add_bool(p, "compile", False, "torch.compile the training model (not with FGR/IGR)", result=False)
    add_bool(p, "sync_bn", False, "SyncBatchNorm across processes under torchrun", result=False)


def add_fgr_model_args(p: Parser, penalty: bool = True) -> list[str]:
    """Flags that identify an FGR run (shared by main.py and evaluate.py, so both derive the same file name);
    ``penalty=False`` leaves out lambda and the random start (main.py has them as the objectives' hyperparameters).
    Returns their dests."""
    before = {a.dest for a in p._actions}
    p.add_argument("--data_name", type=str, default="cifar10",
                   help=DATASET_HELP)
    p.add_argument("--model_name", type=str, default="vgg11",
                   help=f"registry name (case-insensitive): {', '.join(list_models(canonical=True))}")
    p.add_argument("--reg", type=str, default="fgr", choices=["fgr", "igr"],
                   help="gradient regularizer: fgr (flow gradients) or igr (input gradients, the paper's baseline)")
    if penalty:
        FGR_LAMB.add_to(p)
        RS_SIGMA.add_to(p)
    p.add_argument("--augment", type=str, default="reference", choices=["reference", "standard", "none"],
                   help="reference: resize 36 + crop 32 + flip (test: resize 36, centre crop 32); "
                        "standard: pad-4 crop + flip (test: raw images)")
    add_bool(p, "normalize", False, "normalise inputs by the dataset mean/std inside the model (the reference does "
                                    "not)")
    p.add_argument("--adv_train", type=str, default="none", choices=["none", "flow"],
                   help="flow: train on multi-step L-inf flow adversarial examples (with --fgr_lamb > 0, FGR is "
                        "applied at the adversarially deformed input)")
    p.add_argument("--adv_eps", type=flow_budget, default=0.01,
                   help="training attack flow budget, normalised units (0.01 = 0.155 px at 32x32)")
    p.add_argument("--adv_steps", type=positive_int, default=7, help="training attack steps (step adv_eps/adv_steps)")
    p.add_argument("--weight_path", type=str, default="./weights", help="folder of checkpoints", result=False)
    p.add_argument("--result_path", type=str, default="./results", help="folder of result JSON files", result=False)
    return [a.dest for a in p._actions if a.dest not in before and a.dest not in p.free]


# the flags the reference's FGR run name holds (cifar10_vgg11_fgr_300.0_rs_0.01)
FGR_NAME_FLAGS = ("data_name", "model_name", "reg", "fgr_lamb", "rs_sigma")
# flags that act only through lambda: not in the name of a run without the penalty (they change nothing there)
LAMBDA_FLAGS = ("fgr_lamb_ref_batch", "fgr_warmup")
ADV_FLAGS = ("adv_eps", "adv_steps")  # act only with --adv_train: not in the name of a run without it


def _name_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    if isinstance(value, str) and os.sep in value:  # a path (initial weights): its file name
        return os.path.splitext(os.path.basename(value))[0]
    return str(value)


def run_suffix(args, defaults: dict, flags) -> str:
    """``_<flag><value>`` for each of ``flags`` whose value differs from ``defaults`` (a ``--subset`` smoke run,
    fewer epochs, another loss): a run with other settings never takes the name, or replaces the files, of the
    reference-recipe run."""
    parts = []
    for k in flags:
        value = getattr(args, k)
        if k in defaults and value != defaults[k]:
            parts.append(f"_{k}" if value is True else f"_no_{k}" if value is False else f"_{k}{_name_value(value)}")
    return "".join(parts)


def unused_knobs(loss: str) -> tuple:
    """The hyperparameters of every objective but ``loss``: they change nothing in its run, so not in its name."""
    used = {k.name for k in OBJECTIVES[loss].params} if loss in OBJECTIVES else set()
    return tuple(k.name for k in objective_params() if k.name not in used)


def fgr_run_name(args, defaults: dict, flags) -> str:
    """The reference's run name (``cifar10_vgg11_fgr_300.0_rs_0.01``; ``cifar10_vgg11`` when lambda = 0), plus
    :func:`run_suffix` over ``flags`` (the result-changing flags of the script) beyond those in the name."""
    name = f"{args.data_name}_{args.model_name}"
    if args.fgr_lamb > 0:
        name += f"_{args.reg}_{args.fgr_lamb}"
        if args.rs_sigma > 0:
            name += f"_rs_{args.rs_sigma}"
    loss = getattr(args, "loss", None) or args.reg
    skip = FGR_NAME_FLAGS + (LAMBDA_FLAGS if args.fgr_lamb == 0 else ()) + \
        (ADV_FLAGS if getattr(args, "adv_train", "none") == "none" and loss in ("fgr", "igr") else ()) + \
        unused_knobs(loss)
    return name + run_suffix(args, defaults, [f for f in flags if f not in skip])


def explicit_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    saved = [(a, a.default) for a in parser._actions]
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, default in saved:
            a.default = default


def check_model_name(name: str) -> str:
    try:
        return canonical_name(name)
    except ValueError as e:
        raise UserError(str(e)) from None
