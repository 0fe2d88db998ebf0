"""Command-line pieces shared by the scripts: the parser (defaults in --help, one-line errors), range-checked
types, common flags, run names."""
from __future__ import annotations

import argparse
import math

from models import canonical_name

from .errors import UserError


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and every flag's default after its help."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the defaults shown in ``--help`` and a bad flag reported in one line."""

    def __init__(self, description: str | None = None):
        super().__init__(description=description, formatter_class=_Formatter)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind=float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def eps_255(text: str) -> float:
    """An L-inf budget in 1/255 units (8 means 8/255), > 0; a value below 1 is taken for a fraction and refused."""
    value = positive_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"is in 1/255 units (8 means 8/255); {text} looks like a fraction: use "
                                         f"{value * 255:.4g}")
    return value


def flow_budget(text: str) -> float:
    """A flow magnitude in normalised align_corners=True units, in [0, 1] (1 = half the image; 0.01 = 0.155 px at
    32 x 32)."""
    value = nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"is in normalised units (1 = half the image, 0.01 = 0.155 px at 32x32); "
                                         f"{text} = {value * 15.5:.4g} px at 32x32; use a value in [0, 1]")
    return value


def add_bool(p: argparse.ArgumentParser, name: str, default, help: str, *aliases: str) -> None:
    """A boolean flag spelled ``--name`` / ``--no-name`` (every boolean of every script)."""
    p.add_argument(f"--{name}", *aliases, action=argparse.BooleanOptionalAction, default=default, help=help)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags every script has: data, device, progress bars, seed, smoke-run subset."""
    p.add_argument("--data_path", type=str, default="./data",
                   help="dataset folder (torchvision layout or <data_path>/<data_name>/...); downloaded if missing")
    p.add_argument("--device", type=str, default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--subset", type=nonneg_int, default=0,
                   help="use only the first N train and N test images (0 = all); for smoke runs")
    p.add_argument("--workers", type=nonneg_int, default=4, help="DataLoader worker processes")
    add_bool(p, "verify_data", True, "check the MD5 sums of the official CIFAR/SVHN files before reading them (as "
                                     "torchvision); --no-verify_data for your own data in the same format")
    add_bool(p, "bar", True, "progress bars")
    p.add_argument("--no_bar", "--disable_bar", dest="bar", action="store_false", help=argparse.SUPPRESS)


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """Training-speed flags shared by the training scripts (none changes the mathematics)."""
    add_bool(p, "channels_last", None, "channels_last memory format (None: on for CUDA; on CPU with bf16 autocast, "
                                       "except for FGR/IGR's double backward)")
    add_bool(p, "compile", False, "torch.compile the training model (not with FGR/IGR)")
    add_bool(p, "sync_bn", False, "SyncBatchNorm across processes under torchrun")


def add_fgr_model_args(p: argparse.ArgumentParser) -> None:
    """Flags that identify an FGR run (shared by main.py and evaluate.py, so both derive the same file name)."""
    p.add_argument("--data_name", type=str, default="cifar10",
                   help="cifar10, cifar100, svhn, mnist, fashionmnist, or digits (built in, no download)")
    p.add_argument("--model_name", type=str, default="vgg11", help="registry name: vgg11/13/16/19, resnet18, wrn28_10")
    p.add_argument("--reg", type=str, default="fgr", choices=["fgr", "igr"],
                   help="gradient regularizer: fgr (flow gradients) or igr (input gradients, the paper's baseline)")
    p.add_argument("--fgr_lamb", "--lamb", dest="fgr_lamb", type=nonneg_float, default=0.0,
                   help="regularisation weight lambda (0 = plain training)")
    p.add_argument("--rs_sigma", type=flow_budget, default=0.01,
                   help="std of the random flow start before the regulariser, normalised units (0.01 = 0.155 px)")
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
    p.add_argument("--weight_path", type=str, default="./weights", help="folder of checkpoints")
    p.add_argument("--result_path", type=str, default="./results", help="folder of result JSON files")


def fgr_run_name(args) -> str:
    """The reference's run name (``cifar10_vgg11_fgr_300.0_rs_0.01``; ``cifar10_vgg11`` when lambda = 0), with a
    suffix for each setting the reference did not have, so runs with other settings never overwrite it."""
    name = f"{args.data_name}_{args.model_name}"
    if args.fgr_lamb > 0:
        name += f"_{args.reg}_{args.fgr_lamb}"
        if args.rs_sigma > 0:
            name += f"_rs_{args.rs_sigma}"
    if args.adv_train != "none":
        name += f"_adv_{args.adv_train}_{args.adv_eps}_k{args.adv_steps}"
    if args.augment != "reference":
        name += f"_aug_{args.augment}"
    if args.normalize:
        name += "_norm"
    if args.seed != 0:
        name += f"_seed{args.seed}"
    return name


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


def settings_suffix(args, defaults: dict, keys) -> str:
    """``_<key><value>`` for each of ``keys`` whose value differs from the parser's ``defaults``, so that a run with
    other training settings (a ``--subset`` smoke run, fewer epochs, another batch size) never takes the name, and
    replaces the files, of the reference-recipe run."""
    parts = []
    for key in keys:
        value = getattr(args, key, None)
        if key in defaults and value != defaults[key]:
            parts.append(f"_{key}{'-'.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
    return "".join(parts)


def check_model_name(name: str) -> str:
    try:
        return canonical_name(name)
    except ValueError as e:
        raise UserError(str(e)) from None
