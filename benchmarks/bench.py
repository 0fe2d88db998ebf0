"""Throughput of this repository's implementation against a reference-style baseline, same run, same shapes
(not part of the test suite).

    python benchmarks/bench.py                              # CPU, small batches
    python benchmarks/bench.py --device cuda --json bench.json   # GPU, the papers' batch sizes
    python benchmarks/bench.py --objectives                     # each GSeM objective's step, relative to mixed

Workloads (random CIFAR-shaped data); "ours" is what the scripts do by default on that device:
  fgr       one FGR training step, VGG-11, lambda 300 (CE + lambda R, double backward); ours: native grid_sample
            sampler (+ channels_last on CUDA), fp32 as main.py's default; baseline: the authors' gather sampler
  gsem      one gradient-corrected train_gsem.py step, GSeM-ResNet-18: PGD-10 x EOT-10 on the even half of the batch
            plus 10 EOT weight passes; ours: batched attack EOT, the correction inside the module, bf16 autocast
            (--use_amp, the default) where the device has native bf16, channels_last with it
  pgd       one PGD step with EOT 20 on GSeM-ResNet-18 (evaluate_gsem.py's PGD500 step), eval mode; ours: batched EOT
            (+ channels_last on CUDA), fp32 as evaluate_gsem.py's default
  apgd      one APGD-CE iteration with EOT 20 (pyautoattack's class on both sides; ours adds channels_last on CUDA)
  fgr-amp, pgd-amp, apgd-amp   the same with the scripts' bf16 flag (main.py --amp, evaluate_gsem.py --amp)
  data      16 training batches of main.py's reference augmentation (resize 36, crop 32, flip) on the device; ours:
            the dataset held there as uint8 and augmented in batches (utils.data.DeviceLoader, main.py's default on
            CUDA); baseline: torchvision DataLoader with PIL transforms in worker processes, then the copy
  stadv, adef   one call of the attack at its defaults ("ours") against one call of the authors' K=100 flow attack
            ("baseline") on the same images: real digits that a VGG-11 trained here on the built-in digits (as users
            run it: 3 epochs, tests/realdata.py) classifies correctly; the speed-up column is then the flow attack's
            cost over the attack's (>= 0.5: at most 2x), and the rows hold each side's success rate
Baselines are written as the reference code works: fp32, contiguous layout, EOT as a sequential loop, and the GSeM
correction by the reference's pair of tensor hooks registered after each forward (X-L-Liu/GSeM).
The two sides of a workload are timed in alternation and the median step is reported, so drift of the machine falls
on both alike. Each workload's floating-point operations are counted once on "ours" (every matmul and convolution,
forward, backward and double backward, by ``torch.utils.flop_counter``'s formulas; the baseline does the same
arithmetic), giving achieved FLOP/s and the fraction of the device's peak, measured in the same run at the
workload's dtype (the faster of a large matmul and a ResNet-sized convolution). What bounds a workload is read from
that fraction and from the time per operator: compute (>= 40 % of peak), launch/Python overhead (under 30 us per
operator on CPU, 15 us on CUDA), else memory traffic and the operators without FLOPs (normalisation, activations,
copies). Prints a markdown table naming the device (peak memory on CUDA; it includes the other side's resident
weights, tens of MiB) and optionally writes JSON with one entry per workload.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attacks import PGD, ADef, FlowAttack, StAdv  # noqa: E402
from attacks.autoattack_lib import apgd  # noqa: E402
from models import build_model  # noqa: E402
from models.gsem import GradSemiMaskModule  # noqa: E402
from utils.data import DeviceLoader, fgr_device_transforms, fgr_transforms  # noqa: E402
from utils.losses import cross_entropy, gradient_regularized  # noqa: E402
from utils.modes import eval_mode  # noqa: E402
from utils.precision import autocast, bf16_native  # noqa: E402
from utils.results import write_json  # noqa: E402
from utils.runtime import fast_path  # noqa: E402
from utils.training import TrainStep, half_adversarial  # noqa: E402

WORKLOADS = ["fgr", "gsem", "pgd", "apgd", "fgr-amp", "pgd-amp", "apgd-amp", "data", "stadv", "adef"]
CUDA_BATCH = {"fgr": 128, "gsem": 256, "pgd": 512, "apgd": 512, "data": 128, "stadv": 100, "adef": 100}
CPU_BATCH = {"data": 128, "stadv": 100, "adef": 100}  # 8 for the others
DATA_BATCHES = 16  # the data workload's unit: one pass over 16 batches
# the recipes' inner loop sizes; --smoke shrinks them all to 2 (a seconds-long run that exercises every code path)
RECIPE = {"attack_steps": 10, "att_eot": 10, "gra_eot": 10, "eval_eot": 20}


class ReferenceGSeM(GradSemiMaskModule):
    """The reference module's forward: plain autograd (round passes no gradient), keeping ``t0`` and ``t_rdim`` for
    the hooks of :func:`reference_hooks`."""

    def forward(self, t0):
        self.t0, self.t_rdim = t0, self.quantize(t0)
        return F.mish(self.bn(self.conv2(torch.cat([t0, self.conv1(self.t_rdim)], dim=1))))


def reference_model(name, device):
    """A model whose GSeM modules behave as the reference's: correction off, tensors kept for the hooks."""
    model = build_model(name, 10, gradient_correction=False).to(device)
    for m in model.modules():
        if isinstance(m, GradSemiMaskModule):
            m.__class__ = ReferenceGSeM
    return model


