"""Gradient-corrected adversarial training of a GSeM model (Liu et al., Pattern Recognition 2025):
plain cross-entropy on a batch whose even-indexed half is replaced by PGD-10 (EOT 10) examples, with 10 noisy
passes per weight update. ``--loss pgd_at | trades | mart`` trains the baselines in the same loop.

    python train_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from utils.gsem_training import script

parser, get_args, main = script(__doc__, "gsem", loss="mixed")

if __name__ == "__main__":
    main(get_args())
