"""The baselines as their official code runs them, on a tiny model with BatchNorm, against the official semantics
written out here step by step (locuslab/robust_overfitting for PGD-AT, yaodongyu/TRADES for TRADES, csdongxian/AWP
for TRADES-AWP), and the authors' PGD and gather sampler bit for bit."""
import functools
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_classifier, tiny_gsem

import train_gsem_awp
from attacks import PGD
from attacks.trades import TradesPGD
from models import build_model
from utils.awp import AWP
from utils.flow import gather_grid_sample, identity_grid
from utils.losses import OBJECTIVES, awp_adversarial_ce, awp_trades, cross_entropy, mart, mart_loss
from utils.training import TrainStep

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench  # noqa: E402

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def batch(seed=0, n=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def bn_stats(model):
    return torch.cat([b.flatten().float() for n, b in model.named_buffers() if "running" in n])


def official_pgd_at_step(model, opt, x, y):
    """One step of robust_overfitting's PGD-AT (restarts 1, L-inf), the model in train mode throughout: a uniform
    start in the eps-ball kept inside [0, 1], sign steps on delta clipped to the ball and to [0, 1], then one
    forward of the result (the restart selection), then CE on the clamped adversarial batch and the SGD step."""
    model.train()
    delta = torch.zeros_like(x).uniform_(-EPS, EPS)
    delta = torch.max(torch.min(delta, 1 - x), -x).requires_grad_(True)
    for _ in range(STEPS):
        (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        d = (delta.detach() + ALPHA * g.sign()).clamp(-EPS, EPS)
        delta = torch.max(torch.min(d, 1 - x), -x).requires_grad_(True)
    with torch.no_grad():
        model(x + delta)  # the restart-selection forward: one more BatchNorm update
    x_adv = (x + delta.detach()).clamp(0, 1)
    opt.zero_grad()
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()
    return x_adv


def pgd_at_models(name):
    """Two identical models: the tiny CNN, or GSeM-ResNet-18 (noise on, corrected gradient: PGD-AT's official code is
    model-agnostic, so the official step runs on the same class)."""
    if name == "tiny":
        ours, official = tiny_classifier(), tiny_classifier()
        x, y = batch()
    else:
        torch.manual_seed(0)
        ours, official = build_model(name, 10), build_model(name, 10)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    official.load_state_dict(ours.state_dict())
    return ours, official, x, y


@pytest.mark.parametrize("name", ["tiny", "GSeMResNet18"])
def test_pgd_at_step_is_bit_identical_to_the_official_code(name):
    ours, official, x, y = pgd_at_models(name)
    opt_o, opt_r = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, official))
    assert OBJECTIVES["pgd_at"].attack_train_mode
    attack = PGD(ours, EPS, ALPHA, STEPS, train_mode=True)
    seen = []
    step = TrainStep(ours, opt_o, cross_entropy, make_input=lambda a, b: seen.append(attack(a, b)) or seen[-1])
    ours.train()
    torch.manual_seed(1)
    step(x, y)
    torch.manual_seed(1)
    x_ref = official_pgd_at_step(official, opt_r, x, y)
    assert torch.equal(seen[0], x_ref)  # the same adversarial batch, bit for bit
    assert torch.equal(bn_stats(ours), bn_stats(official))  # the same BatchNorm updates (steps + 2)
    for (n, p), q in zip(ours.named_parameters(), official.parameters()):
        assert torch.equal(p, q), n
    # the eval-mode attack (every other objective) is another batch and leaves the statistics alone
    ours.train()
    before = bn_stats(ours)
    torch.manual_seed(1)
    x_eval = PGD(ours, EPS, ALPHA, STEPS)(x, y)
    assert torch.equal(bn_stats(ours), before) and (x_eval - seen[0]).abs().max() > 1 / 255