@contextlib.contextmanager
def reference_hooks(model):
    """The reference's correction, registered after a forward and removed after the backward: a hook on ``t_rdim``
    stores g_r, a hook on ``t0`` returns (incoming gradient + g_r)."""
    handles = []
    for m in model.modules():
        if isinstance(m, ReferenceGSeM):
            store = {}
            handles.append(m.t_rdim.register_hook(lambda g, s=store: s.__setitem__("g_r", g)))
            handles.append(m.t0.register_hook(lambda g, s=store: g + s["g_r"]))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def reference_pgd(model, x, y, eps, alpha, steps, eot):
    """AdaptivePGD as the reference (a torchattacks PGD with EOT): random start, per step ``eot`` sequential
    forward/backward passes of the batch-mean CE with the correction hooks, the sign of the summed gradient, then
    torchattacks' projection (``x + clamp(x_adv - x, -eps, eps)``, then [0, 1]); eval mode."""
    with eval_mode(model):
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            grad = torch.zeros_like(x)
            for _ in range(eot):
                xi = x_adv.clone().requires_grad_(True)
                loss = F.cross_entropy(model(xi), y)
                with reference_hooks(model):
                    grad += torch.autograd.grad(loss, xi)[0]
            x_adv = x_adv + alpha * grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def reference_gsem_step(model, opt, x, y, attack_steps=10, att_eot=10, gra_eot=10):
    """train_gsem.py's step as the reference: even half replaced by PGD-10, then gra_eot forward/backward passes
    with hooks, gradients averaged, one optimizer step."""
    x = x.clone()
    x[0::2] = reference_pgd(model, x[0::2], y[0::2], 8 / 255, 2 / 255, attack_steps, att_eot)
    opt.zero_grad(set_to_none=True)
    for _ in range(gra_eot):
        loss = F.cross_entropy(model(x), y)
        with reference_hooks(model):
            (loss / gra_eot).backward()
    opt.step()


LEVERS = {"compile": False}  # --compile: ours with torch.compile (not FGR: its double backward is refused)


def _setup(model_name, device, amp, double_backward=False):
    torch.manual_seed(0)
    model = fast_path(build_model(model_name, 10).to(device), device, amp=amp, double_backward=double_backward)
    return torch.compile(model) if LEVERS["compile"] and not double_backward else model


