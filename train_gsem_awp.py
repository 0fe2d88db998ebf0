"""Gradient-corrected adversarial training of a GSeM model with MART (beta = 5) and adversarial weight perturbation
(Wu et al., NeurIPS 2020; gamma = 0.01, proxy SGD lr 0.01 on -CE, no warm-up, as the GSeM reference). ``--loss``
gives AWP to any other objective (mixed, pgd_at, trades).

    python train_gsem_awp.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from __future__ import annotations

from utils.cli import Parser, nonneg_float, positive_float
from utils.errors import RESUME_HINT, cli_entry
from utils.gsem_training import add_gsem_train_args, run_gsem_training


def get_args(argv=None):
    p = Parser(__doc__)
    add_gsem_train_args(p, loss="mart")
    p.add_argument("--awp_gamma", type=nonneg_float, default=0.01, help="AWP perturbation size, relative to ||w||")
    p.add_argument("--awp_lr", type=positive_float, default=0.01, help="AWP proxy SGD step")
    return p.parse_args(argv)


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return run_gsem_training(args, "awp", awp=True, defaults=vars(get_args([])))


if __name__ == "__main__":
    main(get_args())
