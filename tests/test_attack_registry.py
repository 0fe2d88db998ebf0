"""The contract every registered attack keeps (parametrised over the registry, budgets read from the declarations):
same shape and dtype, finite, in [0, 1], its declared budget respected, zero budget the identity, the model's
train/eval mode and BatchNorm statistics untouched, flows recorded by the deformation attacks; the registry's errors;
and a new attack with two knobs, added as one file with its registration, in both evaluate scripts."""
import importlib
import json
import sys

import pytest
import torch
from conftest import tiny_classifier, unregister_attack

import evaluate
import evaluate_gsem
from attacks import ATTACKS, AttackConfig, attack_label, build_attack, list_attacks
from attacks.registry import all_knobs
from models import build_model

FAST = dict(eot_iter=1, steps_scale=0.01)


@pytest.fixture(autouse=True, scope="module")
def surrogate_checkpoint(tmp_path_factory):
    """A file for the knobs that name one (the transfer attack's surrogate): a small CNN checkpoint."""
    torch.manual_seed(0)
    surrogate = build_model("smallcnn", 10)
    path = tmp_path_factory.mktemp("surrogate") / "smallcnn.pt"
    torch.save({"model": surrogate.state_dict(), "model_spec": surrogate.model_spec}, path)
    FAST["surrogate"] = str(path)
    yield
    FAST.pop("surrogate")


def within(budget, x, x_adv, attack, values, tol: float = 1e-4) -> torch.Tensor:
    """Per example: is the perturbation within the budget ``values`` (one per knob, the attack's units)?"""
    size = budget.measure.size(x, x_adv, attack).reshape(x.shape[0], -1)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for j, value in enumerate(values):
        if value is not None:
            ok &= (size[:, j] <= value * (1 + tol) + 1e-6).cpu()
    return ok


@pytest.mark.parametrize("name", list_attacks())
def test_every_registered_attack_keeps_the_contract(name):
    model = tiny_classifier().train()
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    torch.manual_seed(1)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    spec = ATTACKS[name]
    cfg = AttackConfig(**FAST)
    if spec.budget is not None:
        cfg = cfg.replace(**dict(zip(spec.budget.knobs, spec.budget.measure.small)))
    attack, settings = build_attack(name, model, cfg)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and bn.training, "the model's mode must be restored"
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1]), "attacks run in eval mode"
    assert set(settings) == {k.name for k in spec.knobs} and isinstance(attack.settings(), dict)
    if attack.produces_flow:
        assert attack.last_flow.shape == (4, 32, 32, 2) and torch.isfinite(attack.last_flow).all()
    if spec.budget is not None:
        assert within(spec.budget, x, x_adv, attack, spec.budget.measure.small).all(), spec.budget


@pytest.mark.parametrize("name", [n for n in list_attacks() if ATTACKS[n].budget is not None])
def test_zero_budget_is_the_identity(name):
    model = tiny_classifier().eval()
    torch.manual_seed(2)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    attack, _ = build_attack(name, model, AttackConfig(**FAST, **{k: 0.0 for k in ATTACKS[name].budget.knobs}))
    # a zero flow warps through the float32 identity grid, whose rounding moves a value by up to ~3e-6
    assert torch.allclose(attack(x, y), x, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_attacks() if ATTACKS[n].uses_labels])
def test_already_misclassified_points_are_never_made_correct(name):
    model = tiny_classifier().eval()
    torch.manual_seed(3)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # labels the model gets wrong on every point
    attack, _ = build_attack(name, model, AttackConfig(**FAST))
    with torch.no_grad():
        assert (model(attack(x, wrong)).argmax(1) != wrong).all()


def test_registry_errors_and_knob_declarations():
    with pytest.raises(ValueError, match="unknown attack 'no-such-attack'; valid: flow, stadv"):
        build_attack("no-such-attack", tiny_classifier())
    with pytest.raises(TypeError, match="no setting flow_epsilon"):
        AttackConfig(flow_epsilon=0.1)
    names = [k.name for k in all_knobs()]
    assert len(names) == len(set(names))  # each knob declared once, shared by the attacks that read it
    assert {"flow_eps", "flow_steps", "eps", "eot_iter", "steps_scale", "stadv_tau", "adef_max_norm"} <= set(names)
    cfg = AttackConfig(flow_steps=3, steps_scale=0.5)
    assert attack_label("flow", cfg, {"n": 16}) == "flow [flow_steps=3, steps_scale=0.5, n=16]"
    assert attack_label("flow", AttackConfig()) == "flow"


def test_every_module_of_the_package_is_imported():
    """An attack registers itself by being a file of attacks/: the package imports every module in it."""
    import pkgutil

    import attacks

    for module in pkgutil.iter_modules(attacks.__path__):
        assert f"attacks.{module.name}" in sys.modules


NEW_ATTACK = '''
import torch

from attacks import Attack, Budget, Knob, register_attack
from attacks.registry import EPS
from utils.argtypes import nonneg_float, positive_int


class RandomSign(Attack):
    """Best of ``tries`` random sign perturbations of size ``shrink * eps`` (gradient-free)."""

    def __init__(self, model, eps, tries, shrink):
        super().__init__(model)
        self.eps, self.tries, self.shrink = eps, tries, shrink

    def perturb(self, x, y):
        best, best_loss = x, torch.full((x.shape[0],), -float("inf"))
        for _ in range(self.tries):
            cand = (x + self.shrink * self.eps * torch.randn_like(x).sign()).clamp(0, 1)
            with torch.no_grad():
                loss = torch.nn.functional.cross_entropy(self.model(cand), y, reduction="none")
            better = loss > best_loss
            best = torch.where(better.view(-1, 1, 1, 1), cand, best)
            best_loss = torch.maximum(loss, best_loss)
        return best


@register_attack("random_sign", EPS, Knob("rs_tries", positive_int, 3, "random tries"),
                 Knob("rs_shrink", nonneg_float, 1.0, "fraction of eps"), budget=Budget("eps", "linf"))
def random_sign(model, cfg):
    """Best of several random sign perturbations."""
    return RandomSign(model, cfg.eps, cfg.rs_tries, cfg.rs_shrink)
'''