def _timed_pair(fns, steps, warmup, device):
    """Median seconds per call, peak CUDA memory (MiB) and the last call's result of each function in ``fns``,
    called in alternation, so that the machine's drift during the run falls on both sides alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times, peaks, last = [[] for _ in fns], [0.0 for _ in fns], [None for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            last[i] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[i] = max(peaks[i], torch.cuda.max_memory_allocated() / 2**20)
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), peaks[i] if device.type == "cuda" else None, last[i])
            for i, t in enumerate(times)]


class Counter(TorchDispatchMode):
    """Counts the operators dispatched and their FLOPs (``torch.utils.flop_counter``'s formulas: matmuls and
    convolutions, forward and every backward, including a double backward). ``FlopCounterMode`` itself cannot be
    used: its module tracker breaks ``torch.autograd.grad`` inside the step."""

    def __init__(self):
        super().__init__()
        self.ops, self.flops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def count(fn) -> dict:
    """FLOPs and operators of one call of ``fn``."""
    with Counter() as c:
        fn()
    return {"flops": c.flops, "ops": c.ops}


def _median_seconds(fn, device, reps: int) -> float:
    return _timed_pair([fn], reps, 1, device)[0][0]


def measure_peak(device, dtype, smoke: bool = False) -> dict:
    """The device's measured peak FLOP/s at ``dtype``: a large square matmul and a ResNet-sized 3x3 convolution
    (the faster of the two is the peak)."""
    n = 512 if smoke else (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    batch, ch, size = (4, 64, 16) if smoke else ((256, 256, 16) if device.type == "cuda" else (32, 256, 16))
    x = torch.randn(batch, ch, size, size, device=device, dtype=dtype)
    w = torch.randn(ch, ch, 3, 3, device=device, dtype=dtype)
    if device.type == "cuda" or dtype != torch.float32:
        x = x.to(memory_format=torch.channels_last)
    reps = 2 if smoke else 5
    with torch.no_grad():
        mm = 2 * n ** 3 / _median_seconds(lambda: a @ b, device, reps)
        conv = 2 * batch * ch * size * size * ch * 9 / _median_seconds(lambda: F.conv2d(x, w, padding=1), device, reps)
    return {"matmul_flops_per_s": mm, "conv_flops_per_s": conv, "peak_flops_per_s": max(mm, conv),
            "matmul_n": n, "conv_shape": [batch, ch, size, size]}


def bound(fraction: float, flops: int, seconds: float, ops: int, device) -> str:
    """What limits a workload (see the module docstring)."""
    if flops == 0:
        return "data movement and Python (no FLOPs)"
    per_op = 1e6 * seconds / max(ops, 1)
    if fraction >= 0.4:
        return f"compute ({per_op:.0f} us/op)"
    if per_op < (15 if device.type == "cuda" else 30):
        return f"launch/Python overhead ({per_op:.0f} us/op)"
    return f"memory and FLOP-free operators ({per_op:.0f} us/op)"


def _dtype_of(workload: str, device) -> torch.dtype:
    amp = workload.endswith("-amp") or workload == "gsem"
    return torch.bfloat16 if amp and bf16_native(device) else torch.float32


class _FakeCIFAR(torch.utils.data.Dataset):
    """Random 32 x 32 RGB images served as torchvision's CIFAR10 serves them (PIL image, then the transform)."""

    def __init__(self, n, transform):
        self.data = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i].numpy())), i % 10


def _epoch(loader, device):
    """One pass over ``loader`` per call, every batch brought to ``device`` and used (a worker pool stays alive)."""
    def run():
        total = torch.zeros((), device=device)
        for x, y in loader:
            total += x.to(device, non_blocking=True).sum() + y.to(device, non_blocking=True).sum()
        return total.item()
    return run


