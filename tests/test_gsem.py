"""GSeM module: forward as the reference, corrected gradient = g_d + g_r, EOT forms, PGD invariants."""
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gsem

from attacks import PGD
from models import GradSemiMaskModule, build_model, set_gradient_correction
from utils.eot import eot_backward, eot_input_grad


def explicit_two_path_grads(module, t0, upstream):
    """g_d (through the concat) and g_r (through conv1, w.r.t. the quantised tensor), with beta = 0 so the forward is
    deterministic; computed on an explicit graph without the module's forward."""
    t0 = t0.clone().requires_grad_(True)
    r = (torch.round(module.alpha * t0.detach()) / module.alpha).requires_grad_(True)
    out = F.mish(module.bn(module.conv2(torch.cat([t0, module.conv1(r)], 1))))
    g_d, g_r = torch.autograd.grad((out * upstream).sum(), [t0, r])
    return g_d, g_r


@pytest.mark.parametrize("train_mode", [True, False])
def test_corrected_gradient_is_gd_plus_gr_and_uncorrected_is_gd(train_mode):
    torch.manual_seed(0)
    module = GradSemiMaskModule(4, alpha=6, beta=0).double().train(train_mode)
    t0 = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    upstream = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    g_d, g_r = explicit_two_path_grads(module, t0, upstream)
    assert g_r.abs().sum() > 0
    for correction, expected in ((True, g_d + g_r), (False, g_d)):
        module.gradient_correction = correction
        x = t0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((module(x) * upstream).sum(), x)
        assert torch.allclose(g, expected, atol=1e-12), correction


def test_forward_quantises_and_noise_is_always_on():
    torch.manual_seed(0)
    module = GradSemiMaskModule(4, alpha=6, beta=4).eval()
    t0 = torch.randn(2, 4, 8, 8)
    q = module.quantize(t0)
    steps = (q - torch.round(6 * t0) / 6) * 6
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 4 + 1e-4
    assert set(steps.round().unique().tolist()) == set(range(-4, 5))
    assert not torch.equal(module(t0), module(t0))  # eval mode is stochastic too
    det = GradSemiMaskModule(4, alpha=6, beta=0).eval()
    assert torch.equal(det.quantize(t0), torch.round(6 * t0) / 6)
    assert torch.equal(det(t0), det(t0))


def test_alpha_beta_not_in_state_dict_and_switch_reaches_every_module():
    model = build_model("GSeMResNet18", 10, alpha=3, beta=2)
    assert model.gsem_module.alpha == 3 and model.gsem_module.beta == 2
    assert not [k for k in model.state_dict() if "alpha" in k or "beta" in k or "t0" in k]
    assert set_gradient_correction(model, False) == [True]
    assert model.gsem_module.gradient_correction is False


def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def test_batched_and_looped_eot_equal_without_noise():
    model = tiny_gsem(size=16, classes=3, beta=0)
    x, y = torch.rand(5, 3, 16, 16), torch.randint(0, 3, (5,))
    g1, l1 = eot_input_grad(model, x, y, ce, eot_iter=4, batched=True)
    g2, l2 = eot_input_grad(model, x, y, ce, eot_iter=4, batched=False)
    assert torch.allclose(g1, g2, atol=1e-6) and torch.allclose(l1, l2, atol=1e-6)
    for cap in (1, 10, 15):  # 5 images: 1, 2 and 2 (3 at most, split evenly: 4 = 2 + 2) copies per forward
        g3, l3 = eot_input_grad(model, x, y, ce, eot_iter=4, batched=True, max_batch=cap)
        assert torch.allclose(g1, g3, atol=1e-6) and torch.allclose(l1, l3, atol=1e-6)
    g4, _ = eot_input_grad(model, x, y, ce, eot_iter=3, batched=True, max_batch=10)  # 3 = 2 + 1 copies
    assert torch.allclose(g1, g4, atol=1e-6)


def test_batched_and_looped_eot_agree_in_expectation():
    model = tiny_gsem(size=16, classes=3, beta=4)
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 3, (4,))
    big = 400
    g_b, _ = eot_input_grad(model, x, y, ce, eot_iter=big, batched=True)
    g_l, _ = eot_input_grad(model, x, y, ce, eot_iter=big, batched=False)
    # per-element spread of single draws, to turn the difference of the two means into z-scores
    draws = torch.stack([eot_input_grad(model, x, y, ce, eot_iter=1)[0] for _ in range(40)])
    se = draws.std(0) * (2 / big) ** 0.5 + 1e-12
    z = ((g_b - g_l) / se).flatten()
    assert z.abs().mean() < 1.2  # ~0.8 for two unbiased estimates of the same mean
    assert (g_b - g_l).norm() < 0.2 * g_b.norm()
    single = (draws[0] - draws[1]).norm() / draws[0].norm()
    assert single > 0.2  # one draw is far from another: the test above can fail


def test_eot_backward_averages_weight_gradients():
    model = tiny_gsem(size=16, classes=3, beta=0).train()
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 3, (4,))
    model.zero_grad()
    loss, _, _ = eot_backward(lambda: (F.cross_entropy(model(x), y), model(x), {}), eot_iter=3, model=model)
    g3 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for a, p in zip(g3, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_pgd_invariants_and_mode_restored():
    model = tiny_gsem(size=16, classes=3, beta=4).train()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 3, (6,))
    x_adv = PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, eot_iter=2)(x, y)
    assert model.training
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(PGD(model, eps=0.0, steps=2)(x, y), x)


def test_corrected_pgd_at_least_as_strong_as_uncorrected():
    torch.manual_seed(0)
    model = tiny_gsem(size=16, classes=3, beta=0)
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 3, (32,))
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    losses = {}
    for correction in (True, False):
        set_gradient_correction(model, correction)
        torch.manual_seed(1)
        x_adv = PGD(model, eps=4 / 255, alpha=1 / 255, steps=10)(x, y)
        with torch.no_grad():
            losses[correction] = F.cross_entropy(model(x_adv), y).item()
    assert losses[True] >= losses[False] - 1e-4
