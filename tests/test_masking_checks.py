"""The gradient-masking verdict: the declared checks fire on a model that masks its gradients and stay quiet on a plain
one (real digits, real attacks through the registry), each check on the rows it compares (corrected vs masked
gradient, EOT count, gradient-free and transfer attacks vs white-box), and the demonstration's pipeline end to end."""
import os
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from attacks import AttackConfig, build_attack
from realdata import digits_tensors, train_digits_classifier
from utils.evaluation import attack_pass, check_lines, evaluate, make_row, masking_checks

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))


class ZeroGradient(nn.Module):
    """The plain model's forward with an input gradient of exactly zero (``x.detach() + 0 * x``): the extreme of a
    defence that masks its gradients (shattered gradients, Athalye et al. 2018), robust to nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach() + 0 * x)


@pytest.fixture(scope="module")
def plain_and_masked(tmp_path_factory):
    plain = train_digits_classifier(epochs=4)
    path = tmp_path_factory.mktemp("surrogate") / "plain.pt"
    torch.save({"model": plain.state_dict(), "model_spec": plain.model_spec}, path)
    return plain, ZeroGradient(plain).eval(), str(path)


def rows_of(model, surrogate, n=64):
    x, y = digits_tensors(False)
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64)
    clean = evaluate(model, loader, "cpu", bar=False, return_flags=True)[1]["clean"]
    rows = {}
    for name in ("PGD500", "Square", "transfer"):
        cfg = AttackConfig(eot_iter=1, steps_scale=0.1, surrogate=surrogate)
        attack, settings = build_attack(name, model, cfg)
        torch.manual_seed(0)
        draw = attack_pass(model, loader, "cpu", attack, bar=False)
        rows[name] = make_row(name, name, [draw], clean, settings=settings, attack_settings={}, seeds=[0], seconds=0)
    return rows


def test_the_checks_fire_on_masked_gradients_and_not_on_a_plain_model(plain_and_masked):
    plain, masked, surrogate = plain_and_masked
    checks, warnings = masking_checks(rows_of(plain, surrogate))
    assert set(checks) == {"PGD500 vs Square", "PGD500 vs transfer"}
    assert all(c["passed"] for c in checks.values()) and warnings == []
    rows = rows_of(masked, surrogate)
    assert rows["PGD500"]["acc"] == 1.0 > rows["Square"]["acc"]  # the zero gradient leaves PGD nothing to follow
    checks, warnings = masking_checks(rows)
    assert not checks["PGD500 vs Square"]["passed"] and not checks["PGD500 vs transfer"]["passed"]
    assert len(warnings) == 2 and all("suspect gradient masking" in w for w in warnings)
    assert any(line.startswith("check PGD500 vs Square: FAIL") for line in check_lines(checks))


def row(attack, flags, **settings):
    label = attack + (f" [{', '.join(f'{k}={v}' for k, v in settings.items())}]" if settings else "")
    return {"attack": attack, "label": label, "acc": sum(flags) / len(flags), "n_examples": len(flags),
            "settings": {"eps": 8.0, **settings}, "robust_flags": flags}


def flags(fooled, n=100):
    return [i >= fooled for i in range(n)]


def test_corrected_against_masked_gradient_and_the_eot_count():
    # the corrected gradient fools 60 points, the masked one 30: passes; the other way round fails
    good = {"a": row("PGD500", flags(60), eot_iter=20), "b": row("PGD-uncorrected", flags(30), eot_iter=20)}
    bad = {"a": row("PGD500", flags(30), eot_iter=20), "b": row("PGD-uncorrected", flags(60), eot_iter=20)}
    assert masking_checks(good)[0]["PGD500 [eot_iter=20] vs PGD-uncorrected [eot_iter=20]"]["passed"]
    checks, warnings = masking_checks(bad)
    assert not checks["PGD500 [eot_iter=20] vs PGD-uncorrected [eot_iter=20]"]["passed"]
    assert "the correction does not restore the gradient" in warnings[0]
    # twice the EOT samples fooling 20 more points: too few samples; 2 more (noise): fine
    few = {"a": row("PGD500", flags(40), eot_iter=10), "b": row("PGD500", flags(60), eot_iter=20)}
    checks, warnings = masking_checks(few)
    assert not checks["PGD500 [eot_iter=10] vs PGD500 [eot_iter=20]"]["passed"] and "too few" in warnings[0]
    enough = {"a": row("PGD500", flags(40), eot_iter=10), "b": row("PGD500", flags(42), eot_iter=20)}
    assert masking_checks(enough)[0]["PGD500 [eot_iter=10] vs PGD500 [eot_iter=20]"]["passed"]
    # rows at another eps or on other points are never compared
    other = {"a": row("PGD500", flags(40), eot_iter=10), "b": {**row("PGD500", flags(60), eot_iter=20),
                                                               "settings": {"eps": 4.0, "eot_iter": 20}}}
    assert masking_checks(other)[0] == {}


def test_a_black_box_attack_is_compared_with_the_strongest_white_box_attack_at_its_eps():
    rows = {"pgd": row("PGD500", flags(50)), "aa": row("AA", flags(70)), "sq": row("Square", flags(60)),
            "pgd4": {**row("PGD500", flags(10)), "settings": {"eps": 4.0}}}
    checks, warnings = masking_checks(rows)
    assert checks["AA vs Square"]["passed"] and warnings == []  # AA (70 fooled) is the strongest at eps 8
    rows["aa"] = row("AA", flags(20))
    checks, _ = masking_checks(rows)
    assert not checks["PGD500 vs Square"]["passed"]  # now PGD500 (50) is, and Square (60) beats it


@pytest.mark.slow
def test_the_demonstration_runs_end_to_end(tmp_path):
    import gsem_demo

    out = gsem_demo.main(["--quick", "--out", str(tmp_path), "--no_bar"])
    summary = out["summary"]
    assert list(summary) == ["gsem", "gsem-none", "pgd-at"]
    for key, s in summary.items():
        assert s["n"] == 16 and 0 <= s["clean"] <= 1 and set(s["columns"]) == {a for a, _ in gsem_demo.COLUMNS}
        assert all(v is not None for v in s["columns"].values()), key
        assert len(s["curve"]) == 3 and s["check_lines"]  # eps 4, 8, 64; every check printed with its outcome
        assert "unbounded PGD reaches 0" in s["checks"]
    for key in ("gsem", "gsem-none"):  # the GSeM models: noise draws at twice the EOT, and the EOT check
        assert len(summary[key]["pgd_2eot"]["accs"]) == 2
        assert any("eot_iter=2" in name and "eot_iter=4" in name for name in summary[key]["checks"])
    assert summary["pgd-at"]["pgd_2eot"] is None
    assert "| GSeM, corrected AT | 16, EOT 2 |" in out["table"]
    assert all(os.path.getsize(f) > 1000 for f in out["figure"])
    assert (tmp_path / "gsem_demo.json").is_file() and (tmp_path / "gsem_demo.md").is_file()


@pytest.mark.parametrize("name", ["Square", "AA"])
def test_square_runs_under_bf16_autocast(name):
    """``--amp`` runs the attacks under bf16 autocast; the library's Square writes logits into float32 buffers, so
    it runs outside autocast (it broke AA's last stage on GSeM-ResNet-18 with ``--amp``)."""
    from conftest import tiny_gsem

    model = tiny_gsem().eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    attack, _ = build_attack(name, model, AttackConfig(eot_iter=1, steps_scale=0.01))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(x, y)
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 8 / 255 + 1e-6
