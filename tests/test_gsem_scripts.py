"""train_gsem.py, train_gsem_mart.py, train_gsem_awp.py end to end on synthetic CIFAR-10, CIFAR-100 and SVHN."""
import os

import pytest
import torch

import train_gsem
import train_gsem_awp
import train_gsem_mart
from synthetic import write_svhn
from utils import training
from utils.checkpoint import load_checkpoint

SCRIPTS = {"gsem": train_gsem, "mart": train_gsem_mart, "awp": train_gsem_awp}


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("svhn")
    write_svhn(str(root), n_train=40, n_test=20)
    return str(root)


def small(root, dataset, out, *extra):
    return ["--classifier_name", "GSeMResNet18", "--dataset_name", dataset, "--data_path", root, "--no-verify_data",
            "--model_save_path", str(out), "--subset", "12", "--batch_size", "6", "--epochs", "1", "--reload", "1",
            "--gra_eot_num", "2", "--att_eot_num", "2", "--attack_steps", "2", "--workers", "0", "--no_bar",
            "--best_acc", "-1", *extra]


def run_of(method, argv):
    """The run name the script gives these flags."""
    return train_gsem.run_name(SCRIPTS[method].get_args(argv), method, SCRIPTS[method].parser())


@pytest.mark.parametrize("method", list(SCRIPTS))
def test_seed_commands_parse_and_defaults_are_the_reference_recipe(method):
    args = SCRIPTS[method].get_args(["--classifier_name", "GSeMWideResNet28x10", "--dataset_name", "svhn"])
    assert (args.batch_size, args.lr, args.momentum, args.weight_decay, args.milestones, args.epochs, args.reload,
            args.gra_eot_num, args.att_eot_num, args.alpha, args.beta, args.use_amp, args.eps, args.step_size,
            args.attack_steps, args.model_save_path, args.model_load_path, args.best_acc, args.seed) == \
        (256, 0.01, 0.9, 3.5e-3, [60, 110], 150, 5, 10, 10, 6, 4, True, 8.0, 2.0, 10, "adv_model", "", 0.0, 0)
    if method != "gsem":
        assert args.mart_beta == 5.0
    if method == "awp":
        assert (args.awp_gamma, args.awp_warmup, args.awp_lr) == (None, None, 0.01)  # None: the objective's
        small = SCRIPTS[method].get_args(["--classifier_name", "resnet18"])
        awp = train_gsem_awp.weight_perturbation(small, train_gsem.build_classifier(small, "cpu"), "cpu")
        assert (awp.gamma, awp.warmup, awp.correct) == (0.01, 0, True)  # MART + AWP as the GSeM reference
    assert SCRIPTS[method].get_args(["--no-use_amp"]).use_amp is False


# The paper's matrix is 3 methods x 2 models x 3 datasets; the three axes are independent in the code (the method
# is the objective, the model a registry name, the dataset a loader), so a covering set runs each value at least once.
COVERING_MATRIX = [("gsem", "GSeMResNet18", "cifar10"), ("mart", "GSeMWideResNet28x10", "cifar100"),
                   ("awp", "GSeMResNet18", "svhn")]


@pytest.mark.slow
@pytest.mark.parametrize("method,classifier,dataset", COVERING_MATRIX)
def test_every_method_model_and_dataset_of_the_matrix_trains_and_evaluates(method, classifier, dataset, cifar10_root,
                                                                          cifar100_root, svhn_root, tmp_path):
    """Every method, model and dataset of the paper's matrix at least once: one epoch on a tiny synthetic subset,
    and the checkpoint goes through evaluate_gsem.py."""
    import evaluate_gsem

    root = {"cifar10": cifar10_root, "cifar100": cifar100_root, "svhn": svhn_root}[dataset]
    argv = small(root, dataset, tmp_path, "--classifier_name", classifier, "--subset", "4", "--batch_size", "4",
                 "--gra_eot_num", "1", "--att_eot_num", "1", "--attack_steps", "1")
    carry = SCRIPTS[method].main(SCRIPTS[method].get_args(argv))
    best, run = carry["best_file"], run_of(method, argv)
    assert os.path.dirname(best) == str(tmp_path / dataset)
    assert os.path.basename(best) == f"{run}_{carry['best']}.pt"
    assert run.startswith(f"{classifier}_6_4" + ("" if method == "gsem" else f"_{method}") +
                          "_batch_size4_epochs1_reload1_")
    ckpt = load_checkpoint(best)
    assert ckpt["args"]["dataset_name"] == dataset and ckpt["context"] == {"reload": 0} and ckpt["epoch"] == 1
    assert {"test_acc", "clean_acc", "adv_acc", "train_loss"} <= set(ckpt["metrics"])
    assert os.path.isfile(tmp_path / dataset / f"{run}.log.json")
    record = evaluate_gsem.main(evaluate_gsem.get_args([
        "--model_load_path", best, "--data_path", root, "--no-verify_data", "--result_path", str(tmp_path / "r"),
        "--n_examples", "2", "--attacks", "Clean", "--workers", "0", "--no_bar", "--no-sanity_checks"]))
    assert (record["model"], record["dataset_name"]) == (classifier, dataset)


@pytest.mark.slow
def test_reload_restarts_from_best_and_keeps_one_best_file(cifar10_root, tmp_path):
    carry = train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path, "--reload", "2")))
    files = sorted(f for f in os.listdir(tmp_path / "cifar10") if f.endswith(".pt") and "last" not in f)
    assert files == [os.path.basename(carry["best_file"])]
    reloads = [r["reload"] for r in carry["history"]]
    assert reloads == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("argv,crash_at", [(["--reload", "2"], 2), (["--epochs", "3", "--workers", "2"], 2)])
