"""Gradient-corrected adversarial training of a GSeM model (Liu et al., Pattern Recognition 2025; X-L-Liu/GSeM
``train_gsem.py``): plain cross-entropy on a batch whose even-indexed half is replaced by PGD-10 (EOT 10) examples,
with 10 noisy passes per weight update, selected by the half-adversarial test accuracy, over 5 warm restarts
("reloads") of 150 epochs. ``--loss pgd_at | trades | mart`` trains the baselines in the same loop.

    python train_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10

The script wires the pieces: the flags (:func:`parser`), the model (:func:`build_classifier`), the objective and its
training attack (:func:`objective`), the selection metric (:func:`half_adversarial_accuracy`), the run name
(:func:`run_name`) and the reload loop (:func:`train`) around the one training loop (``utils.training.fit``).
``train_gsem_mart.py`` and ``train_gsem_awp.py`` reuse these pieces and show what they change.
"""
from __future__ import annotations

import functools
import os
import re
import time

import torch
from tqdm.auto import tqdm

from attacks import Attack, AttackConfig, Uncorrected, build_attack
from models import build_model, list_models, model_options
from utils import distributed as dist
from utils.argtypes import (
    accuracy_threshold,
    eps_255,
    momentum,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    step_255,
)
from utils.checkpoint import Checkpointer, load_checkpoint, load_model_state
from utils.cli import Parser, add_bool, add_run_args, add_speed_args, check_model_name, run_suffix, unused_knobs
from utils.data import gsem_transforms, make_loaders
from utils.datasets import DATASET_HELP, model_options_for, num_channels, num_classes
from utils.errors import RESUME_HINT, UserError, cli_entry
from utils.losses import OBJECTIVES, double_backward, objective_params, with_gradient_correction
from utils.modes import eval_mode
from utils.precision import autocast
from utils.runtime import check_compile, prepare_training_model, start_run
from utils.training import BAR_REFRESH, TrainStep, fit, half_adversarial


