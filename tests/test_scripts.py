"""main.py and evaluate.py end to end on synthetic CIFAR-10, resume, and the clear-error paths."""
import json
import os

import pytest
import torch

import evaluate
import main
from models import build_model
from utils import checkpoint as ckpt_mod
from utils import training
from utils.cli import fgr_run_name

RUN = "cifar10_vgg11_fgr_300.0_rs_0.01"  # the reference's name
SMOKE = RUN + "_epochs1_batch_size16_subset32"  # the fixture's run: its settings off the recipe are in the name


def train_args(root, tmp, *extra):
    return ["--data_path", root, "--no-verify_data", "--data_name", "cifar10", "--model_name", "vgg11",
            "--fgr_lamb", "300", "--weight_path", str(tmp / "w"), "--subset", "32", "--batch_size", "16",
            "--workers", "0", "--no_bar", *extra]


def eval_args(root, tmp, *extra):
    return ["--data_path", root, "--no-verify_data", "--data_name", "cifar10", "--model_name", "vgg11",
            "--fgr_lamb", "300", "--weight_path", str(tmp / "w"), "--result_path", str(tmp / "r"), "--subset", "16",
            "--workers", "0", "--steps", "3", "--no_bar", "--checkpoint", str(tmp / "w" / f"{SMOKE}.pt"), *extra]


