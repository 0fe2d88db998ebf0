"""Never a silent wrong number: a diverged run stops with one line and saves nothing, finished work is never
overwritten, the checkpoint's settings win over missing flags, unwritable outputs fail before any work, tampered data
runs nothing, and the command lines speak in one line."""
import json
import os
import pickle
import shutil

import pytest
import torch
import torch.nn as nn

import evaluate
import evaluate_gsem
import main
import train_gsem
import train_gsem_awp
import train_gsem_mart
from models import build_model
from utils import training
from utils.checkpoint import Checkpointer
from utils.datasets import load_dataset
from utils.errors import UserError
from utils.losses import cross_entropy
from utils.results import write_json
from utils.training import Diverged, TrainStep, fit

SCRIPTS = [main, evaluate, train_gsem, train_gsem_mart, train_gsem_awp, evaluate_gsem]


def fgr_args(root, tmp, *extra):
    return ["--data_path", root, "--no-verify_data", "--data_name", "cifar10", "--model_name", "vgg11",
            "--weight_path", str(tmp / "w"), "--subset", "16", "--batch_size", "8", "--epochs", "1", "--workers", "0",
            "--no_bar", *extra]


def eval_args(root, tmp, *extra):
    return ["--data_path", root, "--no-verify_data", "--subset", "16", "--workers", "0", "--no_bar", "--steps", "1",
            "--result_path", str(tmp / "r"), *extra]


def exit_2(capsys, fn) -> str:
    with pytest.raises(SystemExit) as e:
        fn()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- non-finite guard ---------------------------------------------------------------------------------------------

def test_a_diverging_fgr_run_stops_at_the_first_step_and_saves_nothing(cifar10_root, tmp_path, capsys):
    err = exit_2(capsys, lambda: main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "1e38"))))
    assert "diverged at epoch 1, step 1/2" in err and "loss inf" in err and "reg " in err
    assert "lambda too large for the batch size" in err and "nothing was saved" in err
    assert not [f for f in os.listdir(tmp_path / "w") if not f.startswith(".")]


