"""stAdv, ADef, flow units, adversarial deformation training, multi-attack evaluation and the plot command."""
import json
import os

import pytest
import torch
from conftest import trained_tiny_model

import evaluate
import main
from attacks import ADef, StAdv
from attacks.adef import gaussian_filter
from utils import plots, tables
from utils.flow import flow_norms_pixels, pixel_flow_to_normalized, warp


def test_one_pixel_flow_in_pixel_units_shifts_by_one_pixel_in_both_attacks_warps():
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    f = torch.zeros(2, 2, 8, 10, dtype=torch.float64)
    f[:, 0] = 1.0  # one pixel to the right: z(r, c) = x(r, c + 1)
    adef = ADef(torch.nn.Identity())
    for z in (adef._warp(x, f), warp(x, pixel_flow_to_normalized(f), padding_mode="border")):  # ADef, stAdv
        assert torch.allclose(z[..., :-1], x[..., 1:], atol=1e-10)
    f = torch.zeros(2, 2, 8, 10, dtype=torch.float64)
    f[:, 1] = 1.0  # one pixel down
    assert torch.allclose(adef._warp(x, f)[..., :-1, :], x[..., 1:, :], atol=1e-10)
    assert torch.allclose(adef._warp(x, torch.zeros_like(f)), x, atol=1e-10)
    flow = torch.ones(1, 2, 8, 10) * torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    norms = flow_norms_pixels(pixel_flow_to_normalized(flow))
    assert norms["tnorm"].item() == pytest.approx(5.0) and norms["linf"].item() == pytest.approx(4.0)


@pytest.mark.parametrize("attack_cls,kwargs", [(StAdv, {"steps": 50}), (ADef, {"steps": 50})])
def test_stadv_and_adef_fool_an_undefended_model_with_finite_smooth_flows(attack_cls, kwargs):
    model, x, y = trained_tiny_model()
    model.eval()
    attack = attack_cls(model, **kwargs)
    x_adv = attack(x, y)
    with torch.no_grad():
        fooled = (model(x_adv).argmax(1) != y).float().mean().item()
    assert fooled > 0.8
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    flow = attack.last_flow
    assert torch.isfinite(flow).all()
    tn = flow_norms_pixels(flow)["tnorm"][attack.last_success]
    assert (tn > 0).all() and (tn < 4).all()  # a real deformation, a few pixels at most on 16x16
    assert torch.equal(attack.last_success, (model(x_adv).argmax(1) != y))


def test_failed_examples_come_back_unchanged():
    model, x, y = trained_tiny_model()
    model.eval()
    st = StAdv(model, steps=0)
    assert torch.equal(st(x, y), x) and not st.last_success.any()
    ad = ADef(model, steps=50, max_norm=1e-4)  # a budget too small to fool anything
    x_adv = ad(x, y)
    failed = ~ad.last_success
    assert failed.any() and torch.equal(x_adv[failed], x[failed])
    assert (ad.last_flow[failed] == 0).all()


def test_adef_smoothing_makes_the_field_smoother():
    model, x, y = trained_tiny_model()
    model.eval()

    def roughness(sigma):
        ad = ADef(model, sigma=sigma, steps=50)
        ad(x, y)
        f = ad.last_flow[ad.last_success]
        tv = (f[:, 1:] - f[:, :-1]).abs().mean() + (f[:, :, 1:] - f[:, :, :-1]).abs().mean()
        return (tv / f.abs().mean()).item()

    assert roughness(0.5) < 0.8 * roughness(0.0)
    field = torch.zeros(1, 2, 9, 9)
    field[..., 4, 4] = 1
    smooth = gaussian_filter(field, 0.5)
    assert smooth.sum().item() == pytest.approx(2.0, rel=1e-5) and smooth.max() < 1


def test_adversarial_deformation_training_and_multi_attack_evaluation(cifar10_root, tmp_path):
    common = ["--data_path", cifar10_root, "--no-verify_data", "--model_name", "vgg11", "--fgr_lamb", "100",
              "--adv_train", "flow", "--adv_steps", "2", "--weight_path", str(tmp_path / "w"), "--workers", "0",
              "--no_bar"]
    main.main(main.get_args(common + ["--epochs", "1", "--subset", "16", "--batch_size", "8"]))
    name = "cifar10_vgg11_fgr_100.0_rs_0.01_adv_trainflow_adv_steps2_epochs1_batch_size8_subset16"
    assert os.path.isfile(tmp_path / "w" / f"{name}.pt")
    record = evaluate.main(evaluate.get_args(common + [
        "--checkpoint", str(tmp_path / "w" / f"{name}.pt"), "--result_path", str(tmp_path / "r"), "--subset", "8",
        "--steps", "2", "--attacks", "flow", "stadv", "adef", "--stadv_steps", "3", "--adef_steps", "3"]))
    rows = {r["attack"]: r for r in record["rows"].values()}
    assert list(rows) == ["flow", "stadv", "adef"] and 0 <= record["val_acc"] <= 1
    assert record["adv_acc"] is None  # not the authors' attack settings (2 steps, 8 points): no reference key
    on_disk = json.loads((tmp_path / "r" / f"{name}.json").read_text())
    adef = next(r for r in on_disk["rows"].values() if r["attack"] == "adef")
    assert set(adef) >= {"acc", "n_success", "deformation", "settings", "robust_flags"}
    assert set(adef["deformation"]) == {"tnorm_px", "mean_px", "per_example", "minimum_deformation",
                                       "acc_at_budget_px", "median_min_tnorm_px"}
    assert (tmp_path / "r" / f"{name}.md").read_text().count("| stadv [") == 1


def test_plot_command_writes_png_and_pdf(tmp_path, capsys):
    for lamb in (0, 100, 300):
        rec = {"val_acc": 0.9 - lamb / 3000, "adv_acc": 0.05 + lamb / 1000,
               "attacks": {"flow": {"acc": 0.05 + lamb / 1000}, "adef": {"acc": 0.01 + lamb / 2000}},
               "args": {"fgr_lamb": float(lamb), "reg": "fgr", "adv_train": "none", "data_name": "cifar10",
                        "model_name": "vgg11"}}
        (tmp_path / f"r{lamb}.json").write_text(json.dumps(rec))
    entries = tables.collect(str(tmp_path))
    assert sorted(plots.run_names(entries).values()) == ["cifar10 vgg11 FGR λ=100", "cifar10 vgg11 FGR λ=300",
                                                         "cifar10 vgg11 plain"]  # dataset and model in every name
    plots.main(["--result_path", str(tmp_path), "--out", str(tmp_path / "fig" / "sweep.png"), "--reference"])
    png, pdf = tmp_path / "fig" / "sweep.png", tmp_path / "fig" / "sweep.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(SystemExit) as e:
        plots.main(["--result_path", str(tmp_path / "fig"), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "no result files of evaluate.py" in capsys.readouterr().err