@pytest.fixture(scope="module")
def trained(cifar10_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    main.main(main.get_args(train_args(cifar10_root, tmp, "--epochs", "1")))
    return tmp


@pytest.mark.parametrize("lamb,name", [("300", RUN), ("0", "cifar10_vgg11")])
def test_seed_commands_parse_verbatim_and_name_runs_as_the_reference(lamb, name):
    seed = ["--data_path", "your_path", "--data_name", "cifar10", "--model_name", "vgg11", "--fgr_lamb", lamb]
    p = main.parser()
    args = main.get_args(seed)
    assert fgr_run_name(args, vars(p.parse_args([])), p.result_flags()) == name
    p, identity = evaluate.parser()
    assert fgr_run_name(evaluate.get_args(seed), vars(p.parse_args([])), identity) == name
    assert (args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay, args.milestones,
            args.rs_sigma, args.augment) == (80, 128, 0.01, 0.9, 5e-4, [40, 60], 0.01, "reference")
    args = evaluate.get_args(seed)
    assert (args.flow_eps, args.flow_steps, args.batch_size, args.attacks) == (0.01, 100, 128, ["flow"])
    p = main.parser()  # the flow AT settings act only with --adv_train: not in the name of a run without it
    assert fgr_run_name(main.get_args(seed + ["--adv_eps", "0.02"]), vars(p.parse_args([])), p.result_flags()) == name
    flow_at = main.get_args(seed + ["--adv_eps", "0.02", "--adv_train", "flow"])
    assert fgr_run_name(flow_at, vars(p.parse_args([])), p.result_flags()) == name + "_adv_trainflow_adv_eps0.02"


def test_train_writes_a_named_checkpoint_with_metadata(trained):
    path = trained / "w" / f"{SMOKE}.pt"
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {"model", "model_spec", "args", "epoch", "metrics"} and "optimizer" not in ckpt  # weights only
    assert ckpt["model_spec"] == {"name": "vgg11", "num_classes": 10, "options": {"in_channels": 3}, "normalize": None}
    last = torch.load(trained / "w" / f"{SMOKE}.last.pt", weights_only=True)
    assert set(last) >= {"model", "args", "epoch", "metrics", "optimizer", "scheduler", "rng", "history"}
    assert ckpt["epoch"] == 1 and ckpt["args"]["fgr_lamb"] == 300.0 and ckpt["args"]["epochs"] == 1
    assert "train_reg" in ckpt["metrics"] and ckpt["metrics"]["train_reg"] > 0
    log = json.loads((trained / "w" / f"{SMOKE}.log.json").read_text())
    assert log["args"]["model_name"] == "vgg11" and len(log["epochs"]) == 1
    assert not [f for f in os.listdir(trained / "w") if f.startswith(".tmp")]


def test_evaluate_writes_json_keyed_by_checkpoint_and_settings(cifar10_root, trained, capsys):
    record = evaluate.main(evaluate.get_args(eval_args(cifar10_root, trained)))
    out = json.loads((trained / "r" / f"{SMOKE}.json").read_text())
    assert 0 <= out["val_acc"] <= 1 and out["val_n"] == 16
    row = out["rows"]["flow [flow_steps=3, n=16]"]
    assert row["settings"] == {"flow_eps": 0.01, "flow_steps": 3, "steps_scale": 1.0} and 0 <= row["acc"] <= 1
    assert row["attack_settings"]["steps"] == 3 and row["deformation"]["tnorm_px"].keys() == {"mean", "median"}
    assert out["format"] == 2 and out["clean"]["acc"] == out["val_acc"] and len(out["clean"]["flags"]) == 16
    assert out["adv_acc"] is None  # adv_acc is only the authors' attack at its settings on the whole test set
    assert out == json.loads(json.dumps(record))
    assert "adv   - acc:" in capsys.readouterr().out


def test_a_subset_never_replaces_the_whole_test_set_clean_accuracy(cifar10_root, trained):
    path = trained / "r" / f"{SMOKE}.json"
    full = [a for a in eval_args(cifar10_root, trained) if a not in ("--subset", "16")] + ["--subset", "40"]
    evaluate.main(evaluate.get_args(full))  # the synthetic test set has 40 images: the whole of it
    whole = json.loads(path.read_text())["val_acc"]
    evaluate.main(evaluate.get_args(eval_args(cifar10_root, trained, "--subset", "8")))
    out = json.loads(path.read_text())
    assert out["val_n"] == 40 and out["val_acc"] == whole


def test_reference_name_is_found_from_the_seed_flags(cifar10_root, trained, tmp_path):
    import shutil

    os.makedirs(tmp_path / "w")
    shutil.copy(trained / "w" / f"{SMOKE}.pt", tmp_path / "w" / f"{RUN}.pt")
    args = [a for a in eval_args(cifar10_root, tmp_path) if "--checkpoint" not in a and SMOKE not in a]
    record = evaluate.main(evaluate.get_args(args))
    assert record["checkpoint"] == str(tmp_path / "w" / f"{RUN}.pt")


def test_evaluate_accepts_bare_reference_state_dict(cifar10_root, trained, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model("vgg11", 10).state_dict(), bare)
    record = evaluate.main(evaluate.get_args(eval_args(cifar10_root, trained, "--checkpoint", str(bare),
                                                       "--result_path", str(tmp_path))))
    assert record["checkpoint"] == str(bare) and record["trained_epochs"] is None


def _exit_message(capsys, fn):
    with pytest.raises(SystemExit) as e:
        fn()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_mismatched_checkpoint_is_a_clear_error(cifar10_root, trained, capsys):
    bare = trained / "bare_vgg11.pt"
    torch.save(torch.load(trained / "w" / f"{SMOKE}.pt", weights_only=True)["model"], bare)
    err = _exit_message(capsys, lambda: evaluate.main(evaluate.get_args(
        eval_args(cifar10_root, trained, "--model_name", "vgg13", "--checkpoint", str(bare)))))
    assert "does not match model 'vgg13'" in err and "missing keys" in err
    err = _exit_message(capsys, lambda: evaluate.main(evaluate.get_args(
        eval_args(cifar10_root, trained, "--model_name", "vgg13"))))
    assert "--model_name vgg13 contradicts the checkpoint" in err


def test_corrupt_checkpoint_is_a_clear_error(cifar10_root, trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((trained / "w" / f"{SMOKE}.pt").read_bytes()[:1000])
    err = _exit_message(capsys, lambda: evaluate.main(evaluate.get_args(
        eval_args(cifar10_root, trained, "--checkpoint", str(bad)))))
    assert "corrupt" in err


def test_missing_checkpoint_missing_data_and_unknown_model(cifar10_root, tmp_path, capsys):
    err = _exit_message(capsys, lambda: evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path))))
    assert "checkpoint not found" in err
    err = _exit_message(capsys, lambda: main.main(main.get_args(
        train_args(str(tmp_path / "empty"), tmp_path, "--epochs", "1"))))
    assert "data_batch_1" in err
    err = _exit_message(capsys, lambda: main.main(main.get_args(
        train_args(cifar10_root, tmp_path, "--model_name", "vgg12"))))
    assert "unknown model name 'vgg12'" in err and "vgg11" in err


