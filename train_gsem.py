"""Gradient-corrected adversarial training of a GSeM model (Liu et al., Pattern Recognition 2025):
plain cross-entropy on a batch whose even-indexed half is replaced by PGD-10 (EOT 10) examples, with 10 noisy
passes per weight update. ``--loss pgd_at | trades | mart`` trains the baselines in the same loop.

    python train_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from __future__ import annotations

from utils.cli import Parser
from utils.errors import RESUME_HINT, cli_entry
from utils.gsem_training import add_gsem_train_args, run_gsem_training


def get_args(argv=None):
    p = Parser(__doc__)
    add_gsem_train_args(p, loss="mixed")
    return p.parse_args(argv)


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return run_gsem_training(args, "gsem", defaults=vars(get_args([])))


if __name__ == "__main__":
    main(get_args())
