"""Deformation robustness that ranks defences: per-example minimal deformations and accuracy at budgets in the rows,
budget sweeps, both stAdv recipes, the gradient-free attacks, the masking checks, the budget curves, IGR at FGR's
strength; on real digits where it matters."""
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import evaluate
import main
from attacks import AttackConfig, build_attack
from attacks.spatial import rigid_flow
from attacks.stadv import StAdvReference, released_flow_loss
from realdata import digits_tensors, train_digits_classifier
from utils import plots, tables
from utils.evaluation import attack_pass, make_row, masking_checks
from utils.flow import pixel_flow_to_normalized, warp
from utils.losses import gradient_regularized


def row_of(model, name, cfg, x, y, budgets=(0.25, 0.5, 1.0, 2.0)):
    """The pipeline's row of attack ``name`` on (x, y)."""
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    attack, settings = build_attack(name, model, cfg)
    spec_min_norm = name in ("stadv", "stadv-ref") or (name == "adef" and cfg.adef_max_norm is None)
    draw = attack_pass(model, loader, "cpu", attack, bar=False, desc=name)
    return make_row(name, name, [draw], clean, settings=settings, attack_settings=attack.settings(), seeds=[0],
                    seconds=0.0, min_norm=spec_min_norm, budgets=budgets)


@pytest.fixture(scope="module")
def digits_models():
    """Plain and FGR (lambda 300, batch 64) small CNNs on the real digits, and 120 test digits."""
    def fgr(model, xb, yb):
        return gradient_regularized(model, xb, yb, xb, reg="fgr", lamb=300.0, rs_sigma=0.01)[0]

    x, y = digits_tensors(False)
    return train_digits_classifier(), train_digits_classifier(loss_fn=fgr), x[:120], y[:120]


@pytest.mark.slow
def test_rows_hold_minimal_deformations_and_accuracy_at_budgets_that_rank_plain_and_fgr(digits_models):
    plain, fgr, x, y = digits_models
    rows = {name: row_of(model, "adef", AttackConfig(), x, y) for name, model in (("plain", plain), ("fgr", fgr))}
    for row in rows.values():
        d = row["deformation"]
        assert row["acc"] < 0.1  # the minimum-deformation attack fools nearly every point of either model ...
        assert len(d["per_example"]["tnorm_px"]) == 120 and d["minimum_deformation"]
        fooled = [v for v in d["per_example"]["tnorm_px"] if v is not None]
        assert len(fooled) >= 100 and all(v >= 0 for v in fooled)
        accs = list(d["acc_at_budget_px"].values())
        assert accs == sorted(accs, reverse=True) and accs[0] > accs[-1]  # ... at growing deformations
    gaps = [rows["fgr"]["deformation"]["acc_at_budget_px"][b] - rows["plain"]["deformation"]["acc_at_budget_px"][b]
            for b in rows["plain"]["deformation"]["acc_at_budget_px"]]
    assert max(abs(g) for g in gaps) >= 0.05, gaps  # ... which rank the two models
    assert rows["fgr"]["deformation"]["median_min_tnorm_px"] > rows["plain"]["deformation"]["median_min_tnorm_px"]


@pytest.mark.slow
def test_minimum_deformation_accuracy_at_a_budget_is_not_below_the_budgeted_attacks(digits_models):
    """Both are upper bounds on the robust accuracy at 1 px; ADef capped at 1 px fools at least what the minimum-
    deformation ADef fooled within 1 px (the same path, an overshoot up to the cap)."""
    plain, _, x, y = digits_models
    free = row_of(plain, "adef", AttackConfig(), x, y, budgets=(1.0,))
    capped = row_of(plain, "adef", AttackConfig(adef_max_norm=1.0), x, y)
    se = math.sqrt(capped["acc"] * (1 - capped["acc"]) / 120)
    assert free["deformation"]["acc_at_budget_px"]["1"] >= capped["acc"] - 2 * se
    assert "acc_at_budget_px" not in capped["deformation"]  # a budgeted row: its accuracy is at its budget
    assert all(v is None or v <= 1.0 + 1e-3 for v in capped["deformation"]["per_example"]["tnorm_px"])