def test_interrupted_run_resumes_to_the_same_result(cifar10_root, tmp_path, monkeypatch, argv, crash_at):
    """Killed in the second reload, or in the second of three epochs with data-loader workers: the resumed run ends
    bit-identical to the uninterrupted one."""
    argv = argv + ["--best_acc", "-1"]
    train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path / "full", *argv)))
    run = run_of("gsem", small(cifar10_root, "cifar10", tmp_path, *argv))
    ref = torch.load(tmp_path / "full" / "cifar10" / f"{run}.last.pt", weights_only=True)

    real, calls = training.train_one_epoch, {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", crash)
    with pytest.raises(SystemExit):  # Ctrl-C: one line, exit 130
        train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path / "part", *argv)))
    monkeypatch.setattr(training, "train_one_epoch", real)
    train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path / "part", *argv, "--resume")))
    got = torch.load(tmp_path / "part" / "cifar10" / f"{run}.last.pt", weights_only=True)
    assert got["context"] == ref["context"] and len(got["history"]) == len(ref["history"])
    assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in ref["history"]]
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k


def _exit_message(capsys, fn):
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_give_clear_messages(cifar10_root, tmp_path, capsys):
    err = _exit_message(capsys, lambda: train_gsem.main(train_gsem.get_args(
        small(cifar10_root, "cifar10", tmp_path, "--classifier_name", "GSeMResNet19"))))
    assert "unknown model name 'GSeMResNet19'" in err and "GSeMResNet18" in err
    err = _exit_message(capsys, lambda: train_gsem.main(train_gsem.get_args(
        small(str(tmp_path / "none"), "svhn", tmp_path))))
    assert "train_32x32.mat" in err
    err = _exit_message(capsys, lambda: train_gsem.main(train_gsem.get_args(
        small(cifar10_root, "cifar10", tmp_path, "--model_load_path", str(tmp_path / "nope.pt")))))
    assert "nope.pt" in err
    err = _exit_message(capsys, lambda: train_gsem.main(train_gsem.get_args(
        small(cifar10_root, "cifar10", tmp_path, "--val_split", "100000"))))
    assert "--val_split" in err


@pytest.mark.slow
def test_val_split_selects_on_held_out_training_images(cifar10_root, tmp_path):
    carry = train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path, "--val_split", "20",
                                                      "--subset", "0", "--batch_size", "40")))
    assert len(carry["history"]) == 1 and 0 <= carry["best"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["none", "attack", "update"])
def test_the_correction_ablation_runs_and_is_named_and_recorded(scope, cifar10_root, tmp_path):
    argv = small(cifar10_root, "cifar10", tmp_path, "--gradient_correction", scope)
    carry = train_gsem.main(train_gsem.get_args(argv))
    assert f"_gradient_correction{scope}_" in os.path.basename(carry["best_file"])
    assert load_checkpoint(carry["best_file"])["args"]["gradient_correction"] == scope


def test_plain_classifiers_are_named_without_alpha_and_beta():
    assert run_of("gsem", ["--classifier_name", "resnet18"]) == "resnet18"
    # a hyperparameter of another objective than --loss changes nothing and is not in the name
    assert run_of("gsem", ["--loss", "mixed", "--trades_beta", "3"]) == "GSeMResNet18_6_4"
    assert run_of("gsem", ["--loss", "trades", "--trades_beta", "3"]) == "GSeMResNet18_6_4_losstrades_trades_beta3.0"
    assert run_of("gsem", []) == "GSeMResNet18_6_4"


def test_mart_correction_scope_flag_is_named():
    argv = ["--correct_adv_forward"]
    assert "_correct_adv_forward" in run_of("mart", argv)
    assert "correct_adv" not in run_of("mart", [])


@pytest.mark.slow
@pytest.mark.parametrize("method,loss,classifier", [
    ("gsem", "pgd_at", "GSeMResNet18"), ("gsem", "trades", "resnet18"), ("awp", "mixed", "GSeMResNet18"),
    ("awp", "trades", "GSeMResNet18")])
def test_every_objective_trains_in_the_one_loop_and_evaluates(method, loss, classifier, cifar10_root, tmp_path):
    import evaluate_gsem

    argv = small(cifar10_root, "cifar10", tmp_path, "--loss", loss, "--classifier_name", classifier)
    carry = SCRIPTS[method].main(SCRIPTS[method].get_args(argv))
    assert f"_loss{loss}" in os.path.basename(carry["best_file"])
    record = evaluate_gsem.main(evaluate_gsem.get_args([
        "--model_load_path", carry["best_file"], "--data_path", cifar10_root, "--no-verify_data", "--result_path",
        str(tmp_path / "r"), "--n_examples", "4", "--attacks", "Clean", "PGD500", "--steps_scale", "0.002",
        "--att_eot_num", "1", "--workers", "0", "--no_bar", "--no-sanity_checks"]))
    assert record["model"] == ("resnet18" if classifier == "resnet18" else classifier)


def test_fgr_is_an_objective_of_the_gsem_scripts_too(cifar10_root, tmp_path):
    """FGR and IGR are registered objectives: train_gsem.py --loss fgr trains a GSeM model with the flow-gradient
    penalty (double backward through the GSeM modules) and names the run by what acts."""
    result = train_gsem.main(train_gsem.get_args(small(cifar10_root, "cifar10", tmp_path, "--loss", "fgr",
                                                       "--fgr_lamb", "10")))
    assert os.path.basename(result["best_file"]).startswith("GSeMResNet18_6_4_lossfgr_fgr_lamb10.0_")
    record = result["history"][0]
    assert record["train_reg"] > 0 and torch.isfinite(torch.tensor(record["train_loss"]))