def parser(doc: str = __doc__, loss: str = "mixed") -> Parser:
    """The reference's flags and defaults, plus this repository's run flags; ``loss`` is the script's objective;
    ``--loss`` takes any registered objective (``utils.losses.OBJECTIVES``) and every objective's hyperparameters
    are flags."""
    p = Parser(doc)
    p.add_argument("--loss", type=str, default=loss, choices=list(OBJECTIVES),
                   help="; ".join(f"{k}: {o.summary}" for k, o in OBJECTIVES.items()))
    for knob in objective_params():
        knob.add_to(p, f" (--loss {', '.join(o.name for o in OBJECTIVES.values() if knob in o.params)})")
    p.add_argument("--classifier_name", type=str, default="GSeMResNet18",
                   help=f"registry name (case-insensitive): {', '.join(list_models(canonical=True))}")
    p.add_argument("--dataset_name", type=str, default="cifar10",
                   help=DATASET_HELP)
    p.add_argument("--alpha", type=positive_int, default=6, help="GSeM quantisation: grid step 1/alpha")
    p.add_argument("--beta", type=nonneg_int, default=4, help="GSeM noise: integers in [-beta, beta] (0 = no noise)")
    p.add_argument("--batch_size", type=positive_int, default=256, help="batch size")
    p.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate")
    p.add_argument("--momentum", type=momentum, default=0.9, help="SGD momentum")
    p.add_argument("--weight_decay", type=nonneg_float, default=3.5e-3, help="SGD weight decay")
    p.add_argument("--milestones", type=positive_int, nargs="+", default=[60, 110], help="lr x0.1 at these epochs")
    p.add_argument("--epochs", type=positive_int, default=150, help="epochs per reload")
    p.add_argument("--reload", type=positive_int, default=5,
                   help="number of runs of --epochs epochs; each after the first restarts from the best checkpoint "
                        "with a fresh optimizer and schedule")
    p.add_argument("--gra_eot_num", type=positive_int, default=10, help="noisy passes per weight update (EOT)")
    p.add_argument("--att_eot_num", type=positive_int, default=10, help="noisy passes per attack step (EOT)")
    p.add_argument("--eps", type=eps_255, default=8.0, help="training attack L-inf budget, in 1/255 units (8 = 8/255)")
    p.add_argument("--step_size", type=step_255, default=2.0, help="training attack step, in 1/255 units")
    p.add_argument("--attack_steps", type=positive_int, default=10, help="training attack PGD steps")
    add_bool(p, "batched_eot", True, "attack EOT as copies of the batch in one forward (same expectation; faster)",
             result=False)
    p.add_argument("--eot_batch", type=positive_int, default=None, result=False,
                   help="most images per batched-EOT forward (default: 64 on CPU, 1024 on CUDA; lower it on OOM)")
    p.add_argument("--gradient_correction", type=str, default="all", choices=["all", "attack", "update", "none"],
                   help="where GSeM's corrected gradient is used in training: the training attack and the weight "
                        "update (all, the method), only one of them, or neither (the paper's ablation: GSeM with the "
                        "masked gradient); the model-selection attack always uses it")
    add_bool(p, "use_amp", True, "bf16 autocast for training and the training attack where the device has native bf16 "
                                 "(CUDA, AMX/AVX512-BF16 CPUs; no effect elsewhere)")
    p.add_argument("--val_split", type=nonneg_int, default=0,
                   help="select the model on N held-out training images instead of the test set (0 = test set, "
                        "as the reference)")
    p.add_argument("--model_save_path", type=str, default="adv_model", help="checkpoints go to <path>/<dataset>/",
                   result=False)
    p.add_argument("--model_load_path", type=str, default="", help="initial weights (default: train from scratch)")
    p.add_argument("--best_acc", type=accuracy_threshold, default=0.0,
                   help="a checkpoint is written only when the selection accuracy (fraction) beats this")
    add_bool(p, "resume", False, "continue an interrupted run (any reload, any epoch)", result=False)
    add_bool(p, "overwrite", False, "replace an earlier run of the same name (without it, such a run is refused)",
             result=False)
    add_speed_args(p)
    add_run_args(p)
    # sync_bn: under torchrun BatchNorm takes its statistics over the global batch, as on the authors' single GPU
    p.set_defaults(data_path="./dataset", workers=2, sync_bn=True)
    return p


def get_args(argv=None):
    return parser().parse_args(argv)


def objective(args, model):
    """``(loss, input policy)`` of ``--loss`` (:data:`utils.losses.OBJECTIVES`): its loss with its hyperparameters
    from the flags, its training attack on ``model``, with ``--gradient_correction`` applied to both."""
    obj = OBJECTIVES[args.loss]
    attack = train_attack(args, model, obj.attack, train_mode=obj.attack_train_mode)
    loss = functools.partial(obj.loss, **{k.name: getattr(args, k.name) for k in obj.params})
    if args.gradient_correction not in ("all", "attack"):
        attack = Uncorrected(model, attack)
    if args.gradient_correction not in ("all", "update"):
        loss = with_gradient_correction(loss, False)
    return loss, {"clean": None, "adversarial": attack, "half": half_adversarial(attack)}[obj.policy]


def train_attack(args, model, name: str = "PGD", train_mode: bool = False) -> Attack:
    """The reference's training and test-epoch attack, the registry's ``PGD`` (or the objective's, ``TRADES-KL``):
    10 steps, eps 8/255, step 2/255, EOT ``--att_eot_num`` (bf16 where the caller autocasts: ``--use_amp``); in eval
    mode, or in train mode for PGD-AT as its official code."""
    cfg = AttackConfig(eps=args.eps / 255, pgd_steps=args.attack_steps, pgd_alpha=args.step_size / 255,
                       eot_iter=args.att_eot_num, batched_eot=args.batched_eot, eot_batch=args.eot_batch,
                       train_mode=train_mode)
    return build_attack(name, model, cfg)[0]


