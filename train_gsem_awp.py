"""Gradient-corrected adversarial training of a GSeM model with MART (beta = 5) and adversarial weight perturbation
(Wu et al., NeurIPS 2020; gamma = 0.01, proxy SGD lr 0.01 on -CE, no warm-up, as the GSeM reference).

    python train_gsem_awp.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from __future__ import annotations

import argparse

from utils.adv_train import add_gsem_train_args, build_gsem_model, run_gsem_training, train_attack
from utils.awp import AWP
from utils.cli import nonneg_float, positive_float
from utils.errors import cli_entry
from utils.losses import MARTCriterion


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gsem_train_args(p)
    p.add_argument("--mart_beta", type=nonneg_float, default=5.0, help="weight of MART's robust KL term")
    p.add_argument("--awp_gamma", type=nonneg_float, default=0.01, help="AWP perturbation size, relative to ||w||")
    p.add_argument("--awp_lr", type=positive_float, default=0.01, help="AWP proxy SGD step")
    return p.parse_args(argv)


def make_criterion(args, model, device):
    awp = AWP(model, build_gsem_model(args, device), gamma=args.awp_gamma, proxy_lr=args.awp_lr,
              eot=args.gra_eot_num)
    return MARTCriterion(train_attack(args, model), beta=args.mart_beta, gra_eot=args.gra_eot_num, awp=awp)


@cli_entry
def main(args):
    return run_gsem_training(args, "awp", make_criterion)


if __name__ == "__main__":
    main(get_args())
