"""Train a CIFAR classifier with flow gradient regularization (FGR; Xia & Li, Neurocomputing 2021).

    python main.py --data_path your_path --data_name cifar10 --model_name vgg11 --fgr_lamb 300

Defaults are the reference recipe: 80 epochs, batch 128, SGD lr 0.01 momentum 0.9 weight decay 5e-4, lr x0.1 at
epochs 40 and 60, random flow start sigma 0.01, checkpoint = best clean test accuracy. Baselines: --reg igr (input
gradient regularization), --adv_train flow (adversarial deformation training, alone or with FGR); --loss trains any
objective of utils.losses instead (e.g. --loss pgd_at, or the README's alp), the flow attack its training attack.
"""
from __future__ import annotations

import copy
import os

import torch

from attacks import AttackConfig, build_attack
from models import build_model
from utils.argtypes import momentum, nonneg_float, nonneg_int, positive_float, positive_int
from utils.checkpoint import Checkpointer, load_checkpoint, load_model_state
from utils.cli import Parser, add_bool, add_fgr_model_args, add_run_args, add_speed_args, check_model_name, fgr_run_name
from utils.data import fgr_device_transforms, fgr_transforms, make_loaders
from utils.datasets import dataset_stats, model_options_for, num_classes
from utils.errors import RESUME_HINT, UserError, cli_entry
from utils.evaluation import evaluate
from utils.losses import OBJECTIVES, double_backward, objective_params
from utils.regularizers import penalty_ratio
from utils.runtime import check_compile, prepare_training_model, start_run
from utils.training import TrainStep, fit, half_adversarial


def parser() -> Parser:
    p = Parser(__doc__)
    add_fgr_model_args(p, penalty=False)
    p.add_argument("--loss", type=str, default=None, choices=list(OBJECTIVES),
                   help="the objective (utils.losses; default: --reg's, fgr or igr, the paper's); another one trains "
                        "on its input policy with the flow attack at --adv_eps, --adv_steps")
    p.add_argument("--epochs", type=positive_int, default=80, help="training epochs")
    p.add_argument("--batch_size", type=positive_int, default=128,
                   help="batch size (lambda's meaning depends on it: R scales as 1/B^2 per example)")
    p.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate")
    p.add_argument("--momentum", type=momentum, default=0.9, help="SGD momentum")
    p.add_argument("--weight_decay", type=nonneg_float, default=5e-4, help="SGD weight decay")
    p.add_argument("--milestones", type=positive_int, nargs="+", default=[40, 60],
                   help="epochs at which lr is multiplied by 0.1")
    for knob in objective_params():  # here, where --sampler always stood: run names keep their order
        knob.add_to(p, f" (--loss {', '.join(o.name for o in OBJECTIVES.values() if knob in o.params)})")
    p.add_argument("--fgr_lamb_ref_batch", type=nonneg_int, default=0,
                   help="hold lambda's per-example weight fixed across batch sizes: apply lambda x (B / this)^2, so "
                        "--fgr_lamb means what it means at this batch (128: the reference's); 0 = lambda as given")
    p.add_argument("--fgr_warmup", type=nonneg_int, default=0,
                   help="epochs over which lambda ramps linearly from 0 (epoch 1 plain) to its value (0 = the "
                        "reference: full lambda from the first step, which collapses to a flat network on short runs)")
    p.add_argument("--select", type=str, default="best", choices=["best", "last"],
                   help="checkpoint kept under the run name: best clean test accuracy (reference) or last epoch")
    add_bool(p, "amp", False, "bf16 autocast where the device has native bf16 (CUDA, AMX/AVX512-BF16 CPUs); the "
                              "reference trains in fp32")
    p.add_argument("--igr_match_fgr", type=nonneg_float, default=0.0,
                   help="with --reg igr: set lambda so that the IGR penalty weighs what FGR's does at this lambda (the "
                        "ratio of the two penalties, measured on the first 8 training batches, is printed and recorded "
                        "as igr_ratio); 0 = lambda from --fgr_lamb")
    p.add_argument("--igr_match_on", type=str, default="",
                   help="checkpoint whose model the ratio is measured on (e.g. the FGR run to compare with: the ratio "
                        "grows as a model learns, about 2 at initialisation); default: this model at initialisation")
    add_run_args(p)
    add_bool(p, "resume", False, "continue an interrupted run from <name>.last.pt", result=False)
    add_bool(p, "overwrite", False, "replace an earlier run of the same name (without it, such a run is refused)",
             result=False)
    add_bool(p, "device_data", None, "hold the dataset on the device as uint8 and crop/flip per example there (same "
                                     "distribution as the torchvision pipeline; no workers); None: on for CUDA",
             result=False)
    add_speed_args(p)
    return p