@pytest.mark.parametrize("correction", ["all", "attack", "update", "none"])
def test_pgd_at_attacks_in_train_mode_under_every_gradient_correction(correction):
    """The ablation flag must not change the baseline's recipe: PGD-AT's attack updates BatchNorm statistics in
    every one of its forwards (steps + the selection forward) whether or not the correction is on."""
    from train_gsem import objective

    model = build_model("GSeMResNet18", 10, beta=0).train()
    args = train_gsem_awp.get_args(["--loss", "pgd_at", "--gradient_correction", correction, "--attack_steps", "3",
                                    "--att_eot_num", "1"])
    _, make_input = objective(args, model)
    bn = model.bn1
    before = int(bn.num_batches_tracked)
    make_input(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert int(bn.num_batches_tracked) - before == 3 + 1
    assert model.training


def official_gsem_awp_step(model, proxy, opt, proxy_opt, x_adv, x, y, gamma, eot):
    """One step of X-L-Liu/GSeM ``train_gsem_awp.py`` (fp32) as written there, on models with the reference's
    hooks: ``AdvWeightPerturb.calc_awp`` (proxy -CE, ``eot`` backward passes, grads divided by ``eot``, SGD step,
    ``diff_in_weights``: ||w|| / (||d|| + 1e-20) * d), ``perturb`` (``add_into_weights``, +gamma), the MART loss with
    ``eot`` passes (hooks registered after both forwards), grads divided by ``eot``, the SGD step, ``restore``
    (-gamma)."""
    def add_into_weights(diff, coeff):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in diff:
                    param.add_(coeff * diff[name])

    proxy.load_state_dict(model.state_dict())
    proxy.train()
    proxy_opt.zero_grad()
    for _ in range(eot):
        loss = -F.cross_entropy(proxy(x_adv), y)
        with bench.reference_hooks(proxy):
            loss.backward()
    if eot > 1:
        for p in proxy.parameters():
            p.grad.data /= eot
    proxy_opt.step()
    diff = {}
    for (k, w), (_, w2) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if len(w.size()) > 1 and "weight" in k:
            d = w2 - w
            diff[k] = w.norm() / (d.norm() + 1e-20) * d
    add_into_weights(diff, 1.0 * gamma)
    opt.zero_grad()
    for _ in range(eot):
        logits_adv = model(x_adv)
        loss = mart_loss(logits_adv, model(x), y, 5.0)
        with bench.reference_hooks(model):
            loss.backward()
    for p in model.parameters():
        p.grad.data /= eot
    opt.step()
    add_into_weights(diff, -1.0 * gamma)


def test_gsem_awp_step_is_bit_identical_to_the_authors():
    """GSeM-ResNet-18 (noise on), batch 8, EOT 2: our MART + AWP step (``train_gsem_awp.py``'s TrainStep) against the
    authors' step on their hooked model, weights and BatchNorm statistics bit for bit."""
    torch.manual_seed(0)
    ours, proxy = build_model("GSeMResNet18", 10).train(), build_model("GSeMResNet18", 10)
    ref, ref_proxy = bench.reference_model("GSeMResNet18", "cpu").train(), bench.reference_model("GSeMResNet18", "cpu")
    ref.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    x_adv = (x + (torch.rand(x.shape, generator=gen) - 0.5) * 16 / 255).clamp(0, 1)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=3.5e-3) for m in (ours, ref))
    awp = AWP(ours, proxy, gamma=0.01, proxy_lr=0.01, eot_iter=2, loss_fn=awp_adversarial_ce)
    step = TrainStep(ours, opt, functools.partial(mart, mart_beta=5.0), make_input=lambda a, b: x_adv, eot_iter=2,
                     awp=awp)
    torch.manual_seed(5)
    step(x, y)
    torch.manual_seed(5)
    official_gsem_awp_step(ref, ref_proxy, ref_opt, torch.optim.SGD(ref_proxy.parameters(), lr=0.01), x_adv, x, y,
                           0.01, 2)
    for (k, v), w in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, w), k


def official_trades_step(model, opt, x, y, beta=6.0):
    """One step of yaodongyu/TRADES: the KL attack in eval mode from x + 0.001 N(0, 1) (not clamped), then in train
    mode CE(f(x)) + beta / B * KL_sum(f(x) || f(x_adv)) with the forwards clean, adversarial, clean."""
    model.eval()
    x_adv = x + 0.001 * torch.randn(x.shape)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
        (g,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0, 1)
    model.train()
    opt.zero_grad()
    loss_natural = F.cross_entropy(model(x), y)
    robust = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum") / x.shape[0]
    (loss_natural + beta * robust).backward()
    opt.step()
    return x_adv