@functools.lru_cache(maxsize=None)
def _digits(device_type: str, n: int):
    """A VGG-11 trained on real digits (3 epochs, as the README's quick start) and ``n`` test digits it classifies
    correctly (the deformation workloads)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from realdata import digits_tensors, train_digits_classifier

    model = train_digits_classifier(epochs=3, model=build_model("vgg11", 10)).to(device_type)
    x, y = (t.to(device_type) for t in digits_tensors(False))
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:n], y[ok][:n]


def make_baseline(workload, device, x, y, k=RECIPE, model_name="GSeMResNet18"):
    """A zero-argument function running one unit of ``workload`` as the reference code would (the GSeM workloads on
    ``model_name``)."""
    torch.manual_seed(0)
    base = workload.removesuffix("-amp")
    if base in ("stadv", "adef"):  # the authors' attack, K = 100, on the same model and images
        model, xd, yd = _digits(device.type, len(x))
        attack = FlowAttack(model, eps=0.01, steps=2 if k is not RECIPE else 100)
        return lambda: attack(xd, yd)
    if base == "data":
        workers = min(4, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(_FakeCIFAR(DATA_BATCHES * len(x), fgr_transforms("reference")[0]), len(x),
                                             shuffle=True, num_workers=workers, persistent_workers=True,
                                             pin_memory=device.type == "cuda")
        return _epoch(loader, device)
    if base == "fgr":
        model = build_model("vgg11", 10).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = TrainStep(model, opt, functools.partial(gradient_regularized, lamb=300.0, sampler="gather"),
                         device=device)
        return lambda: step(x, y)
    model = reference_model(model_name, device)
    if base == "gsem":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        model.train()
        return lambda: reference_gsem_step(model, opt, x, y, k["attack_steps"], k["att_eot"], k["gra_eot"])
    if base == "pgd":
        return lambda: reference_pgd(model.eval(), x, y, 8 / 255, 2 / 255, 1, k["eval_eot"])
    # the reference's AdaptiveAPGD adds J^T g_r explicitly, the same gradient as the correction in the module
    model = build_model(model_name, 10).to(device).eval()
    attack = apgd(model, steps=1, restarts=1, eot_iter=k["eval_eot"])
    return lambda: attack(x, y)


def make_ours(workload, device, x, y, k=RECIPE, model_name="GSeMResNet18"):
    """A zero-argument function running one unit of ``workload`` with this repository's default fast path (the GSeM
    workloads on ``model_name``)."""
    base, amp = workload.removesuffix("-amp"), workload.endswith("-amp") or workload == "gsem"
    if base in ("stadv", "adef"):
        model, xd, yd = _digits(device.type, len(x))
        small = k is not RECIPE  # --smoke: a couple of iterations
        attack = (StAdv(model, steps=2, search_steps=1) if small else StAdv(model)) if base == "stadv" else \
            (ADef(model, steps=2) if small else ADef(model))
        return lambda: attack(xd, yd)
    if base == "data":
        static, _, aug = fgr_device_transforms("reference")
        return _epoch(DeviceLoader(_FakeCIFAR(DATA_BATCHES * len(x), static), len(x), device, aug, bar=False), device)
    if base == "fgr":
        model = _setup("vgg11", device, amp, double_backward=True).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = TrainStep(model, opt, functools.partial(gradient_regularized, lamb=300.0, sampler="native"),
                         amp=amp, device=device)
    elif base == "gsem":
        model = _setup(model_name, device, amp).train()
        attack = PGD(model, 8 / 255, 2 / 255, k["attack_steps"], eot_iter=k["att_eot"], batched_eot=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = TrainStep(model, opt, cross_entropy, make_input=half_adversarial(attack), eot_iter=k["gra_eot"],
                         amp=amp, device=device)
    else:
        model = _setup(model_name, device, amp).eval()
        attack = (PGD(model, 8 / 255, 2 / 255, 1, eot_iter=k["eval_eot"], batched_eot=True) if base == "pgd"
                  else apgd(model, steps=1, restarts=1, eot_iter=k["eval_eot"]))

        def run():
            with autocast(device, amp):  # evaluate_gsem.py --amp: the attacks under autocast
                return attack(x, y)
        return run
    return lambda: step(x, y)


def measure(w, device, b, k, steps, warmup, peaks, *, smoke=False, model_name="GSeMResNet18") -> dict:
    """One workload at batch ``b`` (inner loops ``k``): both sides timed in alternation (median of ``steps``), images
    per second, peak memory (CUDA), FLOPs of "ours", FLOP/s and fraction of ``peaks[dtype]`` (measured once per dtype
    into ``peaks``), what bounds it; the deformation workloads also each side's success rate."""
    per_unit = b * (DATA_BATCHES if w == "data" else 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (b,), generator=gen).to(device)
    row = {"batch_size": b, "inner_loops": k}
    fns = []
    for make in (make_baseline, make_ours):
        torch.manual_seed(0)
        fns.append(make(w, device, x, y, k, model_name=model_name))
    for side, (sec, mem, out) in zip(("baseline", "ours"), _timed_pair(fns, steps, warmup, device)):
        row[side] = {"ms_per_step": 1000 * sec, "images_per_s": per_unit / sec, "peak_mem_mib": mem}
        if w in ("stadv", "adef"):  # the digits are all classified correctly: the fraction fooled
            model, _, yd = _digits(device.type, b)
            with torch.no_grad():
                row[side]["success_rate"] = (model(out).argmax(1) != yd).float().mean().item()
    row["speedup"] = row["ours"]["images_per_s"] / row["baseline"]["images_per_s"]
    dtype = _dtype_of(w, device)
    if dtype not in peaks:
        peaks[dtype] = measure_peak(device, dtype, smoke=smoke)
    work = count(fns[1])
    for side in ("ours", "baseline"):
        row[side]["flops_per_s"] = work["flops"] / (row[side]["ms_per_step"] / 1000)
        row[side]["fraction_of_peak"] = row[side]["flops_per_s"] / peaks[dtype]["peak_flops_per_s"]
    row.update(flops_per_step=work["flops"], ops_per_step=work["ops"], dtype=str(dtype).removeprefix("torch."),
               bound=bound(row["ours"]["fraction_of_peak"], work["flops"], row["ours"]["ms_per_step"] / 1000,
                           work["ops"], device))
    return row