class NaNAt:
    """Cross-entropy, except at the ``k``-th call, where the loss is NaN."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    def __call__(self, model, x_in, y, x):
        self.calls += 1
        loss, logits, terms = cross_entropy(model, x_in, y, x)
        return (loss * float("nan") if self.calls == self.k else loss), logits, {"ce": loss}


def test_the_loop_names_the_first_non_finite_step_and_keeps_the_last_good_state(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    loader = [(torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(4)]
    ckpt = Checkpointer(str(tmp_path / "r.last.pt"), str(tmp_path / "r.log.json"), {}, result_keys=[],
                        best_path=str(tmp_path / "r.pt"),
                        select_key="val_acc")
    with pytest.raises(Diverged, match=r"epoch 2, step 3/4: loss nan, ce [0-9.]+ .*the last good state is"):
        fit(TrainStep(model, opt, NaNAt(7)), loader, sched, lambda: {"val_acc": 0.5}, ckpt, epochs=3, bar=False,
            log=lambda s: None)
    last = torch.load(tmp_path / "r.last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(v.isfinite().all() for v in last["model"].values())
    assert json.loads((tmp_path / "r.log.json").read_text())["epochs"][0]["epoch"] == 1


def test_evaluation_refuses_a_checkpoint_with_non_finite_weights(cifar10_root, tmp_path, capsys):
    sd = build_model("vgg11", 10).state_dict()
    sd["classifier.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(
        eval_args(cifar10_root, tmp_path, "--checkpoint", str(tmp_path / "nan.pt")))))
    assert "non-finite weights" in err and "diverged" in err


def test_json_is_strictly_valid(tmp_path):
    write_json(str(tmp_path / "a.json"), {"x": float("nan"), "y": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"x": None, "y": [None, 1.5]}


# --- nothing overwritten ------------------------------------------------------------------------------------------

def test_a_rerun_is_refused_without_resume_or_overwrite(cifar10_root, tmp_path, capsys):
    argv = fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0")
    main.main(main.get_args(argv))
    name = "cifar10_vgg11_epochs1_batch_size8_subset16"  # the smoke settings are in the name
    first = (tmp_path / "w" / f"{name}.pt").read_bytes()
    err = exit_2(capsys, lambda: main.main(main.get_args(argv)))
    assert f"{name}.last.pt exists" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "w" / f"{name}.pt").read_bytes() == first
    main.main(main.get_args(argv + ["--overwrite", "--seed", "0", "--lr", "0.01"]))  # same name, replaced on request
    assert json.loads((tmp_path / "w" / f"{name}.log.json").read_text())["args"]["overwrite"] is True


def test_an_overwriting_run_resumes_with_resume_alone(cifar10_root, tmp_path, monkeypatch):
    """Ctrl-C says "run the same command with --resume": --overwrite, --bar and --verify_data do not block it."""
    argv = fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0", "--epochs", "2")
    main.main(main.get_args(argv))
    real, calls = training.train_one_epoch, {"n": 0}

    def crash_on_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", crash_on_second_epoch)
    with pytest.raises(SystemExit):
        main.main(main.get_args(argv + ["--overwrite"]))
    monkeypatch.setattr(training, "train_one_epoch", real)
    main.main(main.get_args(argv + ["--resume", "--bar"]))
    log = json.loads((tmp_path / "w" / "cifar10_vgg11_epochs2_batch_size8_subset16.log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1, 2]


def test_a_smoke_run_never_takes_the_reference_name(cifar10_root, tmp_path):
    main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0")))
    assert not (tmp_path / "w" / "cifar10_vgg11.pt").exists()


@pytest.mark.slow
def test_the_three_gsem_scripts_in_a_row_keep_three_models(cifar10_root, tmp_path):
    argv = ["--dataset_name", "cifar10", "--data_path", cifar10_root, "--no-verify_data", "--model_save_path",
            str(tmp_path), "--subset", "8", "--batch_size", "4", "--epochs", "1", "--reload", "1", "--gra_eot_num", "1",
            "--att_eot_num", "1", "--attack_steps", "1", "--workers", "0", "--no_bar", "--best_acc", "-1"]
    scripts = (train_gsem, train_gsem_mart, train_gsem_awp)
    files = [script.main(script.get_args(argv))["best_file"] for script in scripts]
    assert len(set(files)) == 3 and all(os.path.isfile(f) for f in files)
    names = [os.path.basename(f) for f in files]
    assert names[0].startswith("GSeMResNet18_6_4_batch_size4_epochs1") and names[1].startswith("GSeMResNet18_6_4_mart_")
    assert names[2].startswith("GSeMResNet18_6_4_awp_")
    lasts = [f for f in os.listdir(tmp_path / "cifar10") if f.endswith(".last.pt")]
    assert len(lasts) == 3


# --- the checkpoint is the source of truth --------------------------------------------------------------------------

def test_a_normalised_checkpoint_is_evaluated_normalised_without_the_flag(cifar10_root, tmp_path, capsys):
    main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0", "--normalize")))
    ckpt = str(tmp_path / "w" / "cifar10_vgg11_normalize_epochs1_batch_size8_subset16.pt")
    plain = evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", ckpt)))
    flagged = evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", ckpt, "--normalize")))
    assert plain["args"]["normalize"] is True and plain["val_acc"] == flagged["val_acc"]
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", ckpt,
                                                                           "--no-normalize"))))
    assert "--normalize False contradicts the checkpoint" in err


# --- outputs checked before work --------------------------------------------------------------------------------------

def test_an_unwritable_output_folder_fails_before_any_epoch(cifar10_root, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(training, "train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    err = exit_2(capsys, lambda: main.main(main.get_args(
        fgr_args(cifar10_root, tmp_path, "--weight_path", str(tmp_path / "file" / "w")))))
    assert "cannot write to the output folder" in err and "file" in err
    sd = build_model("vgg11", 10).state_dict()
    torch.save(sd, tmp_path / "ok.pt")
    monkeypatch.setattr(evaluate, "run_attacks", lambda *a, **k: pytest.fail("an attack started"))
    unwritable = ["--checkpoint", str(tmp_path / "ok.pt"), "--result_path", str(tmp_path / "file" / "r")]
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, *unwritable))))
    assert "cannot write to the output folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_before_any_epoch(cifar10_root, tmp_path, capsys):
    (tmp_path / "w").mkdir()
    os.chmod(tmp_path / "w", 0o555)
    err = exit_2(capsys, lambda: main.main(main.get_args(fgr_args(cifar10_root, tmp_path))))
    assert "cannot write to the output folder" in err


# --- safe data -------------------------------------------------------------------------------------------------------

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_cifar_file_is_named_and_runs_nothing(cifar10_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(cifar10_root, "cifar10"), root)
    marker = tmp_path / "pwned"
    with open(root / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": Payload(marker)}, f, protocol=2)
    with pytest.raises(UserError, match=r"batches.meta is not a CIFAR data file .*posix.system is not allowed"):
        load_dataset("cifar10", str(root), False, verify=False)
    with pytest.raises(UserError, match="fails its MD5 check"):  # the default: the official files' MD5 sums
        load_dataset("cifar10", str(root), False)
    assert not marker.exists()


def test_the_official_md5_check_is_on_by_default_and_names_the_file(cifar10_root, tmp_path, capsys):
    argv = [a for a in fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0") if a != "--no-verify_data"]
    err = exit_2(capsys, lambda: main.main(main.get_args(argv)))
    assert "data_batch_1 fails its MD5 check" in err and "--no-verify_data" in err


# --- command lines ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda m: m.__name__)
def test_help_shows_the_defaults(script, capsys):
    argv = ["--model_load_path", "x.pt"] if script is evaluate_gsem else []
    with pytest.raises(SystemExit):
        script.get_args(argv + ["--help"])
    text = capsys.readouterr().out
    assert text.count("(default: ") >= 10


@pytest.mark.parametrize("argv,expected", [
    (["--fgr_lamb", "inf"], "must be a finite number"),
    (["--fgr_lamb", "-1"], "must be a number >= 0"),
    (["--rs_sigma", "8"], "124 px at 32x32"),
])
def test_a_bad_fgr_flag_is_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main.get_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and err.count("\n") == 1 and "--help" in err


@pytest.mark.parametrize("script,argv,expected", [
    (evaluate, ["--flow_eps", "8"], "124 px at 32x32"),
    (evaluate_gsem, ["--model_load_path", "x.pt", "--eps", "0.031"], "looks like a fraction: use 7.905"),
    (train_gsem, ["--eps", "0.03"], "in 1/255 units"),
])
def test_units_are_checked(script, argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        script.get_args(argv)
    assert e.value.code == 2 and expected in capsys.readouterr().err


def test_every_argparse_flag_has_a_help_text():
    import argparse

    for script in SCRIPTS:
        captured = {}
        real = argparse.ArgumentParser.parse_args

        def grab(self, *a, captured=captured, real=real, **k):
            captured["parser"] = self
            return real(self, *a, **k)

        argparse.ArgumentParser.parse_args = grab
        try:
            script.get_args(["--model_load_path", "x.pt"] if script is evaluate_gsem else [])
        finally:
            argparse.ArgumentParser.parse_args = real
        for action in captured["parser"]._actions:
            assert action.help, f"{script.__name__}: {action.option_strings} has no help"


def test_a_subset_larger_than_the_data_is_said(cifar10_root, tmp_path, capsys):
    main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0", "--subset", "100000")))
    assert "--subset 100000 is more than the" in capsys.readouterr().out


def test_ctrl_c_is_one_line_that_says_what_was_kept(cifar10_root, tmp_path, capsys, monkeypatch):
    real, calls = training.train_one_epoch, {"n": 0}

    def interrupt_at(k):
        def train_one_epoch(*a, **kw):
            calls["n"] += 1
            if calls["n"] == k:
                raise KeyboardInterrupt
            return real(*a, **kw)
        return train_one_epoch

    for k, said in ((1, "no epoch had finished, nothing was saved"), (2, "1 finished epoch saved in")):
        calls["n"] = 0
        monkeypatch.setattr(training, "train_one_epoch", interrupt_at(k))
        with pytest.raises(SystemExit) as e:
            main.main(main.get_args(fgr_args(cifar10_root, tmp_path / str(k), "--fgr_lamb", "0", "--epochs", "2")))
        err = capsys.readouterr().err.strip()
        assert e.value.code == 130 and said in err and "\n" not in err and "Traceback" not in err
        assert ("--resume" in err) == (k == 2)


def test_two_evaluations_of_one_checkpoint_at_once_keep_both_rows(tmp_path):
    """Each write re-reads the file under a lock and merges: the writer that finishes last no longer drops the
    other's rows (both started before either wrote)."""
    from utils.results import ResultFile

    path = str(tmp_path / "c.json")
    first = ResultFile(path, {"checkpoint_sha256": "abc"}, say=lambda *a: None)
    second = ResultFile(path, {"checkpoint_sha256": "abc"}, say=lambda *a: None)
    first.add("flow", {"acc": 0.1})
    first.write(lambda rec: [])
    second.add("adef", {"acc": 0.2})
    second.write(lambda rec: [])
    assert set(json.loads((tmp_path / "c.json").read_text())["rows"]) == {"flow", "adef"}