def test_trades_attack_start_loss_and_batchnorm_updates_are_the_official_ones():
    """``--loss trades`` as train_gsem.py builds it (its objective, TRADES-KL from the attack registry at the
    script's defaults with EOT 1) takes the official TRADES step."""
    from train_gsem import objective

    x, y = batch(2)
    ours, official = tiny_classifier(), tiny_classifier()
    official.load_state_dict(ours.state_dict())
    opt_o, opt_r = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, official))
    loss, make_input = objective(train_gsem_awp.get_args(["--loss", "trades", "--att_eot_num", "1"]), ours)
    assert isinstance(make_input, TradesPGD)
    assert (make_input.eps, make_input.alpha, make_input.steps, make_input.eot_iter) == (EPS, ALPHA, STEPS, 1)
    seen = []
    step = TrainStep(ours, opt_o, loss, make_input=lambda a, b: seen.append(make_input(a, b)) or seen[-1])
    ours.train()
    torch.manual_seed(3)
    step(x, y)
    torch.manual_seed(3)
    x_ref = official_trades_step(official, opt_r, x, y)
    assert (seen[0] - x_ref).abs().max() < 1e-6
    assert (bn_stats(ours) - bn_stats(official)).abs().max() < 1e-6  # three BatchNorm updates, in the same order
    for (n, p), q in zip(ours.named_parameters(), official.parameters()):
        assert (p - q).abs().max() < 1e-6, n


def official_trades_awp_diff(model, proxy, x_adv, x, y, lr, beta=6.0):
    """csdongxian/AWP's TradesAWP: the proxy (a copy, train mode) takes one SGD step on -(CE(x) + beta KL) with the
    forwards clean, adversarial, clean; the direction is (w_proxy - w) * ||w|| / ||w_proxy - w|| per weight."""
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    loss = F.cross_entropy(proxy(x), y) + beta * F.kl_div(F.log_softmax(proxy(x_adv), 1), F.softmax(proxy(x), 1),
                                                          reduction="batchmean")
    grads = torch.autograd.grad(-loss, list(proxy.parameters()))
    with torch.no_grad():
        for p, g in zip(proxy.parameters(), grads):
            p -= lr * g
    sd, psd = model.state_dict(), proxy.state_dict()
    return {k: (psd[k] - w) * w.norm() / ((psd[k] - w).norm() + 1e-20) for k, w in sd.items()
            if w.dim() > 1 and "weight" in k}


def test_trades_awp_proxy_objective_gamma_and_warmup_are_the_official_ones():
    obj = OBJECTIVES["trades"]
    assert (obj.awp_loss, obj.awp_gamma, obj.awp_warmup) == (awp_trades, 0.005, 10)
    x, y = batch(4)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    model = tiny_classifier()
    awp = AWP(model, tiny_classifier(), gamma=0.005, proxy_lr=0.1, eot_iter=1,
              loss_fn=functools.partial(awp_trades, trades_beta=6.0), warmup=10)
    ours = awp.calc(x_adv, y, x)
    ref = official_trades_awp_diff(model, tiny_classifier(), x_adv, x, y, lr=0.1)
    assert ours.keys() == ref.keys() and all((ours[k] - ref[k]).abs().max() < 1e-6 for k in ref)
    assert [awp.active(e) for e in (1, 9, 10, 11)] == [False, False, True, True]
    # the script: TRADES with AWP takes them unless --awp_gamma / --awp_warmup say otherwise
    args = train_gsem_awp.get_args(["--loss", "trades", "--classifier_name", "resnet18"])
    from train_gsem import build_classifier
    from train_gsem_awp import weight_perturbation

    made = weight_perturbation(args, build_classifier(args, "cpu"), "cpu")
    assert (made.gamma, made.warmup, made.loss_fn.func) == (0.005, 10, awp_trades)