def get_args(argv=None):
    return parser().parse_args(argv)


MATCH_BATCHES = 8
REFERENCE_BATCH = 128


def applied_lambda(args) -> float:
    """The lambda multiplying R at this run's batch size: ``--fgr_lamb``, times (B / ref)^2 under
    ``--fgr_lamb_ref_batch ref``. CE is a batch mean, so the flow gradient of example b is grad l_b / B and
    CE + lambda R = (1/B) sum_b [l_b + (lambda / B^2) ||grad_n l_b||^2]: the penalty's weight per example, relative to
    its CE, is lambda / B^2, which (B / ref)^2 keeps at lambda / ref^2 (docs/fgr.md#lambda-and-the-batch-size)."""
    if args.fgr_lamb_ref_batch:
        return args.fgr_lamb * (args.batch_size / args.fgr_lamb_ref_batch) ** 2
    return args.fgr_lamb


def lambda_statement(args) -> str | None:
    """One line saying what lambda weighs at the reference batch 128, when that differs from ``--fgr_lamb``."""
    lamb = applied_lambda(args)
    at_ref = lamb * (REFERENCE_BATCH / args.batch_size) ** 2
    if lamb <= 0 or (at_ref == args.fgr_lamb and lamb == args.fgr_lamb):
        return None
    how = (f"--fgr_lamb {args.fgr_lamb:g} at --fgr_lamb_ref_batch {args.fgr_lamb_ref_batch} is applied as "
           f"{lamb:.4g} at batch {args.batch_size}" if args.fgr_lamb_ref_batch else
           f"lambda {lamb:g} at batch {args.batch_size}")
    return (f"lambda: {how}, which weighs the penalty per example as lambda {at_ref:.4g} at the reference's batch "
            f"{REFERENCE_BATCH} (R scales as 1/B^2; --fgr_lamb_ref_batch {REFERENCE_BATCH} holds it fixed)")


def lambda_at(args, epoch: int) -> float:
    """lambda in ``epoch`` (1-indexed): :func:`applied_lambda`, ramped linearly from 0 over ``--fgr_warmup`` epochs
    (epoch 1 plain, full from epoch warmup + 1)."""
    lamb = applied_lambda(args)
    return lamb * min(1.0, (epoch - 1) / args.fgr_warmup) if args.fgr_warmup else lamb


def flat_network_warning(history: list, num_classes: int) -> str | None:
    """A warning when training accuracy is still near chance while the penalty shrinks: the network is becoming flat
    (near-constant outputs have a small flow gradient), a silent wrong result."""
    if len(history) < 2 or "train_reg" not in history[-1] or "train_reg" not in history[-2]:
        return None
    last, before = history[-1], history[-2]["train_reg"]
    if last["train_acc"] > 2.0 / num_classes or not 0 < last["train_reg"] < before:
        return None
    return (f"warning: training accuracy {100 * last['train_acc']:.1f}% is near chance ({100 / num_classes:.0f}%) "
            f"while the penalty R fell from {before:.3g} to {last['train_reg']:.3g}: FGR is flattening the network, "
            f"not training it. Use --fgr_warmup, a smaller lambda, or more epochs "
            f"(docs/fgr.md#when-fgr-does-not-train)")


def match_igr_to_fgr(args, model, loader, gen, device, say) -> None:
    """``--igr_match_fgr L``: lambda = L x (mean R_FGR / mean R_IGR) on the first training batches at
    initialisation, rounded to 4 significant digits; the ratio goes into ``args.igr_ratio`` (recorded with the run).
    The random streams of the training run are left as they were."""
    if args.reg != "igr":
        raise UserError("--igr_match_fgr sets the IGR lambda: use it with --reg igr")
    measured = model
    if args.igr_match_on:
        measured = copy.deepcopy(model)
        load_model_state(measured, load_checkpoint(args.igr_match_on, map_location=device)["model"],
                         args.igr_match_on, args.model_name)
    state = gen.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        batches = [(x.to(device), y.to(device)) for _, (x, y) in zip(range(MATCH_BATCHES), loader)]
        ratio = penalty_ratio(measured, batches, rs_sigma=args.rs_sigma, sampler=args.sampler)
    gen.set_state(state)
    args.igr_ratio, args.fgr_lamb = ratio, float(f"{args.igr_match_fgr * ratio:.4g}")
    where = args.igr_match_on or "this model at initialisation"
    say(f"IGR matched to FGR lambda {args.igr_match_fgr:g}: R_FGR / R_IGR = {ratio:.4g} on {len(batches)} training "
        f"batches ({where}), so lambda = {args.fgr_lamb:g}")


