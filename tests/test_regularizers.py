"""FGR and IGR penalties against direct computations (the authors' reduction and gather sampler)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_classifier as tiny_model

from utils.losses import gradient_regularized
from utils.regularizers import flow_gradient_penalty, input_gradient_penalty


def direct_fgr(model, x, y):
    """R from its definition at the reference's (gather) semantics, without any sampler: at n = 0 the flow gradient
    is the input gradient times the forward-difference image gradient, (W-1)/2 per normalised unit, zero in the last
    column (x component) and last row (y component)."""
    b, c, h, w = x.shape
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = (x[..., :, 1:] - x[..., :, :-1]) * (w - 1) / 2
    dy[..., :-1, :] = (x[..., 1:, :] - x[..., :-1, :]) * (h - 1) / 2
    g = torch.stack([(gx * dx).sum(1), (gx * dy).sum(1)], dim=-1)  # B x H x W x 2
    return g.pow(2).sum(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize("sampler", ["gather", "native"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_fgr_equals_direct_computation(sampler, train_mode):
    model = tiny_model().train(train_mode)
    torch.manual_seed(1)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    _, r, _ = flow_gradient_penalty(model, x, y, sampler=sampler)
    assert r.item() == pytest.approx(direct_fgr(model, x, y).item(), rel=1e-4)


@pytest.mark.parametrize("batch", [8, pytest.param(128, marks=pytest.mark.slow)])
def test_native_penalty_equals_the_gather_sampler_on_vgg11(batch):
    """The native sampler's R and the weight gradient of CE + 300 R agree with the authors' gather sampler within
    1e-4 relative: VGG-11, train mode, float32 (measured 3e-5 at batch 8 and 128)."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model("vgg11", 10).train()
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    out = {}
    for sampler in ("gather", "native"):
        model.zero_grad()
        loss, _, terms = gradient_regularized(model, x, y, x, reg="fgr", lamb=300.0, rs_sigma=0.0, sampler=sampler)
        loss.backward()
        out[sampler] = terms["reg"].item(), torch.cat([p.grad.flatten() for p in model.parameters()])
    (r_g, g_g), (r_n, g_n) = out["gather"], out["native"]
    assert abs(r_n - r_g) <= 1e-4 * r_g
    assert (g_n - g_g).norm() <= 1e-4 * g_g.norm()


def test_fgr_reduction_scales_as_inverse_batch_squared():
    # eval mode: examples independent, so duplicating the batch halves each per-example gradient of the mean CE
    model = tiny_model().eval()
    torch.manual_seed(3)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, r1, _ = flow_gradient_penalty(model, x, y)
    _, r2, _ = flow_gradient_penalty(model, torch.cat([x, x]), torch.cat([y, y]))
    assert r2.item() == pytest.approx(r1.item() / 4, rel=1e-4)


@pytest.mark.parametrize("sampler", ["gather", "native"])
def test_penalty_weight_gradient_gradcheck(sampler):
    model = tiny_model(dtype=torch.float64, bn=False)
    torch.manual_seed(4)
    x, y = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (2,))
    w = model[0].weight

    def r_of_w(weight):
        with torch.no_grad():
            w.copy_(weight)
        return flow_gradient_penalty(model, x, y, sampler=sampler)[1]

    # analytic dR/dw (double backward) against a central finite difference along a random direction
    w0 = w.detach().clone()
    (analytic,) = torch.autograd.grad(flow_gradient_penalty(model, x, y, sampler=sampler)[1], w)
    d = torch.randn_like(w0)
    h = 1e-6
    numeric = (r_of_w(w0 + h * d) - r_of_w(w0 - h * d)).item() / (2 * h)
    r_of_w(w0)
    assert (analytic * d).sum().item() == pytest.approx(numeric, rel=1e-5)


def test_igr_equals_direct_computation():
    model = tiny_model().eval()
    torch.manual_seed(5)
    x, y = torch.rand(5, 3, 16, 16), torch.randint(0, 10, (5,))
    _, r, _ = input_gradient_penalty(model, x, y)
    per_example = []
    for i in range(5):  # eval mode: d mean-CE / d x_i = (1/B) d CE_i / d x_i
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]), xi)
        per_example.append((g / 5).pow(2).sum())
    assert r.item() == pytest.approx(torch.stack(per_example).mean().item(), rel=1e-5)


def test_loss_lambda_zero_is_plain_cross_entropy_and_objective_is_ce_plus_lambda_r():
    model = tiny_model().eval()
    torch.manual_seed(6)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss, logits, logs = gradient_regularized(model, x, y, x, reg="fgr", lamb=0.0)
    assert torch.allclose(loss, F.cross_entropy(model(x), y)) and "reg" not in logs
    loss, _, logs = gradient_regularized(model, x, y, x, reg="fgr", lamb=300.0, rs_sigma=0.0)
    assert loss.item() == pytest.approx(logs["ce"].item() + 300.0 * logs["reg"].item(), rel=1e-6)
    assert logs["reg"].item() == pytest.approx(direct_fgr(model, x, y).item(), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError):
        gradient_regularized(model, x, y, x, reg="xyz", lamb=1.0)
