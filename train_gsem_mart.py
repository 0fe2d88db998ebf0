"""Gradient-corrected adversarial training of a GSeM model with MART (Wang et al., ICLR 2020; beta = 5 as the GSeM
reference): PGD-10 (EOT 10) on the whole batch, MART loss, 10 noisy passes per weight update.

    python train_gsem_mart.py --classifier_name GSeMResNet18 --dataset_name cifar10

What changes against ``train_gsem.py``: the objective. ``--loss mart`` (``utils.losses.mart``: MART's boosted CE on
the attacked batch plus ``--mart_beta`` times the clean-weighted KL, the whole batch attacked) instead of the
half-adversarial cross-entropy; the rest (flags, model, selection, reloads) is train_gsem.py's.
"""
import train_gsem
from utils.errors import RESUME_HINT, cli_entry


def parser():
    return train_gsem.parser(__doc__, loss="mart")


def get_args(argv=None):
    return parser().parse_args(argv)


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return train_gsem.train(args, "mart", parser())


if __name__ == "__main__":
    main(get_args())
