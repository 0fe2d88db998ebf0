"""Gradient-corrected adversarial training of a GSeM model with MART (Wang et al., ICLR 2020; beta = 5 as the GSeM
reference): PGD-10 (EOT 10) on the whole batch, MART loss, 10 noisy passes per weight update.

    python train_gsem_mart.py --classifier_name GSeMResNet18 --dataset_name cifar10
"""
from utils.gsem_training import script

parser, get_args, main = script(__doc__, "mart", loss="mart")

if __name__ == "__main__":
    main(get_args())
