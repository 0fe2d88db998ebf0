"""The contract every registered attack keeps (parametrised over the registry): same shape and dtype, finite, in
[0, 1], budget respected, the model's train/eval mode and BatchNorm statistics untouched, flows recorded by the
deformation attacks; and the registry's errors."""
import pytest
import torch
import torch.nn as nn

from attacks import ATTACKS, AttackConfig, build_attack, list_attacks


def tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(128, 10))


@pytest.mark.parametrize("name", list_attacks())
def test_every_registered_attack_keeps_the_contract(name):
    model = tiny_classifier().train()
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    cfg = AttackConfig(eot_iter=1, steps_scale=0.01)
    attack, settings = build_attack(name, model, cfg)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and bn.training, "the model's mode must be restored"
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1]), "attacks run in eval mode"
    assert isinstance(settings, dict) and settings
    if getattr(attack, "produces_flow", False):
        assert attack.last_flow.shape == (4, 32, 32, 2) and torch.isfinite(attack.last_flow).all()
        if name == "flow":
            assert attack.last_flow.abs().max() <= cfg.flow_eps + 1e-7
    elif settings.get("norm") == "Linf":
        assert (x_adv - x).abs().max() <= cfg.eps + 1e-6


def test_unknown_attack_lists_the_valid_names():
    with pytest.raises(ValueError, match="valid: flow, stadv"):
        build_attack("FGSM", tiny_classifier())
    assert list_attacks() == list(ATTACKS)


def test_a_new_attack_is_one_registry_line(monkeypatch):
    """What the README shows: a class and one line in ATTACKS make an attack available to both evaluate scripts."""
    from attacks.base import Attack

    class Identity(Attack):
        def perturb(self, x, y):
            return x

    monkeypatch.setitem(ATTACKS, "identity", lambda model, cfg: (Identity(model), {"eps": 0.0}))
    attack, settings = build_attack("identity", tiny_classifier())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(attack(x, torch.zeros(2, dtype=torch.long)), x) and settings == {"eps": 0.0}


def test_the_readme_examples_of_a_new_loss_and_a_new_attack_run(monkeypatch):
    """The README's TRADES loss and FGSM attack, executed as printed (the registry lines with '...' left out)."""
    import os
    import re

    import torch.nn.functional as F

    from attacks.base import Attack
    from utils.losses import LOSSES
    from utils.training import TrainStep

    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    blocks = [b for b in re.findall(r"```py\n(.*?)```", readme, re.S) if "def trades" in b or "class FGSM" in b]
    assert len(blocks) == 2
    ns = {"F": F, "torch": torch, "Attack": Attack}
    for block in blocks:
        exec("\n".join(line for line in block.splitlines() if "{..." not in line), ns)
    monkeypatch.setitem(LOSSES, "trades", ns["trades"])
    monkeypatch.setitem(ATTACKS, "FGSM", lambda model, cfg: (ns["FGSM"](model, cfg.eps), {"eps": cfg.eps}))
    model = tiny_classifier()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    attack, _ = build_attack("FGSM", model)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, logits, terms = TrainStep(model, opt, LOSSES["trades"], make_input=attack)(x, y)
    assert torch.isfinite(loss) and set(terms) == {"kl"} and logits.shape == (4, 10)


@pytest.mark.parametrize("name", list_attacks())
def test_zero_budget_or_zero_steps_is_the_identity(name):
    from attacks import ADef, StAdv
    from attacks.cw import CWL2

    model = tiny_classifier().eval()
    torch.manual_seed(2)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    unbounded = {"CW100": lambda: CWL2(model, steps=0), "stadv": lambda: StAdv(model, steps=0),
                 "adef": lambda: ADef(model, steps=0)}
    if name in unbounded:  # minimum-norm attacks have no budget: zero iterations
        attack = unbounded[name]()
    else:
        attack, _ = build_attack(name, model, AttackConfig(eps=0.0, flow_eps=0.0, eot_iter=1, steps_scale=0.01))
    # a zero flow warps through the float32 identity grid, whose rounding moves a value by up to ~3e-6
    assert torch.allclose(attack(x, y), x, atol=1e-5)


@pytest.mark.parametrize("name", list_attacks())
def test_already_misclassified_points_are_never_made_correct(name):
    model = tiny_classifier().eval()
    torch.manual_seed(3)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # labels the model gets wrong on every point
    attack, _ = build_attack(name, model, AttackConfig(eot_iter=1, steps_scale=0.01))
    with torch.no_grad():
        assert (model(attack(x, wrong)).argmax(1) != wrong).all()