def half_adversarial_accuracy(model, loader, attack, device, *, amp=False, bar=True) -> dict:
    """The reference's selection metric: in every batch the even-indexed half is replaced by adversarial examples
    (the attack under bf16 autocast when ``amp``, as the reference's AMP attack), then one noisy forward of the whole
    batch in fp32, as the reference.

    Returns:
        fractions ``test_acc`` (all), ``clean_acc`` (odd half) and ``adv_acc`` (even half).
    """
    correct = torch.zeros(2, device=device)  # [adversarial half, clean half]
    count, shown = [0, 0], 0.0
    make_input = half_adversarial(attack)
    pbar = tqdm(loader, desc="half-adversarial test", disable=not (bar and dist.is_main()), leave=False,
                dynamic_ncols=True)
    with eval_mode(model):
        for x, y in pbar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp):
                x = make_input(x, y)
            with torch.no_grad():
                hit = model(x).argmax(1) == y
            correct[0] += hit[0::2].sum()
            correct[1] += hit[1::2].sum()
            count[0] += hit[0::2].numel()
            count[1] += hit[1::2].numel()
            if bar and time.time() - shown >= BAR_REFRESH:  # a device sync: at most once per BAR_REFRESH seconds
                pbar.set_postfix(acc=f"{correct.sum().item() / sum(count):.4f}")
                shown = time.time()
    pbar.close()
    totals = dist.all_reduce_sum(torch.cat([correct, torch.tensor(count, device=device, dtype=correct.dtype)]))
    adv, clean, n_adv, n_clean = (int(round(v)) for v in totals.tolist())
    return {"test_acc": (adv + clean) / (n_adv + n_clean), "clean_acc": clean / max(n_clean, 1),
            "adv_acc": adv / max(n_adv, 1)}


def build_classifier(args, device):
    """``--classifier_name`` for the dataset, with ``--alpha``/``--beta`` where the family takes them (a model without
    them, e.g. a plain ``resnet18`` baseline, ignores their defaults) and one input channel for the grey datasets."""
    options = model_options_for(args.dataset_name, model_options(args.classifier_name), alpha=args.alpha,
                                beta=args.beta)
    return build_model(args.classifier_name, num_classes(args.dataset_name), **options).to(device)


# the flags the reference's checkpoint name holds (<classifier>_<alpha>_<beta>)
NAME_FLAGS = ("classifier_name", "dataset_name", "alpha", "beta")


def run_name(args, method: str, p: Parser) -> str:
    """``<classifier>_<alpha>_<beta>`` as the reference (``train_gsem.py``; ``<classifier>`` alone for a model without
    GSeM modules), with ``_mart`` / ``_awp`` for the other two methods (the reference gave all three the same name,
    so one run replaced another's model) and ``_<flag><value>`` for every result-changing flag of the parser ``p``
    off its default (``utils.cli.run_suffix``; the hyperparameters of objectives other than ``--loss`` change nothing
    and are left out)."""
    tag = "" if method == "gsem" else f"_{method}"
    model = args.classifier_name  # alpha and beta only where the model has them (not for a plain ResNet-18)
    if "alpha" in model_options(args.classifier_name):
        model += f"_{args.alpha}_{args.beta}"
    flags = [f for f in p.result_flags() if f not in NAME_FLAGS + unused_knobs(args.loss)]
    return f"{model}{tag}{run_suffix(args, vars(p.parse_args([])), flags)}"