# --- nothing deleted, nothing silently wrong (the second round) -------------------------------------------------------

def test_a_crafted_resume_state_deletes_nothing_outside_the_run(cifar10_root, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    argv = fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0")
    main.main(main.get_args(argv))
    last = tmp_path / "w" / "cifar10_vgg11_epochs1_batch_size8_subset16.last.pt"
    for named in (str(victim), "../victim.txt", os.path.relpath(victim)):
        state = torch.load(last, weights_only=True)
        state["best_file"] = named
        torch.save(state, last)
        main.main(main.get_args(argv + ["--overwrite"]))
        assert victim.read_text() == "the user's file", named
    state = torch.load(last, weights_only=True)
    assert state["best_file"] == "cifar10_vgg11_epochs1_batch_size8_subset16.pt"  # relative to the run's folder


@pytest.mark.parametrize("script,argv,expected", [
    (train_gsem, ["--best_acc", "nan"], "must be a finite number"),
    (train_gsem, ["--best_acc", "1"], "must be below 1"),
    (train_gsem, ["--seed", str(2 ** 64)], "must be an integer in [0, 2^63 - 1]"),
    (evaluate_gsem, ["--model_load_path", "x.pt", "--eps", "300"], "at most 255"),
    (evaluate, ["--rt_max_rotation", "1000"], "at most 180"),
    (evaluate, ["--rt_max_translation", "100"], "at most 16 (half of the 32 x 32 images"),
    (evaluate_gsem, ["--model_load_path", "x.pt", "--pgd_alpha", "300"], "at most 255"),
    (main, ["--momentum", "2"], "must be in [0, 1)"),
    (train_gsem, ["--momentum", "1"], "must be in [0, 1)"),
    (train_gsem, ["--step_size", "256"], "at most 255"),
])
def test_values_out_of_range_are_refused(script, argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        script.get_args(argv)
    assert e.value.code == 2 and expected in capsys.readouterr().err


def test_labels_outside_the_classes_are_refused(cifar10_root, tmp_path):
    from synthetic import _dump

    root = tmp_path / "data"
    shutil.copytree(os.path.join(cifar10_root, "cifar10"), root)
    batch = pickle.load(open(root / "cifar-10-batches-py" / "test_batch", "rb"), encoding="latin1")
    batch["labels"][3] = 10
    _dump(root / "cifar-10-batches-py" / "test_batch", batch)
    with pytest.raises(UserError, match=r"test labels of cifar10 .* run outside 0\.\.9 \(1 labels, e\.g\. 10\)"):
        load_dataset("cifar10", str(root), False, verify=False)


def test_evaluate_gsem_reads_an_fgr_checkpoint_as_evaluate_does(cifar10_root, tmp_path):
    main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0")))
    ckpt = str(tmp_path / "w" / "cifar10_vgg11_epochs1_batch_size8_subset16.pt")
    fgr = evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", ckpt, "--attacks",
                                                    "Clean")))
    gsem = evaluate_gsem.main(evaluate_gsem.get_args([
        "--model_load_path", ckpt, "--data_path", cifar10_root, "--no-verify_data", "--subset", "16", "--workers",
        "0", "--no_bar", "--result_path", str(tmp_path / "r2"), "--attacks", "Clean", "--no-sanity_checks"]))
    assert gsem["model"] == "vgg11" and gsem["clean"]["flags"] == fgr["clean"]["flags"]  # the same preprocessing