def test_awp_warmup_leaves_the_weights_alone_before_its_epoch():
    x, y = batch(5)
    model = tiny_classifier()
    seen = []

    def loss_fn(m, x_in, y, x):
        seen.append(m[0].weight.detach().clone())
        return cross_entropy(m, x_in, y, x)

    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn,
                     awp=AWP(model, tiny_classifier(), eot_iter=1, warmup=3))
    w0 = model[0].weight.detach().clone()
    for epoch in (2, 3):
        step.epoch = epoch
        step(x, y)
    assert torch.equal(seen[0], w0) and not torch.equal(seen[1], w0)  # perturbed from epoch 3 on


def test_gradient_correction_governs_the_awp_proxy():
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    diffs = {}
    for correct in (True, False):
        model = tiny_gsem(beta=0, classes=3, size=16)
        awp = AWP(model, tiny_gsem(beta=0, classes=3, size=16), gamma=0.01, proxy_lr=0.1, eot_iter=1,
                  correct=correct)
        diffs[correct] = awp.calc(x, y, x)["0.weight"]  # the stem conv, before the GSeM module
    assert (diffs[True] - diffs[False]).abs().max() > 1e-4  # the masked gradient moves the stem differently
    args = train_gsem_awp.get_args(["--gradient_correction", "none", "--classifier_name", "resnet18"])
    from train_gsem import build_classifier
    from train_gsem_awp import weight_perturbation

    assert weight_perturbation(args, build_classifier(args, "cpu"), "cpu").correct is False


def test_gsem_pgd_is_bit_identical_to_the_authors_adaptive_pgd():
    """The authors' AdaptivePGD (a torchattacks PGD with EOT and the correction hooks; ``bench.reference_pgd``)
    against ours with sequential EOT: same noise draws, the same iterates bit for bit."""
    torch.manual_seed(0)
    ours = build_model("GSeMResNet18", 10).eval()
    ref = bench.reference_model("GSeMResNet18", "cpu").eval()
    ref.load_state_dict(ours.state_dict())
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(7)
    a = PGD(ours, EPS, ALPHA, steps=3, eot_iter=2, batched_eot=False)(x, y)
    torch.manual_seed(7)
    b = bench.reference_pgd(ref, x, y, EPS, ALPHA, 3, 2)
    assert torch.equal(a, b)


def authors_bilinear(x, grid):
    """The FGR authors' differentiable sampler, in their order of operations: row and column coordinates, integer
    corners clamped to the image, weights not clamped, interpolation along the rows first, then the columns."""
    b, c, h, w = x.shape
    r = ((h - 1) * (grid[..., 1] + 1) / 2).reshape(b, -1)
    s = ((w - 1) * (grid[..., 0] + 1) / 2).reshape(b, -1)
    r1 = r.floor().clamp(0, h - 1).long()
    r2 = (r1 + 1).clamp(0, h - 1)
    s1 = s.floor().clamp(0, w - 1).long()
    s2 = (s1 + 1).clamp(0, w - 1)
    flat = x.reshape(b, c, -1)

    def at(rr, ss):
        return torch.stack([flat[i][:, rr[i] * w + ss[i]] for i in range(b)])

    dr, ds = (r - r1).unsqueeze(1), (s - s1).unsqueeze(1)
    col1 = at(r1, s1) * (1 - dr) + at(r2, s1) * dr
    col2 = at(r1, s2) * (1 - dr) + at(r2, s2) * dr
    return (col1 * (1 - ds) + col2 * ds).reshape(x.shape)


def test_gather_sampler_is_bit_identical_to_the_authors_and_so_is_the_penalty_gradient():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 12, 12)
    flow = (0.05 * torch.randn(3, 12, 12, 2)).requires_grad_(True)
    ours = gather_grid_sample(x, identity_grid(x) + flow)
    ref = authors_bilinear(x, identity_grid(x) + flow)
    assert torch.equal(ours, ref)
    model = tiny_classifier(classes=3)
    y = torch.tensor([0, 1, 2])
    grads = []
    for sampler in (gather_grid_sample, authors_bilinear):
        n = torch.zeros(3, 12, 12, 2, requires_grad=True)
        ce = F.cross_entropy(model(sampler(x, identity_grid(x) + n)), y)
        (g,) = torch.autograd.grad(ce, n, create_graph=True)
        grads.append(torch.autograd.grad(g.pow(2).sum(dim=(1, 2, 3)).mean(), model[0].weight)[0])
    assert torch.equal(grads[0], grads[1])