@pytest.mark.slow
def test_gradient_free_attacks_and_the_reference_stadv_on_real_digits(digits_models):
    plain, _, x, y = digits_models
    x, y = x[:32], y[:32]
    with torch.no_grad():
        ok = plain(x).argmax(1) == y
    rt = row_of(plain, "rt-grid", AttackConfig(), x, y)
    assert rt["n_success"] > 0 and rt["attack_settings"]["max_rotation"] == 30.0
    rs = row_of(plain, "flow-rs", AttackConfig(flow_eps=0.1, flow_rs_queries=200), x, y)
    assert rs["success_rate"] >= 0.5, rs["success_rate"]  # 1.55 px per coordinate: most points fall
    ours = row_of(plain, "stadv", AttackConfig(), x, y)
    ref = row_of(plain, "stadv-ref", AttackConfig(stadv_ref_max_iter=60), x, y)
    assert ours["n_success"] == int(ok.sum())  # ours fools every correct point ...
    assert ref["n_success"] < ours["n_success"]  # ... the released recipe, with a fixed tau, fewer
    assert set(ref["deformation"]["per_example"]) == {"tnorm_px", "mean_px", "smoothness"}


def rakutentech_flow_loss(flows, padding_mode="SYMMETRIC", epsilon=1e-8):
    """rakutentech/stAdv v0.2.1 ``stadv.losses.flow_loss``, its TensorFlow ops written in numpy one for one (tf.pad
    SYMMETRIC/CONSTANT = np.pad symmetric/constant)."""
    padded = np.pad(flows, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="symmetric" if padding_mode == "SYMMETRIC"
                    else "constant")
    shifted_flows = [padded[:, :, 2:, 2:], padded[:, :, 2:, :-2], padded[:, :, :-2, 2:], padded[:, :, :-2, :-2]]
    return np.sum(sum(np.sqrt((flows[:, 1] - sf[:, 1]) ** 2 + (flows[:, 0] - sf[:, 0]) ** 2 + epsilon)
                      for sf in shifted_flows), axis=(1, 2))


@pytest.mark.parametrize("padding", ["constant", "symmetric"])
def test_the_released_stadv_smoothness_equals_rakutentechs_flow_loss(padding):
    gen = torch.Generator().manual_seed(0)
    for f in (torch.randn(3, 2, 7, 9, generator=gen, dtype=torch.float64), torch.zeros(1, 2, 5, 5,
                                                                                    dtype=torch.float64)):
        ours = released_flow_loss(f, padding).numpy()
        theirs = rakutentech_flow_loss(f.numpy(), "CONSTANT" if padding == "constant" else "SYMMETRIC")
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    f = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    f[0, 0, 2, 2] = 1.0  # one pixel moved by 1 px: it and each of its 4 diagonal neighbours see one unit difference
    assert released_flow_loss(f).item() == pytest.approx(8 * math.sqrt(1 + 1e-8) + (100 - 8) * 1e-4, rel=1e-12)


def test_the_released_stadv_gives_a_point_the_same_flow_alone_and_inside_a_batch(digits_models):
    plain, _, x, y = digits_models
    attack = StAdvReference(plain.eval(), max_iter=40)
    attack(x[:6], y[:6])
    batch_flow, batch_success = attack.last_flow.clone(), attack.last_success.clone()
    for i in (0, 3, 5):
        attack(x[i:i + 1], y[i:i + 1])
        assert torch.equal(attack.last_flow[0], batch_flow[i]) and attack.last_success[0] == batch_success[i]
    attack(torch.cat([x[5:6], x[:5]]), torch.cat([y[5:6], y[:5]]))  # another order: the same flows
    assert torch.equal(attack.last_flow[0], batch_flow[5]) and torch.equal(attack.last_flow[1:], batch_flow[:5])


