"""The authors' L-inf flow attack: budget, range, identity, strength, mode restoration."""
import torch
import torch.nn.functional as F
from conftest import trained_tiny_model

from attacks import FlowAttack
from utils.flow import normalized_to_pixels


def test_flow_attack_respects_budget_and_range_and_raises_loss():
    model, x, y = trained_tiny_model()
    model.eval()
    attack = FlowAttack(model, eps=0.1, steps=10)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    flow = attack.last_flow
    assert flow.abs().max() <= 0.1 + 1e-7
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
        assert (model(x_adv).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()


def test_zero_budget_is_identity_and_single_step_is_fgsm_on_the_flow():
    model, x, y = trained_tiny_model()
    model.eval()
    assert torch.allclose(FlowAttack(model, eps=0.0, steps=3)(x, y), x, atol=1e-5)
    one = FlowAttack(model, eps=0.02, steps=1)
    one(x, y)
    assert torch.allclose(one.last_flow.abs()[one.last_flow != 0], torch.tensor(0.02))


def test_attack_restores_train_mode_and_runs_in_eval_mode():
    model, x, y = trained_tiny_model()
    model.train()
    bn = model[1]
    before = bn.running_mean.clone()
    FlowAttack(model, eps=0.01, steps=2)(x, y)
    assert model.training and bn.training
    assert torch.equal(bn.running_mean, before)  # eval mode inside: BN statistics untouched


def test_budget_in_pixels():
    model, _, _ = trained_tiny_model()
    assert abs(normalized_to_pixels(FlowAttack(model, eps=0.01).eps, 32) - 0.155) < 1e-9