@pytest.fixture
def new_attack(tmp_path, monkeypatch):
    """The attack above, added as one file whose registration is its only link to the rest of the code."""
    (tmp_path / "random_sign_attack.py").write_text(NEW_ATTACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("random_sign_attack")
    yield "random_sign"
    unregister_attack("random_sign")
    sys.modules.pop("random_sign_attack", None)


def test_a_new_attack_with_two_knobs_is_in_both_scripts_help_and_rows(new_attack, cifar10_root, tmp_path, capsys):
    for script, argv in ((evaluate, []), (evaluate_gsem, ["--model_load_path", "x.pt"])):
        with pytest.raises(SystemExit):
            script.get_args(argv + ["--help"])
        text = capsys.readouterr().out
        assert "--rs_tries" in text and "--rs_shrink" in text and "random_sign" in text
    torch.save(build_model("vgg11", 10).state_dict(), tmp_path / "vgg.pt")
    torch.save(build_model("GSeMResNet18", 10).state_dict(), tmp_path / "gsem.pt")
    common = ["--data_path", cifar10_root, "--no-verify_data", "--workers", "0", "--no_bar", "--subset", "4",
              "--result_path", str(tmp_path / "r"), "--attacks", "random_sign", "--rs_tries", "5", "--att_eot_num",
              "1"]
    fgr = evaluate.main(evaluate.get_args(common + ["--checkpoint", str(tmp_path / "vgg.pt")]))
    gsem = evaluate_gsem.main(evaluate_gsem.get_args(common + ["--model_load_path", str(tmp_path / "gsem.pt"),
                                                               "--no-sanity_checks"]))
    rows = [next(iter(r["rows"].values())) for r in (fgr, gsem)]
    assert set(rows[0]) == set(rows[1])  # one row format for both scripts
    for row in rows:
        assert row["settings"] == {"eps": 8.0, "rs_tries": 5, "rs_shrink": 1.0, }
        assert row["label"].startswith("random_sign [rs_tries=5") and row["attack_settings"]["tries"] == 5
    on_disk = json.loads((tmp_path / "r" / "vgg.json").read_text())
    assert on_disk["format"] == 2 and list(on_disk["rows"]) == [rows[0]["label"]]


L2_ATTACK = '''
import torch
import torch.nn.functional as F

from attacks import Attack, Budget, Knob, Measure, register_attack
from attacks.registry import STEPS_SCALE, scaled
from utils.argtypes import nonneg_float

L2 = Measure("l2", lambda x, x_adv, attack: (x_adv - x).flatten(1).norm(dim=1), (0.25,))


class PGDL2(Attack):
    """L2 PGD: normalised gradient steps of 2.5 eps / steps, projected on the L2 ball and [0, 1]."""

    def __init__(self, model, eps, steps):
        super().__init__(model)
        self.eps, self.steps = eps, steps

    def perturb(self, x, y):
        delta = torch.zeros_like(x)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(self.model(x + delta), y), delta)
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta.detach() + 2.5 * self.eps / self.steps * g
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = (delta * (self.eps / norm).clamp(max=1)).clamp(-x, 1 - x)
        return (x + delta).detach()


@register_attack("PGD-L2", Knob("eps_l2", nonneg_float, 0.5, "L2 budget of PGD-L2", unit="L2"), STEPS_SCALE,
                 budget=Budget("eps_l2", L2))
def pgd_l2(model, cfg):
    """L2 PGD, 20 steps."""
    return PGDL2(model, cfg.eps_l2, scaled(20, cfg.steps_scale))
'''


def test_an_l2_attack_with_its_own_budget_measure_is_one_file(tmp_path, monkeypatch, cifar10_root, capsys):
    """A new budget measure (L2) declared in the attack's own file: both scripts' --help, a row, the contract."""
    (tmp_path / "pgd_l2_attack.py").write_text(L2_ATTACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("pgd_l2_attack")
    try:
        for script, argv in ((evaluate, []), (evaluate_gsem, ["--model_load_path", "x.pt"])):
            with pytest.raises(SystemExit):
                script.get_args(argv + ["--help"])
            assert "--eps_l2" in capsys.readouterr().out
        test_every_registered_attack_keeps_the_contract("PGD-L2")
        test_zero_budget_is_the_identity("PGD-L2")
        torch.save(build_model("smallcnn", 10).state_dict(), tmp_path / "m.pt")
        record = evaluate.main(evaluate.get_args([
            "--data_path", cifar10_root, "--no-verify_data", "--workers", "0", "--no_bar", "--subset", "4",
            "--checkpoint", str(tmp_path / "m.pt"), "--model_name", "smallcnn", "--result_path", str(tmp_path / "r"),
            "--attacks", "PGD-L2", "--eps_l2", "0.25", "1"]))
        assert set(record["rows"]) == {"PGD-L2 [eps_l2=0.25, n=4]", "PGD-L2 [eps_l2=1, n=4]"}  # a budget sweep
    finally:
        unregister_attack("PGD-L2")
        sys.modules.pop("pgd_l2_attack", None)