def test_rigid_flows():
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    shifted = warp(x, pixel_flow_to_normalized(rigid_flow(0, 1.0, 0, 9, 9)[None].double()), padding_mode="zeros")
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-6)  # translation tx = 1: z(r, c) = x(r, c + 1)
    turned = warp(x, pixel_flow_to_normalized(rigid_flow(90, 0, 0, 9, 9)[None].double()), padding_mode="zeros")
    assert torch.allclose(turned[0], x[0].transpose(1, 2).flip(1), atol=1e-5)  # a quarter turn about the centre


def row(attack, acc, n=100, **settings):
    return {"attack": attack, "label": attack, "acc": acc, "n_examples": n, "settings": settings}


def test_the_masking_checks_fire_when_a_stronger_attack_is_weaker():
    rows = {"PGD500": row("PGD500", 0.275, eps=8.0), "AA": row("AA", 0.525, eps=8.0),
            "APGD500": row("APGD500", 0.27, eps=8.0), "AA4": row("AA", 0.9, eps=4.0)}
    checks, warnings = masking_checks(rows)
    assert len(warnings) == 1 and "AA leaves 52.50% where PGD500 leaves 27.50%" in warnings[0]
    assert set(checks) == {"AA vs PGD500", "APGD500 vs PGD500"}  # another eps is not compared
    _, warnings = masking_checks({"flow": row("flow", 0.6, flow_eps=0.01),
                                  "flow-rs": row("flow-rs", 0.3, flow_eps=0.01)})
    assert len(warnings) == 1 and "gradient-free" in warnings[0]
    assert masking_checks({"flow": row("flow", 0.3, flow_eps=0.01), "flow-rs": row("flow-rs", 0.32, flow_eps=0.01)}
                          )[1] == []
    # the FGR model: the random search fooled 11 of 57 points, the gradient attack 5 (within two standard
    # errors, so the earlier check let it pass): twice the points is flagged
    _, warnings = masking_checks({"flow": row("flow", 52 / 57, n=57, flow_eps=0.02),
                                  "flow-rs": row("flow-rs", 46 / 57, n=57, flow_eps=0.02)})
    assert len(warnings) == 1 and "gradient-free" in warnings[0]
    # paired outcomes: 8 points fooled only by the random search, none only by the gradient attack (sign test
    # p = 0.004) is flagged; 5 against 3 (p = 0.36) is not
    def flagged(n_rs_only, n_flow_only, n_both=30, n=100):
        flow = [True] * n
        rs = [True] * n
        for i in range(n_both):
            flow[i] = rs[i] = False
        for i in range(n_both, n_both + n_rs_only):
            rs[i] = False
        for i in range(n_both + n_rs_only, n_both + n_rs_only + n_flow_only):
            flow[i] = False
        rows = {"flow": {**row("flow", sum(flow) / n, n=n, flow_eps=0.02), "robust_flags": flow},
                "flow-rs": {**row("flow-rs", sum(rs) / n, n=n, flow_eps=0.02), "robust_flags": rs}}
        return bool(masking_checks(rows)[1])
    assert flagged(8, 0) and not flagged(5, 3)


def test_the_adef_check_runs_at_a_cap_that_is_not_among_the_budgets():
    tnorms = [0.3, 0.6, 0.9, 1.2, None, None, 2.0, 0.2, None, 0.7]  # the minimum-deformation ADef's per point
    minimal = {**row("adef", 0.3, n=10), "robust_flags": [t is None for t in tnorms],
               "deformation": {"per_example": {"tnorm_px": tnorms}, "acc_at_budget_px": {"1": 0.5}}}
    capped = {**row("adef", 0.9, n=10, adef_max_norm=0.75), "label": "adef [adef_max_norm=0.75]"}
    checks, warnings = masking_checks({"adef": minimal, "capped": capped})
    # within 0.75 px (not among --budgets) the minimum-deformation ADef fooled 4 of 10: 0.3, 0.6, 0.2 and 0.7 px
    assert checks["adef [adef_max_norm=0.75] vs adef at 0.75 px"]["difference"] == pytest.approx(0.9 - 0.6)
    assert len(warnings) == 1 and "capped ADef" in warnings[0]


