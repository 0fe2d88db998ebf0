"""Gradient-corrected adversarial training of a GSeM model with MART (Wang et al., ICLR 2020; beta = 5 as the GSeM
reference): PGD-10 (EOT 10) on the whole batch, MART loss, 10 noisy passes per weight update.

    python train_gsem_mart.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from __future__ import annotations

from utils.cli import Parser
from utils.errors import RESUME_HINT, cli_entry
from utils.gsem_training import add_gsem_train_args, run_gsem_training


def get_args(argv=None):
    p = Parser(__doc__)
    add_gsem_train_args(p, loss="mart")
    return p.parse_args(argv)


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return run_gsem_training(args, "mart", defaults=vars(get_args([])))


if __name__ == "__main__":
    main(get_args())