def table(rows: dict, peaks: dict, device) -> list[str]:
    """The markdown table of :func:`measure` rows (peak memory on CUDA), the measured peaks and the deformation
    workloads' success rates."""
    mem_cols = " ours MiB | baseline MiB |" if device.type == "cuda" else ""
    lines = ["| workload | batch | ours img/s | baseline img/s | speed-up | GFLOP/step | dtype | ours GFLOP/s | "
             "of peak | baseline of peak | bound by |" + mem_cols,
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if mem_cols else "")]
    for w, r in rows.items():
        mem = f" {r['ours']['peak_mem_mib']:.0f} | {r['baseline']['peak_mem_mib']:.0f} |" if mem_cols else ""
        lines.append(f"| {w} | {r['batch_size']} | {r['ours']['images_per_s']:.2f} | "
                     f"{r['baseline']['images_per_s']:.2f} | {r['speedup']:.2f}x | {r['flops_per_step'] / 1e9:.2f} | "
                     f"{r['dtype']} | {r['ours']['flops_per_s'] / 1e9:.1f} | "
                     f"{100 * r['ours']['fraction_of_peak']:.1f}% | {100 * r['baseline']['fraction_of_peak']:.1f}% | "
                     f"{r['bound']} |{mem}")
    for dtype, pk in peaks.items():
        lines.append(f"peak {str(dtype).removeprefix('torch.')}: matmul {pk['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
                     f"(n={pk['matmul_n']}), conv {pk['conv_flops_per_s'] / 1e9:.1f} GFLOP/s ({pk['conv_shape']}, 3x3)")
    for w in (w for w in rows if "success_rate" in rows[w]["ours"]):
        lines.append(f"{w}: fools {100 * rows[w]['ours']['success_rate']:.1f}% of the {rows[w]['batch_size']} digits, "
                     f"the K=100 flow attack (eps 0.01) {100 * rows[w]['baseline']['success_rate']:.1f}%")
    return lines


OBJECTIVES = ["mixed", "pgd_at", "trades", "mart", "mart+awp"]


def objective_costs(device, batch_size: int, steps: int, smoke: bool) -> dict:
    """``--objectives``: seconds per training step of each GSeM objective as train_gsem*.py run it
    (``train_gsem.objective`` inside ``TrainStep`` with the recipe's EOT passes, AWP for ``+awp``; GSeM-ResNet-18),
    median of ``steps`` after one warm-up, and the cost relative to the mixed objective."""
    import train_gsem
    from utils.awp import AWP

    inner = ["--attack_steps", "1", "--att_eot_num", "1", "--gra_eot_num", "1"] if smoke else []
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    times = {}
    for name in OBJECTIVES:
        cfg = train_gsem.get_args(["--loss", name.split("+")[0], *inner])
        torch.manual_seed(0)
        model = build_model("GSeMResNet18", 10).to(device).train()
        awp = AWP(model, build_model("GSeMResNet18", 10).to(device), eot_iter=cfg.gra_eot_num) if "awp" in name \
            else None
        loss, make_input = train_gsem.objective(cfg, model)
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), loss,
                         make_input=make_input, eot_iter=cfg.gra_eot_num, awp=awp, amp=cfg.use_amp, device=device)
        times[name] = _median_seconds(lambda step=step: step(x, y), device, 1 if smoke else steps)
    print(f"device: {device}, GSeM-ResNet-18, batch {batch_size}, torch {torch.__version__}\n")
    print("| objective | s / step | relative to mixed |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / times['mixed']:.2f}x |")
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--workloads", type=str, nargs="+", default=WORKLOADS, choices=WORKLOADS)
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per step (default: 8 on CPU, 128 for data; the papers' sizes on CUDA)")
    p.add_argument("--steps", type=int, default=3, help="timed repetitions (median reported), sides alternating")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--objectives", action="store_true",
                   help="instead: the cost of one training step of each GSeM objective, relative to mixed")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile (a lever under test)")
    p.add_argument("--smoke", action="store_true",
                   help="batch 2, one step, every inner loop (attack steps, EOT passes) of size 2: checks it runs")
    args = p.parse_args(argv)
    k = {key: 2 for key in RECIPE} if args.smoke else RECIPE
    LEVERS["compile"] = args.compile
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.objectives:
        return objective_costs(torch.device(args.device), args.batch_size or 8, args.steps, args.smoke)
    if args.smoke:
        args.batch_size, args.steps, args.warmup = 2, 1, 0
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows, peaks = {}, {}
    for w in args.workloads:
        b = args.batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH).get(w.removesuffix("-amp"), 8)
        rows[w] = measure(w, device, b, k, args.steps, args.warmup, peaks, smoke=args.smoke)
    bf16 = "native bf16" if bf16_native(torch.device("cpu")) else "no native bf16"
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {bf16})"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"\ndevice: {dev}, torch {torch.__version__}\n\n" + "\n".join(table(rows, peaks, device)))
    if args.json:
        write_json(args.json, {"device": dev, "torch": torch.__version__, "args": vars(args), "workloads": rows,
                               "peak": {str(d).removeprefix("torch."): v for d, v in peaks.items()}})
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
