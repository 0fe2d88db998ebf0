"""Training losses: pure functions ``loss_fn(model, x_in, y, x, **hyperparameters) -> (loss, logits, terms)``, and
the registry of training objectives that ``--loss`` reads.

``x_in`` is the batch the input policy made (clean, adversarial, half adversarial; ``utils.training``), ``x`` the
clean batch, ``loss`` the scalar to backpropagate, ``logits`` the predictions the training accuracy is counted on,
``terms`` a dict of scalar tensors to log (may be empty). A loss only computes: the training step zeroes gradients,
runs the EOT passes, perturbs weights and steps.

An *objective* (:data:`OBJECTIVES`, the choices of the GSeM scripts' ``--loss``) is a loss declared with its input
policy (``clean``, ``adversarial``: the whole batch attacked, ``half``: the even-indexed half), its training attack
by its registry name (``PGD``, or ``TRADES-KL``: TRADES' KL attack) and its hyperparameters as
:class:`utils.argtypes.Knob` (each becomes a flag of the training scripts and is passed to the loss under its name).
To add one::

    @register_objective("my_loss", Knob("my_weight", nonneg_float, 1.0, "weight of my term"), policy="adversarial")
    def my_loss(model, x_in, y, x, *, my_weight=1.0):
        ...
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F

from models import gradient_correction

from .argtypes import TRAIN_FLAGS, Knob, flow_budget, knob_clash, nonneg_float
from .distributed import world_size
from .flow import random_flow_start
from .regularizers import flow_gradient_penalty, input_gradient_penalty


def cross_entropy(model, x_in, y, x):
    """Cross-entropy on ``x_in``: plain training (clean input), PGD adversarial training (Madry et al., ICLR 2018;
    adversarial input) or GSeM's mixed 50/50 objective (half-adversarial input)."""
    logits = model(x_in)
    return F.cross_entropy(logits, y), logits, {}


def mart_loss(logits_adv, logits_nat, y, beta: float = 5.0):
    """MART (Wang et al., ICLR 2020), as YisenWang/MART ``mart_loss``: boosted CE on the adversarial logits plus
    ``beta`` times KL(p_nat || p_adv) weighted by 1 - p_nat[y]. GSeM uses beta = 5 (MART's default is 6)."""
    b = y.shape[0]
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.argsort(dim=1)[:, -2:]
    y_other = top2[:, -1].where(top2[:, -1] != y, top2[:, -2])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss((1.0001 - p_adv + 1e-12).log(), y_other)
    p_nat = F.softmax(logits_nat, dim=1)
    true_probs = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div((p_adv + 1e-12).log(), p_nat, reduction="none").sum(1)  # p_nat * (log p_nat - log p_adv)
    loss_robust = (1.0 / b) * (kl * (1.0000001 - true_probs)).sum()
    return loss_adv + beta * loss_robust


def mart(model, x_in, y, x, *, mart_beta: float = 5.0, correct_adv_forward: bool = False):
    """MART on adversarial ``x_in`` and clean ``x`` (adversarial forward first, as the GSeM reference); the training
    accuracy is counted on the adversarial logits.

    ``correct_adv_forward=False`` (default) is the released GSeM code's behaviour: its correction hooks were
    registered after both forwards and so attached to the last (clean) one only, leaving the adversarial forward's
    gradient masked (this produced the published MART/AWP numbers). ``True`` corrects both forwards."""
    with contextlib.nullcontext() if correct_adv_forward else gradient_correction(model, False):
        logits_adv = model(x_in)
    logits_nat = model(x)
    return mart_loss(logits_adv, logits_nat, y, mart_beta), logits_adv, {}


def with_gradient_correction(loss_fn, enabled: bool):
    """``loss_fn`` with every GSeM module's gradient correction on or off during its forwards (the GSeM ablation:
    ``enabled=False`` gives the weight update the masked gradient)."""

    def loss(model, x_in, y, x):
        with gradient_correction(model, enabled):
            return loss_fn(model, x_in, y, x)

    return loss