def test_a_bare_authors_checkpoint_takes_alpha_and_beta_from_its_name(cifar10_root, tmp_path, capsys):
    torch.save(build_model("GSeMResNet18", 10, alpha=5, beta=3).state_dict(), tmp_path / "GSeMResNet18_5_3_0.61.pt")
    argv = ["--model_load_path", str(tmp_path / "GSeMResNet18_5_3_0.61.pt"), "--data_path", cifar10_root,
            "--no-verify_data", "--subset", "4", "--workers", "0", "--no_bar", "--result_path", str(tmp_path / "r"),
            "--attacks", "Clean", "--no-sanity_checks"]
    record = evaluate_gsem.main(evaluate_gsem.get_args(argv))
    assert (record["alpha"], record["beta"]) == (5, 3)
    err = exit_2(capsys, lambda: evaluate_gsem.main(evaluate_gsem.get_args(argv + ["--alpha", "6"])))
    assert "--alpha 6 contradicts the checkpoint's name" in err


def test_results_are_keyed_by_the_data_they_were_computed_on(cifar10_root, tmp_path, capsys):
    from synthetic import write_cifar10

    torch.save(build_model("vgg11", 10).state_dict(), tmp_path / "m.pt")
    other = tmp_path / "other"
    write_cifar10(str(other), n_train=10, n_test=40, seed=5)
    for root in (cifar10_root, str(other)):
        evaluate.main(evaluate.get_args(eval_args(root, tmp_path, "--checkpoint", str(tmp_path / "m.pt"))))
    assert "results of this checkpoint on other data" in capsys.readouterr().out
    assert len([f for f in os.listdir(tmp_path / "r") if f.endswith(".json")]) == 2  # the first moved aside


