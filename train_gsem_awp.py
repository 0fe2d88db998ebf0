"""Gradient-corrected adversarial training of a GSeM model with MART (beta = 5) and adversarial weight perturbation
(Wu et al., NeurIPS 2020; gamma = 0.01, proxy SGD lr 0.01 on -CE, no warm-up, as the GSeM reference). ``--loss``
gives AWP to any other objective (mixed, pgd_at, trades).

    python train_gsem_awp.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from utils.gsem_training import script

parser, get_args, main = script(__doc__, "awp", loss="mart", awp=True)

if __name__ == "__main__":
    main(get_args())
