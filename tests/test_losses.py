"""MART against its formula on a hand-made batch, the training step with the half-adversarial input policy and
EOT passes, AWP perturb/restore inside the step."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny_gsem

from models import build_model
from utils.awp import AWP
from utils.losses import cross_entropy, mart, mart_loss
from utils.training import TrainStep, half_adversarial


def test_mart_equals_formula_on_hand_made_batch():
    logits_adv = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.2, 3.0]])
    logits_nat = torch.tensor([[3.0, 0.0, -1.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 1])
    total_adv, total_rob = 0.0, 0.0
    for i in range(2):
        pa = [math.exp(v) for v in logits_adv[i].tolist()]
        pa = [v / sum(pa) for v in pa]
        pn = [math.exp(v) for v in logits_nat[i].tolist()]
        pn = [v / sum(pn) for v in pn]
        yi = y[i].item()
        other = max((k for k in range(3) if k != yi), key=lambda k: pa[k])
        total_adv += -math.log(pa[yi]) - math.log(1.0001 - pa[other] + 1e-12)
        kl = sum(pn[k] * (math.log(pn[k]) - math.log(pa[k] + 1e-12)) for k in range(3))
        total_rob += kl * (1.0000001 - pn[yi])
    expected = total_adv / 2 + 5.0 * total_rob / 2
    assert mart_loss(logits_adv, logits_nat, y, beta=5.0).item() == pytest.approx(expected, rel=1e-5)


class Marker:
    """A fake attack that marks the images it saw (adds 1) so the test can see which half was attacked."""

    def __call__(self, x, y):
        return x + 1


def test_half_adversarial_step_attacks_even_half_and_averages_eot_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    x, y = torch.zeros(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # keeps the weights: .grad is the step's gradient
    step = TrainStep(model, opt, cross_entropy, make_input=half_adversarial(Marker()), eot_iter=3)
    loss, logits, terms = step(x, y)
    assert len(seen) == 3 and not loss.requires_grad and terms == {}
    assert torch.equal(seen[0][0::2], torch.ones(2, 3, 2, 2)) and torch.equal(seen[0][1::2], torch.zeros(2, 3, 2, 2))
    expected = torch.autograd.grad(F.cross_entropy(model(seen[0]), y), model[1].weight)[0]
    assert torch.allclose(model[1].weight.grad, expected, atol=1e-6)  # 3 identical passes, averaged


def test_awp_perturb_then_restore_targets_weights_only():
    torch.manual_seed(0)
    model = build_model("GSeMResNet18", 10, beta=0)
    proxy = build_model("GSeMResNet18", 10, beta=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    awp = AWP(model, proxy, gamma=0.01, eot_iter=2)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    diff = awp.calc(x, y)
    assert set(diff) == {k for k, v in before.items() if v.dim() > 1 and "weight" in k}
    assert "gsem_module.conv1.weight" in diff and "bn1.weight" not in diff and "linear.bias" not in diff
    state = awp.perturb(diff)
    w, w0 = model.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"]
    assert (w - w0).norm().item() == pytest.approx(0.01 * w0.norm().item(), rel=1e-4)
    awp.restore(state)  # w + gamma d - gamma d, the authors' order: the weights back up to rounding
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, before[k], rtol=0, atol=1e-6), k


def test_awp_restore_keeps_the_optimizer_update():
    torch.manual_seed(0)
    model, proxy = nn.Linear(4, 3), nn.Linear(4, 3)
    awp = AWP(model, proxy, gamma=0.1, eot_iter=1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    w0 = model.weight.detach().clone()
    state = awp.perturb(awp.calc(x, y))
    with torch.no_grad():
        model.weight -= 0.5  # stands for an optimizer step on the perturbed weights
    awp.restore(state)
    assert torch.allclose(model.weight, w0 - 0.5, atol=1e-6)


def test_mart_step_with_awp_perturbs_during_the_loss_and_restores_after_the_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    proxy = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    w0 = model[1].weight.detach().clone()
    during = []

    def loss_fn(model, x_in, y, x):
        during.append(model[1].weight.detach().clone())
        return mart(model, x_in, y, x, mart_beta=5.0)

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, logits, _ = TrainStep(model, opt, loss_fn, make_input=Marker(), eot_iter=2,
                                awp=AWP(model, proxy, eot_iter=1))(x, y)
    assert len(during) == 2 and not torch.equal(during[0], w0)  # perturbed during the loss
    assert model[1].weight.grad is not None and torch.isfinite(loss)
    assert torch.equal(model[1].weight, w0)  # restored after the (zero) step


def stem_grad(model, loss):
    return torch.autograd.grad(loss, model[0].weight)[0]


def test_mart_default_is_the_released_codes_correction_scope():
    """The released train_gsem_mart.py registered its hooks after both forwards, so only the clean forward was
    corrected: the default MART loss reproduces that stem gradient; --correct_adv_forward corrects both forwards."""
    from models import gradient_correction

    model = tiny_gsem(beta=0, classes=3, size=16)
    torch.manual_seed(1)
    x, x_adv, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    with gradient_correction(model, False):
        logits_adv = model(x_adv)  # the adversarial forward: no hooks attached, masked gradient
    released = stem_grad(model, mart_loss(logits_adv, model(x), y, 5.0))
    both = stem_grad(model, mart_loss(model(x_adv), model(x), y, 5.0))
    assert torch.allclose(stem_grad(model, mart(model, x_adv, y, x)[0]), released, atol=1e-7)
    assert torch.allclose(stem_grad(model, mart(model, x_adv, y, x, correct_adv_forward=True)[0]), both, atol=1e-7)
    assert (released - both).norm() > 0.05 * both.norm()  # the two scopes really differ
    assert all(m.gradient_correction for m in model.modules() if hasattr(m, "gradient_correction"))  # restored


def test_the_no_correction_ablation_gives_the_update_the_masked_gradient():
    from models import set_gradient_correction
    from utils.losses import with_gradient_correction

    model = tiny_gsem(beta=0, classes=3, size=16)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    masked = stem_grad(model, with_gradient_correction(cross_entropy, False)(model, x, y, x)[0])
    corrected = stem_grad(model, cross_entropy(model, x, y, x)[0])
    set_gradient_correction(model, False)
    assert torch.allclose(masked, stem_grad(model, cross_entropy(model, x, y, x)[0]))
    assert not torch.allclose(masked, corrected)


def test_trades_equals_its_formula_on_a_tiny_model():
    from utils.losses import trades

    model = tiny_gsem(beta=0, classes=3, size=16).double()  # float64: the KL term is small
    torch.manual_seed(4)
    x, x_adv = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.rand(4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    loss, logits, terms = trades(model, x_adv, y, x, trades_beta=6.0)
    p_nat, p_adv = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    kl = (p_nat * (p_nat.log() - p_adv.log())).sum(1).mean()  # KL(f(x) || f(x_adv)), batch mean
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item() + 6.0 * kl.item(), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5) and torch.equal(logits, model(x_adv))


def test_pgd_at_step_is_cross_entropy_on_the_attacked_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.0), cross_entropy, make_input=Marker())(x, y)
    expected = torch.autograd.grad(F.cross_entropy(model(x + 1), y), model[1].weight)[0]
    assert torch.allclose(model[1].weight.grad, expected, atol=1e-6)


def test_trades_attack_keeps_the_ball_and_raises_the_kl():
    from attacks.trades import TradesPGD, kl_to

    model = tiny_gsem(beta=0, classes=3, size=16)
    torch.manual_seed(5)
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 3, (6,))
    x_adv = TradesPGD(model, eps=8 / 255, alpha=2 / 255, steps=5)(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        assert kl_to(model(x_adv), p).mean() > kl_to(model(x), p).mean()