@pytest.mark.parametrize("content,aside", [
    ("[1, 2]", "unreadable"), ('{"format": 2, "rows": [1]}', "unreadable"),
    ('{"format": 2, "checkpoint_sha256": "../../x/y", "rows": {}}', "______x_y")])
def test_malformed_result_files_are_moved_aside_in_one_line(cifar10_root, tmp_path, capsys, content, aside):
    torch.save(build_model("vgg11", 10).state_dict(), tmp_path / "m.pt")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "m.json").write_text(content)
    evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", str(tmp_path / "m.pt"))))
    assert (tmp_path / "r" / f"m.{aside}.json").read_text() == content
    assert json.loads((tmp_path / "r" / "m.json").read_text())["format"] == 2


def test_a_full_disk_after_an_evaluation_leaves_the_rows_where_the_message_says(cifar10_root, tmp_path, capsys,
                                                                                monkeypatch):
    import errno

    from utils import results

    torch.save(build_model("vgg11", 10).state_dict(), tmp_path / "m.pt")
    monkeypatch.setattr(results.tempfile, "gettempdir", lambda: str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "write_result", full)
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint",
                                                                          str(tmp_path / "m.pt")))))
    assert "No space left on device" in err and str(tmp_path / "rescue" / "m.json") in err
    assert "flow [flow_steps=1, n=16]" in json.loads((tmp_path / "rescue" / "m.json").read_text())["rows"]


def test_a_full_disk_during_training_is_one_line_and_the_log_lists_only_saved_epochs(cifar10_root, tmp_path, capsys,
                                                                                     monkeypatch):
    import errno

    from utils import checkpoint

    real, calls = checkpoint.atomic_save, {"n": 0}

    def fills_up(obj, path):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 writes the best and the last state; the disk is full from epoch 2 on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", fills_up)
    err = exit_2(capsys, lambda: main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0",
                                                                   "--epochs", "2", "--lr", "1e-9"))))
    assert "cannot write the state of epoch 2 (No space left on device)" in err and "last good state" in err
    log = json.loads((tmp_path / "w" / "cifar10_vgg11_epochs2_batch_size8_lr1e-09_subset16.log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1]


def test_messages_say_what_happened(cifar10_root, tmp_path, capsys):
    # a malicious checkpoint is refused, and torch's advice to load it unsafely is not passed on
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Payload(tmp_path / "pwned")}, tmp_path / "evil.pt")
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint",
                                                                          str(tmp_path / "evil.pt")))))
    assert "refused to load" in err and "weights_only=False" not in err and not (tmp_path / "pwned").exists()
    # a model file in the resume state's place
    main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0")))
    stem = tmp_path / "w" / "cifar10_vgg11_epochs1_batch_size8_subset16"
    shutil.copy(f"{stem}.pt", f"{stem}.last.pt")
    err = exit_2(capsys, lambda: main.main(main.get_args(fgr_args(cifar10_root, tmp_path, "--fgr_lamb", "0",
                                                                   "--resume"))))
    assert "is not a resume state" in err and "other settings" not in err
    # "checkpoint not found" names the runs that are there
    argv = [a for a in eval_args(cifar10_root, tmp_path) if a != "--no_bar"] + ["--weight_path", str(tmp_path / "w")]
    err = exit_2(capsys, lambda: evaluate.main(evaluate.get_args(argv)))
    assert "cifar10_vgg11_epochs1_batch_size8_subset16.pt" in err and "--checkpoint" in err
    # evaluate.py prints the settings it uses: the checkpoint's
    evaluate.main(evaluate.get_args(eval_args(cifar10_root, tmp_path, "--checkpoint", f"{stem}.pt",
                                              "--model_name", "vgg11")))
    args_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("args:"))
    assert json.loads(args_line[len("args: "):])["model_name"] == "vgg11"


def test_a_failed_download_leaves_no_empty_folders(tmp_path):
    with pytest.raises(UserError, match="could not be downloaded"):
        load_dataset("cifar10", str(tmp_path / "new" / "data"), False)
    assert not (tmp_path / "new").exists()
