"""FGR training, the authors' code beside ours on the same batches: does lambda 300 collapse in their code too?

    python benchmarks/fgr_side_by_side.py --reference PATH/Flow-Gradient-Regularization --epochs 5 --batch_size 128

``--reference`` is a checkout of xpf/Flow-Gradient-Regularization (HEAD 26517db; not part of this repository, read
at run time). Its ``models/vgg.py`` and ``regularizers/fgr.py`` are loaded as they are, and each step is the body
of its ``train.py`` loop, verbatim (random start, ``x.requires_grad_(True)``, the gather sampler, CE + lambda *
``calculate(loss)``, SGD); their ``opts.device`` is ``cpu``, so no ``.cuda`` call is made. Our side is ``main.py``'s
own training step (``utils.training.TrainStep`` with ``utils.losses.gradient_regularized``).

Both start from the same weights (ours copied into theirs: the state_dict keys are equal), see the same batches (the
built-in ``digits``, the reference augmentation, one seeded order) and the same random-start noise (the global RNG
reseeded before each side's step), with the reference optimiser (SGD lr 0.01, momentum 0.9, weight decay 5e-4; its
lr steps at epochs 40 and 60 are beyond a short run).
Per epoch it prints and records, for each side: the mean CE, R and loss, the training accuracy (on the randomly
deformed inputs, as both scripts count it), the clean test accuracy (eval mode), and the largest weight difference
between the two sides. ``--json`` writes everything (with the first epoch's per-step CE and R).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model  # noqa: E402
from utils.data import fgr_transforms, make_loaders  # noqa: E402
from utils.evaluation import evaluate  # noqa: E402
from utils.losses import gradient_regularized  # noqa: E402
from utils.results import write_json  # noqa: E402
from utils.training import TrainStep  # noqa: E402


def load_reference(path: str):
    """The authors' ``VGG`` class and ``FlowGradientReg`` module, loaded from their files under private names (their
    package names, ``models`` and ``regularizers``, are ours too)."""
    def load(name, rel):
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            raise SystemExit(f"error: {file} not found: --reference must be a checkout of "
                             "xpf/Flow-Gradient-Regularization")
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load("_ref_vgg", "models/vgg.py"), load("_ref_fgr", "regularizers/fgr.py")


def reference_step(model, regularizer, optimizer, x, y, lamb, rs_sigma):
    """The body of the authors' ``train.py`` loop, verbatim (its ``criterion`` is ``nn.CrossEntropyLoss()``)."""
    if lamb > 0 and rs_sigma > 0:
        x = regularizer.random_start(x, rs_sigma)
    if lamb > 0:
        x.requires_grad_(True)
        x = regularizer(x)
    p = model(x)
    loss = F.cross_entropy(p, y)
    ce = loss.detach()
    reg = torch.zeros(())
    if lamb > 0:
        reg = regularizer.calculate(loss)
        loss = loss + lamb * reg
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), p.detach(), {"ce": ce, "reg": reg.detach()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="checkout of xpf/Flow-Gradient-Regularization")
    p.add_argument("--data_name", default="digits")
    p.add_argument("--data_path", default="./data")
    p.add_argument("--model_name", default="vgg11", choices=["vgg11", "vgg13", "vgg16", "vgg19"])
    p.add_argument("--fgr_lamb", type=float, default=300.0)
    p.add_argument("--rs_sigma", type=float, default=0.01)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the record here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ref_vgg, ref_fgr = load_reference(args.reference)

    train_tf, test_tf = fgr_transforms("reference")
    train_loader, test_loader, _ = make_loaders(args.data_name, args.data_path, args.batch_size, train_tf, test_tf,
                                                workers=0, seed=args.seed, bar=False)
    torch.manual_seed(args.seed)
    ours = build_model(args.model_name, 10)
    theirs = ref_vgg.VGG(args.model_name.upper(), 10)
    theirs.load_state_dict(ours.state_dict())
    regularizer = ref_fgr.FlowGradientReg()

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    opt_ours, opt_theirs = sgd(ours), sgd(theirs)
    step_ours = TrainStep(ours, opt_ours, lambda m, x_in, y, x: gradient_regularized(
        m, x_in, y, x, reg="fgr", lamb=args.fgr_lamb, rs_sigma=args.rs_sigma))
    record = {"args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "epochs": [], "first_epoch_steps": []}
    print(f"{args.model_name} on {args.data_name}, batch {args.batch_size}, lambda {args.fgr_lamb:g}, lr {args.lr:g}")
    step = 0
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        sums = {side: {"loss": 0.0, "ce": 0.0, "reg": 0.0, "correct": 0} for side in ("ours", "theirs")}
        seen = 0
        for x, y in train_loader:  # one batch, fed to both sides
            ours.train(), theirs.train()
            out = {}
            for side in ("ours", "theirs"):
                torch.manual_seed(args.seed * 1_000_003 + step)  # the same random-start noise on both sides
                if side == "ours":
                    loss, logits, terms = step_ours(x.clone(), y)
                else:
                    loss, logits, terms = reference_step(theirs, regularizer, opt_theirs, x.clone(), y,
                                                         args.fgr_lamb, args.rs_sigma)
                s = sums[side]
                s["loss"] += loss.item() * len(y)
                s["ce"] += terms.get("ce", loss).item() * len(y)
                s["reg"] += terms.get("reg", torch.zeros(())).item() * len(y)
                s["correct"] += (logits.argmax(1) == y).sum().item()
                out[side] = (terms.get("ce", loss).item(), terms.get("reg", torch.zeros(())).item())
            if epoch == 1:
                record["first_epoch_steps"].append({"step": step + 1, "ours_ce_r": out["ours"],
                                                    "theirs_ce_r": out["theirs"]})
            seen += len(y)
            step += 1
        diff = max((a - b).abs().max().item() for a, b in zip(ours.state_dict().values(), theirs.state_dict().values())
                   if a.is_floating_point())
        row = {"epoch": epoch, "max_weight_diff": diff, "seconds": time.time() - t0}
        for side, model in (("ours", ours), ("theirs", theirs)):
            s = sums[side]
            row[side] = {"loss": s["loss"] / seen, "ce": s["ce"] / seen, "reg": s["reg"] / seen,
                         "train_acc": s["correct"] / seen,
                         "test_acc": evaluate(model, test_loader, "cpu", bar=False)["clean"]}
        record["epochs"].append(row)
        print(f"epoch {epoch}: " + " | ".join(
            f"{side}: CE {row[side]['ce']:.3f} R {row[side]['reg']:.5f} train {100 * row[side]['train_acc']:.1f}% "
            f"test {100 * row[side]['test_acc']:.1f}%" for side in ("ours", "theirs"))
            + f" | max weight diff {diff:.2e} | {row['seconds']:.0f}s", flush=True)
    if args.json:
        write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