def train(args, method: str, p: Parser, *, awp=None) -> dict:
    """Train with the reference recipe: ``args.reload`` runs of ``args.epochs`` epochs; each run after the first
    starts from the best checkpoint so far with a new optimizer, schedule and attack; the best model (by
    half-adversarial accuracy) is saved as ``<model_save_path>/<dataset>/<run name>_<acc>.pt`` (:func:`run_name`;
    ``GSeMResNet18_6_4_0.6731.pt`` for the reference recipe), the resume state as ``<run name>.last.pt`` and the
    log as ``<run name>.log.json``.

    Args:
        args: the parsed flags (:func:`parser`).
        method: ``gsem``, ``mart`` or ``awp`` (in the run name); the objective is ``args.loss``.
        p: the script's parser (its result-changing flags name the run and are checked on resume).
        awp: ``awp(args, model, device) -> utils.awp.AWP``: adversarial weight perturbation, recomputed every step
            (``train_gsem_awp.py``); None: none.
    Returns:
        ``{"best", "best_file", "history"}``.
    """
    args.classifier_name = check_model_name(args.classifier_name)
    twice = double_backward(args.loss, args)  # --loss fgr/igr: channels_last off on CPU, no torch.compile
    check_compile(args.compile, twice)
    args.method = method  # stored with the checkpoint: evaluation and the results table tell the methods apart
    device, say = start_run(args)
    train_tf, test_tf = gsem_transforms(num_channels(args.dataset_name))
    train_loader, test_loader, gen = make_loaders(
        args.dataset_name, args.data_path, args.batch_size, train_tf, test_tf, subset=args.subset,
        workers=args.workers, seed=args.seed, verify=args.verify_data, pin_memory=device.type == "cuda",
        val_split=args.val_split)
    stem = os.path.join(args.model_save_path, args.dataset_name, run_name(args, method, p))
    ckpt = Checkpointer(f"{stem}.last.pt", f"{stem}.log.json", vars(args), result_keys=p.result_flags(),
                        best_path=lambda record: f"{stem}_{record['test_acc']}.pt", select_key="test_acc",
                        best=args.best_acc, best_file=args.model_load_path or None,
                        best_pattern=re.escape(os.path.basename(stem)) + r"_[-+0-9.eE]+\.pt")
    state = ckpt.load_last() if args.resume else None
    first = state.get("context", {}).get("reload", 0) if state else 0
    if ckpt.best_file and not os.path.isfile(ckpt.best_file):
        raise UserError(f"--model_load_path: checkpoint not found: {ckpt.best_file}")

    for reload in range(first, args.reload):
        ckpt.context = {"reload": reload}
        model = build_classifier(args, device)
        if reload == first:
            ckpt.prepare(model, resume=args.resume, overwrite=args.overwrite)
        if ckpt.best_file:  # warm restart from the best checkpoint so far (or the given initial weights)
            load_model_state(model, load_checkpoint(ckpt.best_file, map_location=device)["model"], ckpt.best_file,
                             args.classifier_name)
        # DDP under torchrun, channels_last, torch.compile if asked; attacks, AWP and evaluation use the plain module
        train_model, model = prepare_training_model(model, device, channels_last=args.channels_last, amp=args.use_amp,
                                                    double_backward=twice, compile=args.compile, sync_bn=args.sync_bn)
        say(f"reload {reload + 1}/{args.reload}: {'from ' + ckpt.best_file if ckpt.best_file else 'from scratch'}"
            f" | {sum(p.numel() for p in model.parameters()):,} parameters | device {device}")
        optimizer = torch.optim.SGD(train_model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
        attack = train_attack(args, model)  # the selection attack: always PGD with the corrected gradient
        loss, make_input = objective(args, model)
        step = TrainStep(train_model, optimizer, loss, make_input=make_input, eot_iter=args.gra_eot_num,
                         awp=awp(args, model, device) if awp else None, amp=args.use_amp,
                         device=device)
        if dist.world_size() > 1:  # every rank must know about a new best file before the next reload reads it
            torch.distributed.barrier()
        fit(step, train_loader, scheduler,
            functools.partial(half_adversarial_accuracy, model, test_loader, attack, device, amp=args.use_amp,
                              bar=args.bar),
            ckpt, epochs=args.epochs, generator=gen, resume=args.resume and reload == first, bar=args.bar,
            log=say)
        if dist.world_size() > 1:
            torch.distributed.barrier()
    say(f"best half-adversarial accuracy {ckpt.best:.4f}: {ckpt.best_file}")
    return {"best": ckpt.best, "best_file": ckpt.best_file, "history": ckpt.history}


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    return train(args, "gsem", parser())


if __name__ == "__main__":
    main(get_args())