def trades(model, x_in, y, x, *, trades_beta: float = 6.0):
    """TRADES (Zhang et al., ICML 2019): CE on the clean batch plus ``trades_beta`` times KL(f(x) || f(x_in)) averaged
    over the batch, ``x_in`` from TRADES' KL attack (``TRADES-KL``, ``attacks.trades``). Three forwards in the
    official order (yaodongyu/TRADES ``trades_loss``): the clean batch for the CE, the adversarial batch, the clean
    batch again for the KL target (three BatchNorm updates in train mode; gradients through all three). The training
    accuracy is counted on the adversarial logits (as the official TRADES-AWP logs it)."""
    loss_natural = F.cross_entropy(model(x), y)
    logits_adv = model(x_in)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(model(x), dim=1), reduction="batchmean")
    return loss_natural + trades_beta * kl, logits_adv, {"kl": kl}


def awp_adversarial_ce(model, x_in, y, x, **_):
    """The AWP proxy's objective of AT-AWP (csdongxian/AWP ``AdvWeightPerturb``) and GSeM's AWP: -CE on the
    adversarial batch (maximised by the proxy step)."""
    logits = model(x_in)
    return -F.cross_entropy(logits, y), logits, {}


def awp_trades(model, x_in, y, x, *, trades_beta: float = 6.0, **_):
    """The AWP proxy's objective of TRADES-AWP (csdongxian/AWP ``TradesAWP.calc_awp``): -(CE(f(x)) + beta
    KL(f(x) || f(x_in))), forwards in the official order (clean, adversarial, clean)."""
    loss_natural = F.cross_entropy(model(x), y)
    logits_adv = model(x_in)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(model(x), dim=1), reduction="batchmean")
    return -(loss_natural + trades_beta * kl), logits_adv, {}


def gradient_regularized(model, x_in, y, x, *, reg: str = "fgr", lamb: float = 0.0, rs_sigma: float = 0.01,
                         sampler: str = "auto"):
    """``CE + lamb * R`` (Xia & Li, 2021): R the flow-gradient (FGR) or input-gradient (IGR, Ross & Doshi-Velez,
    AAAI 2018) penalty of ``utils.regularizers``, taken after a random flow start of std ``rs_sigma`` (normalised
    units; 0.01 = 0.155 px at 32 x 32). ``lamb = 0`` is plain cross-entropy on ``x_in`` (no random start, as the
    reference). Logs ``ce`` and ``reg`` (R).

    Under DDP each of W processes sees B/W images and its CE is a mean over them, so its per-example gradients are W
    times those of the global-batch mean: R is divided by W^2 to keep lambda's meaning.
    """
    if lamb == 0:
        logits = model(x_in)
        ce = F.cross_entropy(logits, y)
        return ce, logits, {"ce": ce}
    if rs_sigma > 0:
        x_in = random_flow_start(x_in, rs_sigma)
    if reg == "fgr":
        ce, r, logits = flow_gradient_penalty(model, x_in, y, sampler=sampler)
    elif reg == "igr":
        ce, r, logits = input_gradient_penalty(model, x_in, y)
    else:
        raise ValueError(f"unknown regularizer {reg!r}; use 'fgr' or 'igr'")
    r = r / world_size() ** 2
    return ce + lamb * r, logits, {"ce": ce, "reg": r}


def fgr(model, x_in, y, x, *, fgr_lamb: float = 0.0, rs_sigma: float = 0.01, sampler: str = "auto"):
    """FGR (Xia & Li, 2021): cross-entropy + ``fgr_lamb`` x the flow-gradient penalty (:func:`gradient_regularized`)."""
    return gradient_regularized(model, x_in, y, x, reg="fgr", lamb=fgr_lamb, rs_sigma=rs_sigma, sampler=sampler)


def igr(model, x_in, y, x, *, fgr_lamb: float = 0.0, rs_sigma: float = 0.01):
    """IGR (Ross & Doshi-Velez, AAAI 2018), FGR's baseline: cross-entropy + ``fgr_lamb`` x the input-gradient
    penalty."""
    return gradient_regularized(model, x_in, y, x, reg="igr", lamb=fgr_lamb, rs_sigma=rs_sigma)


# the gradient-regularization objectives' hyperparameters (main.py's flags, and the GSeM scripts' with --loss fgr)
FGR_LAMB = Knob("fgr_lamb", nonneg_float, 0.0, "regularisation weight lambda (0 = plain training)",
                flags=("--fgr_lamb", "--lamb"))