def test_budget_sweeps_make_one_row_each_and_the_curves_are_drawn_from_the_files(cifar10_root, tmp_path, capsys):
    from models import build_model

    torch.save(build_model("smallcnn", 10).state_dict(), tmp_path / "m.pt")
    args = ["--data_path", cifar10_root, "--no-verify_data", "--workers", "0", "--no_bar", "--subset", "8",
            "--checkpoint", str(tmp_path / "m.pt"), "--model_name", "smallcnn", "--result_path", str(tmp_path / "r")]
    evaluate.main(evaluate.get_args(args + ["--attacks", "flow", "--flow_eps", "0.005", "0.02", "--steps", "2"]))
    record = evaluate.main(evaluate.get_args(args + ["--attacks", "adef", "--adef_steps", "3",
                                                     "--budgets", "0.1", "1"]))
    assert {k for k in record["rows"] if k.startswith("flow")} == {"flow [flow_eps=0.005, flow_steps=2, n=8]",
                                                                    "flow [flow_eps=0.02, flow_steps=2, n=8]"}
    assert set(record["rows"]["adef [adef_steps=3, n=8]"]["deformation"]["acc_at_budget_px"]) == {"0.1", "1"}
    panels = plots.budget_curves(tables.collect(str(tmp_path / "r")))
    assert set(panels) == {("adef [adef_steps=3]", "T-norm budget (px)"), ("flow", "flow_eps")}
    assert [b for b, _ in next(iter(panels["flow", "flow_eps"].values()))] == [0.005, 0.02]
    plots.main(["--result_path", str(tmp_path / "r"), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig_budgets.png").stat().st_size > 10_000
    on_disk = json.loads((tmp_path / "r" / "m.json").read_text())["rows"]["adef [adef_steps=3, n=8]"]
    assert len(on_disk["deformation"]["per_example"]["tnorm_px"]) == 8 and on_disk["robust_flags"].count(True) == \
        sum(v is None for v in on_disk["deformation"]["per_example"]["tnorm_px"])  # not fooled: no deformation


def test_igr_at_the_strength_of_fgr_is_measured_printed_and_recorded(cifar10_root, tmp_path, capsys):
    common = ["--data_path", cifar10_root, "--no-verify_data", "--model_name", "smallcnn", "--weight_path",
              str(tmp_path), "--subset", "32", "--batch_size", "8", "--epochs", "1", "--workers", "0", "--no_bar"]
    main.main(main.get_args(common + ["--reg", "igr", "--igr_match_fgr", "300"]))
    out = capsys.readouterr().out
    assert "IGR matched to FGR lambda 300: R_FGR / R_IGR = " in out
    ckpt = next(p for p in tmp_path.iterdir() if p.name.endswith(".pt") and "last" not in p.name)
    args = torch.load(ckpt, weights_only=True)["args"]
    assert args["fgr_lamb"] == pytest.approx(300 * args["igr_ratio"], rel=1e-3) and args["igr_ratio"] > 0
    with pytest.raises(SystemExit):
        main.main(main.get_args(common + ["--igr_match_fgr", "300"]))  # only with --reg igr
    assert "use it with --reg igr" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demonstration_runs_end_to_end(tmp_path):
    """benchmarks/deformation_demo.py as a smoke run: five models, every deformation attack, the table, the figure."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import deformation_demo

    out = deformation_demo.main(["--epochs", "1", "--n", "8", "--stadv_ref_max_iter", "5", "--no_bar", "--out",
                                 str(tmp_path)])
    assert len(out["paths"]) == 5 and all(os.path.isfile(p) for p in out["paths"].values())
    assert out["table"].count("| digits | smallcnn |") == 5 and "stadv-ref" in out["table"]
    assert os.path.getsize(out["figure"][0]) > 10_000
