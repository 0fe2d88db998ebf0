"""The GSeM evaluation suite: attack constraints and strength, the library wrapper, the script end to end."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import linear_task_model, tiny_gsem
from pyautoattack.autopgd_base import APGDAttack

import evaluate_gsem
import train_gsem
from attacks import ATTACKS, PGD, AttackConfig, build_attack, list_attacks
from attacks.autoattack_lib import apgd
from attacks.cw import CWL2
from utils import evaluation
from utils.precision import autocast, bf16_native

# the intensity attacks of the registry (the deformation attacks have their own tests)
GSEM_SUITE_ATTACKS = ["PGD500", "CW100", "APGD500", "AA", "AA-standard", "AA-rand", "CWinf", "PGD-uncorrected"]


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_and_apgd_break_an_undefended_model_at_8_255():
    model, x, y = linear_task_model()
    assert acc(model, x, y) > 0.95
    assert acc(model, PGD(model, steps=20)(x, y), y) < 0.05
    assert acc(model, apgd(model, steps=20)(x, y), y) < 0.05


@pytest.mark.parametrize("name", ["PGD500", "PGD-uncorrected", "CWinf", "APGD500", "AA"])
def test_linf_attacks_keep_the_eps_ball_and_range(name):
    model = tiny_gsem()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    attack, settings = build_attack(name, model, AttackConfig(eot_iter=2, steps_scale=0.01))
    x_adv = attack(x, y)
    assert settings["eps"] == 8.0  # flag units; the attack holds it in [0, 1] units
    assert [v for k, v in attack.settings().items() if k.split(".")[-1] == "eps"][0] == pytest.approx(8 / 255)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not model.training


def test_cw_l2_stays_in_range_and_finds_adversarials_on_an_undefended_model():
    model, x, y = linear_task_model()
    x_adv = CWL2(model, c=10.0, steps=100, lr=0.01, eot_iter=1)(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert acc(model, x_adv, y) < 0.5
    assert torch.equal(CWL2(model, steps=0)(x, y), x)  # nothing found: the clean image comes back


def test_apgd_wrapper_equals_the_library_on_a_deterministic_model():
    model = tiny_gsem(beta=0)
    torch.manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    ours, _ = build_attack("APGD500", model, AttackConfig(eot_iter=2, steps_scale=0.02, seed=0))
    x_ours = ours(x, y)
    lib = APGDAttack(model, n_iter=10, norm="Linf", n_restarts=1, eps=8 / 255, seed=0, loss="ce", eot_iter=2, rho=0.75)
    x_lib = lib.perturb(x, y)
    assert acc(model, x_ours, y) == acc(model, x_lib, y)
    assert torch.allclose(x_ours, x_lib)


def test_corrected_attack_at_least_as_strong_as_uncorrected_on_a_gsem_model():
    model = tiny_gsem(beta=0, classes=2)
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    accs = {}
    for name in ("PGD500", "PGD-uncorrected"):
        torch.manual_seed(2)
        attack, _ = build_attack(name, model, AttackConfig(eps=4 / 255, eot_iter=1, steps_scale=0.04))
        accs[name] = acc(model, attack(x, y), y)
    assert accs["PGD500"] <= accs["PGD-uncorrected"]


@pytest.fixture(scope="module")
def gsem_checkpoint(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("gsem")
    carry = train_gsem.main(train_gsem.get_args([
        "--classifier_name", "GSeMResNet18", "--dataset_name", "cifar10", "--data_path", cifar10_root,
        "--no-verify_data",
        "--model_save_path", str(out), "--subset", "12", "--batch_size", "6", "--epochs", "1", "--reload", "1",
        "--gra_eot_num", "1", "--att_eot_num", "1", "--attack_steps", "1", "--workers", "0", "--no_bar",
        "--best_acc", "-1", "--alpha", "5", "--beta", "3"]))
    return carry["best_file"]


def eval_args(root, ckpt, out, *extra):
    return ["--classifier_name", "GSeMResNet18", "--dataset_name", "cifar10", "--model_load_path", ckpt,
            "--data_path", root, "--no-verify_data", "--result_path", str(out), "--n_examples", "6",
            "--steps_scale", "0.002",
            "--att_eot_num", "1", "--workers", "0", "--no_bar", *extra]


def test_seed_command_parses_and_defaults_are_the_reference_settings():
    args = evaluate_gsem.get_args(["--classifier_name", "GSeMResNet18", "--dataset_name", "cifar10",
                                   "--model_load_path", "xxxx.pt"])
    assert args.attacks == ["Clean", "PGD500", "CW100", "APGD500", "AA"]
    assert (args.batch_size, args.eot_iter, args.eps, args.repeat, args.steps_scale, args.amp) == \
        (512, 20, 8.0, 1, 1.0, False)
    cfg = AttackConfig.from_args(args, seed=args.seed)
    s = {name: build_attack(name, tiny_gsem(), cfg)[0].settings() for name in args.attacks[1:]}
    assert (s["PGD500"]["steps"], s["PGD500"]["alpha"], s["PGD500"]["eot_iter"], s["PGD500"]["eps"]) == \
        (500, 2 / 255, 20, 8 / 255)
    assert (s["CW100"]["steps"], s["CW100"]["c"], s["CW100"]["kappa"], s["CW100"]["lr"], s["CW100"]["eot_iter"]) == \
        (500, 1.0, 0.0, 0.01, 20)
    assert (s["APGD500"]["n_iter"], s["APGD500"]["n_restarts"], s["APGD500"]["rho"], s["APGD500"]["eot_iter"]) == \
        (500, 50, 0.75, 20)
    assert (s["AA"]["APGD-CE.n_iter"], s["AA"]["APGD-T.n_target_classes"], s["AA"]["FAB-T.n_iter"]) == (10, 9, 10)
    assert s["AA"]["Square.n_queries"] == 5000 and s["AA"]["APGD-T.eot_iter"] == 20
    aa, _ = build_attack("AA", tiny_gsem(), cfg)
    square = dict(aa.attacks)["Square"].attack  # as the authors ran it: torchattacks' rescaled p schedule
    assert square.rescale_schedule is True and square.n_queries == 5000
    # on a deterministic model EOT takes one pass: the same expectation without 19 identical passes
    assert build_attack("APGD500", tiny_gsem(beta=0), cfg)[0].settings()["eot_iter"] == 1


@pytest.mark.slow
def test_suite_end_to_end_on_a_trained_checkpoint_then_resume(cifar10_root, gsem_checkpoint, tmp_path, capsys,
                                                             monkeypatch):
    everything = ["Clean", *list_attacks()]
    record = evaluate_gsem.main(evaluate_gsem.get_args(eval_args(
        cifar10_root, gsem_checkpoint, tmp_path, "--attacks", *everything, "--repeat", "2", "--worst_case",
        "--surrogate", gsem_checkpoint)))
    out = capsys.readouterr().out
    assert "\nClean: " in out
    for name in ("PGD500", "CW100", "APGD500", "AA-10it"):  # the reduced AutoAttack says what it is
        assert f"\n{name} [eot_iter=1, steps_scale=0.002, n=6, repeat=2]: " in out  # a shrunk attack says so
    assert (record["alpha"], record["beta"]) == (5, 3)  # taken from the checkpoint
    rows = {r["attack"]: r for r in record["rows"].values()}
    assert set(rows) == set(list_attacks()) and "sanity" in record and "checks" in record
    assert len(rows["PGD500"]["accs"]) == 2 and rows["APGD500"]["attack_settings"]["seed"] == 0  # draw 0's settings
    assert rows["PGD500"]["seeds"] == [0, 1]
    assert all(0 <= r["acc"] <= 1 and 0 <= r["acc_on_clean_correct"] <= 1 for r in rows.values())  # fractions
    assert record["worst_case"]["acc"] <= min(r["acc"] for r in rows.values())
    path = tmp_path / (os.path.basename(gsem_checkpoint)[:-3] + "_cifar10_eval.json")
    assert json.loads(path.read_text())["checkpoint_sha256"] == record["checkpoint_sha256"]
    assert path.with_suffix(".md").read_text().count("| PGD500 [") == 1

    ran = []
    real = evaluation.attack_pass
    monkeypatch.setattr(evaluation, "attack_pass", lambda *a, **k: ran.append(k["desc"]) or real(*a, **k))
    evaluate_gsem.main(evaluate_gsem.get_args(eval_args(
        cifar10_root, gsem_checkpoint, tmp_path, "--attacks", "Clean", "PGD500", "CWinf", "--repeat", "2",
        "--worst_case", "--resume", "--no-sanity_checks")))
    assert ran == []  # everything was already done for this checkpoint and these settings


@pytest.mark.slow
def test_resume_with_other_settings_keeps_the_earlier_rows(cifar10_root, gsem_checkpoint, tmp_path):
    first = evaluate_gsem.main(evaluate_gsem.get_args(eval_args(
        cifar10_root, gsem_checkpoint, tmp_path, "--attacks", "Clean", "PGD500", "--no-sanity_checks")))
    second = evaluate_gsem.main(evaluate_gsem.get_args(eval_args(
        cifar10_root, gsem_checkpoint, tmp_path, "--attacks", "PGD500", "--eps", "4", "--resume",
        "--no-sanity_checks")))
    assert set(first["rows"]) < set(second["rows"])  # the eps 8 rows are still there, beside the eps 4 row
    labels = [k for k in second["rows"] if k.startswith("PGD500")]
    assert len(labels) == 2 and any("eps=4" in k for k in labels)


def test_subset_sets_the_number_of_points(cifar10_root, gsem_checkpoint, tmp_path):
    argv = [a for a in eval_args(cifar10_root, gsem_checkpoint, tmp_path) if a not in ("--n_examples", "6")]
    record = evaluate_gsem.main(evaluate_gsem.get_args(argv + ["--subset", "4", "--attacks", "Clean",
                                                               "--no-sanity_checks"]))
    assert record["clean"]["n"] == 4 and record["rows"] == {}


def test_bad_checkpoints_give_clear_messages(cifar10_root, gsem_checkpoint, tmp_path, capsys):
    for extra, expected in ((["--classifier_name", "GSeMWideResNet28x10"], "contradicts the checkpoint"),
                            (["--beta", "4"], "--beta 4 contradicts the checkpoint, which was trained with beta 3"),
                            (["--model_load_path", str(tmp_path / "none.pt")], "checkpoint not found")):
        with pytest.raises(SystemExit) as e:
            evaluate_gsem.main(evaluate_gsem.get_args(eval_args(cifar10_root, gsem_checkpoint, tmp_path, *extra)))
        assert e.value.code == 2 and expected in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_gsem.get_args(eval_args(cifar10_root, gsem_checkpoint, tmp_path, "--attacks", "no-such-attack"))


@pytest.mark.skipif(not bf16_native(torch.device("cpu")), reason="this CPU has no native bf16: --amp is a no-op")
def test_every_attack_runs_under_bf16_autocast_on_cpu():
    """evaluate_gsem.py --amp runs the whole evaluation under bf16 autocast: every attack still returns fp32 images
    in [0, 1], inside the eps-ball for the L-inf ones, and the gradient attacks still move the points."""
    model = tiny_gsem()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    for name in GSEM_SUITE_ATTACKS:
        attack, _ = build_attack(name, model, AttackConfig(eot_iter=2, steps_scale=0.01))
        with autocast(torch.device("cpu"), True):
            x_adv = attack(x, y)
        assert x_adv.dtype == torch.float32 and torch.isfinite(x_adv).all(), name
        assert x_adv.min() >= 0 and x_adv.max() <= 1, name
        if ATTACKS[name].budget is not None:
            assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6, name
        if name in ("PGD500", "CWinf", "PGD-uncorrected"):
            assert (x_adv - x).abs().max() > 1 / 255, name