RS_SIGMA = Knob("rs_sigma", flow_budget, 0.01, "std of the random flow start before the regulariser, normalised "
                "units (0.01 = 0.155 px)")
SAMPLER = Knob("sampler", str, "auto", "bilinear sampler of the FGR penalty: native grid_sample (fast) or the "
               "reference's gather sampler; auto = native where its double backward works",
               choices=("auto", "native", "gather"))


@dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable
    policy: str  # clean, adversarial (the whole batch attacked) or half (the even-indexed half)
    attack: str  # the training attack, by its registry name (``PGD``, ``TRADES-KL``)
    params: tuple  # Knobs, passed to the loss (and the AWP proxy's loss) under their names
    summary: str = ""
    attack_train_mode: bool = False  # the training attack in train mode (BatchNorm batch statistics), as PGD-AT's code
    awp_loss: Callable = awp_adversarial_ce  # the AWP proxy's objective, and the official AWP size and warm-up
    awp_gamma: float = 0.01
    awp_warmup: int = 0  # AWP from this epoch on (1-indexed; 0 = from the start)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, *params: Knob, policy: str, attack: str = "PGD", summary: str = "", **official):
    """Decorator: register ``loss_fn`` as the objective ``name`` of ``--loss`` with its input policy, training attack
    and hyperparameters (:class:`utils.argtypes.Knob`; a name declared by two objectives must be the same knob, and
    a flag a training script or another objective already has is refused with one ``error:`` line on stderr);
    ``official`` sets :class:`Objective`'s ``attack_train_mode``, ``awp_loss``, ``awp_gamma``, ``awp_warmup``."""
    if policy not in ("clean", "adversarial", "half"):
        raise ValueError(f"objective {name!r}: policy must be clean, adversarial or half")

    def deco(loss_fn):
        why = knob_clash(f"objective {name!r}", params, {k.name: k for k in objective_params()}, TRAIN_FLAGS)
        if name in OBJECTIVES:
            why = f"objective {name!r} not registered: the name is taken"
        if why:  # one line, and the other objectives and every script still work
            print(f"error: {why}", file=sys.stderr)
            return loss_fn
        text = summary or (loss_fn.__doc__ or "").strip().split("\n")[0]
        OBJECTIVES[name] = Objective(name, loss_fn, policy, attack, tuple(params), text, **official)
        return loss_fn

    return deco


def double_backward(name: str, args) -> bool:
    """Whether objective ``name`` at these flags differentiates twice (a gradient penalty with lambda > 0)."""
    return FGR_LAMB in OBJECTIVES[name].params and getattr(args, "fgr_lamb", 0) > 0


def objective_params() -> list[Knob]:
    """Every hyperparameter of every registered objective, once each (the training scripts' flags)."""
    return list({k.name: k for o in OBJECTIVES.values() for k in o.params}.values())


register_objective("mixed", policy="half", summary="even half of the batch adversarial (PGD), cross-entropy: GSeM's "
                   "adversarial training")(cross_entropy)
register_objective("pgd_at", policy="adversarial", attack_train_mode=True,
                   summary="whole batch adversarial (PGD in train mode, as locuslab/robust_overfitting), "
                           "cross-entropy: Madry et al.'s adversarial training")(cross_entropy)
register_objective("trades", Knob("trades_beta", nonneg_float, 6.0, "weight of TRADES' KL term"),
                   policy="adversarial", attack="TRADES-KL", awp_loss=awp_trades, awp_gamma=0.005, awp_warmup=10,
                   summary="TRADES: clean CE + beta KL to the prediction on TRADES' KL attack")(trades)
register_objective("mart", Knob("mart_beta", nonneg_float, 5.0, "weight of MART's robust KL term"),
                   Knob("correct_adv_forward", bool, False, "also correct the gradient of MART's adversarial forward "
                        "in the weight update (off: as the released code, only the clean forward)"),
                   policy="adversarial", summary="whole batch adversarial (PGD), MART")(mart)
register_objective("fgr", FGR_LAMB, RS_SIGMA, SAMPLER, policy="clean",
                   summary="clean batch, cross-entropy + lambda x the flow-gradient penalty (FGR)")(fgr)
register_objective("igr", FGR_LAMB, RS_SIGMA, policy="clean",
                   summary="clean batch, cross-entropy + lambda x the input-gradient penalty (IGR)")(igr)
