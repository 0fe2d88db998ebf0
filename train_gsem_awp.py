"""Gradient-corrected adversarial training of a GSeM model with MART (beta = 5) and adversarial weight perturbation
(Wu et al., NeurIPS 2020; gamma = 0.01, proxy SGD lr 0.01 on -CE, no warm-up, as the GSeM reference). ``--loss``
gives AWP to any other objective (mixed, pgd_at, trades).

    python train_gsem_awp.py --classifier_name GSeMResNet18 --dataset_name cifar10

What changes against ``train_gsem_mart.py``: before every update, a proxy copy of the model takes one SGD step that
maximises the objective's AWP loss, the weights move by gamma ||w|| along the difference, the update's gradient is
taken there and the weights move back (:func:`weight_perturbation`, ``utils.awp.AWP``); and three flags.
"""
import functools

import train_gsem
from utils.argtypes import nonneg_float, nonneg_int, positive_float
from utils.awp import AWP
from utils.errors import RESUME_HINT, cli_entry
from utils.losses import OBJECTIVES


def parser():
    p = train_gsem.parser(__doc__, loss="mart")
    p.add_argument("--awp_gamma", type=nonneg_float, default=None,
                   help="AWP perturbation size, relative to ||w|| (default: the objective's official value, 0.01; "
                        "0.005 for trades)")
    p.add_argument("--awp_warmup", type=nonneg_int, default=None,
                   help="first epoch (1-indexed, over all reloads) with AWP (default: the objective's official value, "
                        "0; 10 for trades)")
    p.add_argument("--awp_lr", type=positive_float, default=0.01, help="AWP proxy SGD step")
    return p


def get_args(argv=None):
    return parser().parse_args(argv)


def weight_perturbation(args, model, device) -> AWP:
    """AWP for ``--loss`` on ``model``: the objective's proxy loss, gamma and warm-up (``--awp_gamma``,
    ``--awp_warmup`` override them), proxy SGD step ``--awp_lr``, the proxy's passes corrected unless
    ``--gradient_correction`` takes the correction out of the update."""
    obj = OBJECTIVES[args.loss]
    loss = functools.partial(obj.awp_loss, **{k.name: getattr(args, k.name) for k in obj.params})
    return AWP(model, train_gsem.build_classifier(args, device),
               gamma=obj.awp_gamma if args.awp_gamma is None else args.awp_gamma, proxy_lr=args.awp_lr,
               eot_iter=args.gra_eot_num, loss_fn=loss,
               warmup=obj.awp_warmup if args.awp_warmup is None else args.awp_warmup,
               correct=args.gradient_correction in ("all", "update"))


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return train_gsem.train(args, "awp", parser(), awp=weight_perturbation)


if __name__ == "__main__":
    main(get_args())