@cli_entry(on_interrupt=RESUME_HINT)
def main(args):
    args.model_name = check_model_name(args.model_name)
    if args.loss in ("fgr", "igr"):  # the paper's objectives are named by --reg (the reference's run names)
        args.reg, args.loss = args.loss, None
    if args.loss and (args.fgr_lamb > 0 or args.adv_train != "none"):
        raise UserError(f"--loss {args.loss} trains its own objective: --fgr_lamb and --adv_train belong to --loss fgr "
                        f"and igr")
    if args.loss and OBJECTIVES[args.loss].attack != "PGD":
        raise UserError(f"--loss {args.loss} trains on the {OBJECTIVES[args.loss].attack} attack, not main.py's flow "
                        f"attack; use train_gsem.py --loss {args.loss}")
    twice = double_backward(args.loss or args.reg, args)
    check_compile(args.compile, twice)
    args.fgr_lamb_applied = applied_lambda(args)  # recorded with the run (the checkpoint's args)
    statement = lambda_statement(args)
    if statement:
        print(statement, flush=True)  # first line, before the args
    device, say = start_run(args)
    n_cls = num_classes(args.data_name)
    on_device = args.device_data if args.device_data is not None else device.type == "cuda"
    train_tf, test_tf, device_aug = (fgr_device_transforms(args.augment) if on_device
                                     else (*fgr_transforms(args.augment), None))
    train_loader, test_loader, gen = make_loaders(
        args.data_name, args.data_path, args.batch_size, train_tf, test_tf, subset=args.subset,
        workers=args.workers, seed=args.seed, verify=args.verify_data, pin_memory=device.type == "cuda",
        device_augment=device_aug, device=device, bar=args.bar)
    normalize = dataset_stats(args.data_name) if args.normalize else None
    model = build_model(args.model_name, n_cls, normalize=normalize, **model_options_for(args.data_name)).to(device)
    # DDP under torchrun, channels_last on CUDA (and with bf16 on CPU), torch.compile if asked; attacks and
    # evaluation use the plain module
    train_model, model = prepare_training_model(model, device, channels_last=args.channels_last, amp=args.amp,
                                                double_backward=twice,
                                                compile=args.compile, sync_bn=args.sync_bn)
    optimizer = torch.optim.SGD(train_model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.milestones, gamma=0.1)
    if args.igr_match_fgr > 0:
        match_igr_to_fgr(args, model, train_loader, gen, device, say)
        args.fgr_lamb_applied = applied_lambda(args)
        if lambda_statement(args):
            say(lambda_statement(args))

    obj = OBJECTIVES[args.loss or args.reg]
    params = {k.name: getattr(args, k.name) for k in obj.params}

    def loss_fn(net, x_in, y, x):  # FGR/IGR: lambda of the current epoch (the warm-up reads step.epoch, set by fit)
        schedule = {"fgr_lamb": lambda_at(args, step.epoch)} if "fgr_lamb" in params else {}
        return obj.loss(net, x_in, y, x, **{**params, **schedule})

    # the training attack, from the registry: the flow attack at --adv_eps, --adv_steps; --adv_train flow attacks
    # the whole batch (FGR then applied at the deformed input), another objective takes its own input policy
    flow = build_attack("flow", model, AttackConfig(flow_eps=args.adv_eps, flow_steps=args.adv_steps))[0]
    make_input = {"clean": flow if args.adv_train == "flow" else None, "adversarial": flow,
                  "half": half_adversarial(flow)}[obj.policy]
    step = TrainStep(train_model, optimizer, loss_fn, make_input=make_input, amp=args.amp, device=device)
    p = parser()
    name = fgr_run_name(args, vars(p.parse_args([])), p.result_flags())
    path = os.path.join(args.weight_path, name)
    checkpointer = Checkpointer(f"{path}.last.pt", f"{path}.log.json", vars(args), result_keys=p.result_flags(),
                                best_path=f"{path}.pt", select_key="val_acc", select=args.select,
                                total_epochs=args.epochs)
    checkpointer.prepare(model, resume=args.resume, overwrite=args.overwrite)
    say(f"run {name}: {sum(p.numel() for p in model.parameters()):,} parameters, device {device}")
    fit(step, train_loader, scheduler,
        lambda: {"val_acc": evaluate(model, test_loader, device, bar=args.bar, desc="val")["clean"]},  # fraction
        checkpointer, epochs=args.epochs, generator=gen, resume=args.resume, bar=args.bar, log=say,
        check=lambda history: flat_network_warning(history, n_cls) if args.fgr_lamb > 0 else None,
        hint="lambda too large for the batch size (R scales as 1/B^2 per example; the reference tuned lambda at "
             "batch 128), or --lr too high")
    say(f"saved {path}.pt")


if __name__ == "__main__":
    main(get_args())