def test_flag_out_of_range_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        main.get_args(["--fgr_lamb", "-1"])
    assert e.value.code == 2 and "must be a number >= 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("data,workers", [("--no-device_data", "0"), ("--no-device_data", "2"), ("--device_data", "0")])
def test_interrupted_run_resumes_to_the_same_result(cifar10_root, tmp_path, monkeypatch, data, workers):
    """Both data paths (torchvision loader with and without worker processes, dataset on the device) resume
    bit-identically over three epochs, killed in the second."""
    full = tmp_path / "full"
    data = [data, "--workers", workers]
    main.main(main.get_args(train_args(cifar10_root, full, "--epochs", "3", "--fgr_lamb", "10", *data)))
    run = "cifar10_vgg11_fgr_10.0_rs_0.01_epochs3_batch_size16_subset32"
    ref = torch.load(full / "w" / f"{run}.last.pt", weights_only=True)

    part = tmp_path / "part"
    real = training.train_one_epoch
    calls = {"n": 0}

    def crash_on_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during epoch 2
        return real(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", crash_on_second_epoch)
    with pytest.raises(SystemExit) as e:  # Ctrl-C: one line saying how to resume, exit 130
        main.main(main.get_args(train_args(cifar10_root, part, "--epochs", "3", "--fgr_lamb", "10", *data)))
    assert e.value.code == 130
    monkeypatch.setattr(training, "train_one_epoch", real)
    main.main(main.get_args(train_args(cifar10_root, part, "--epochs", "3", "--fgr_lamb", "10", *data, "--resume")))
    got = torch.load(part / "w" / f"{run}.last.pt", weights_only=True)
    assert got["epoch"] == 3 and len(got["history"]) == 3
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    assert [r["train_loss"] for r in got["history"]] == [r["train_loss"] for r in ref["history"]]


def test_other_settings_name_another_run_and_a_resume_state_of_other_settings_is_refused(cifar10_root, trained,
                                                                                         tmp_path, capsys):
    p = main.parser()
    args = main.get_args(train_args(cifar10_root, trained, "--epochs", "1", "--sampler", "gather"))
    name = fgr_run_name(args, vars(p.parse_args([])), p.result_flags())
    assert name == RUN + "_epochs1_batch_size16_samplergather_subset32"
    import shutil

    shutil.copytree(trained / "w", tmp_path / "w")
    state = torch.load(tmp_path / "w" / f"{SMOKE}.last.pt", weights_only=True)
    state["args"]["sampler"] = "gather"  # a state written with another result-changing setting
    torch.save(state, tmp_path / "w" / f"{SMOKE}.last.pt")
    err = _exit_message(capsys, lambda: main.main(main.get_args(
        train_args(cifar10_root, tmp_path, "--epochs", "1", "--resume"))))
    assert "other settings" in err and "sampler: 'gather' -> 'auto'" in err


def test_crash_during_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt_mod.atomic_save({"model": {"w": torch.ones(3)}}, str(path))

    def dying_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.atomic_save({"model": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert torch.equal(ckpt_mod.load_checkpoint(str(path))["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["c.pt"]
