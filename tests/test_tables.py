"""The results table: three evaluate.py runs with different attack settings leave three distinguishable rows of
results in one file, and one table lists them, with runs of several seeds as mean ± std and the authors' numbers
beside ours."""
import json
import os

import pytest

import evaluate
import main
from utils import tables


@pytest.fixture(scope="module")
def results(cifar10_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tables")
    common = ["--data_path", cifar10_root, "--no-verify_data", "--model_name", "vgg11", "--fgr_lamb", "0",
              "--workers", "0", "--no_bar", "--weight_path", str(tmp / "w")]
    main.main(main.get_args(common + ["--epochs", "1", "--subset", "16", "--batch_size", "8"]))
    ckpt = str(tmp / "w" / "cifar10_vgg11_epochs1_batch_size8_subset16.pt")
    for extra in (["--steps", "2"], ["--steps", "1"], ["--steps", "2", "--flow_eps", "0.02"]):
        evaluate.main(evaluate.get_args(common + ["--checkpoint", ckpt, "--result_path", str(tmp / "r"),
                                                  "--subset", "8", *extra]))
    return tmp / "r"


def test_three_attack_settings_in_a_row_leave_three_rows_and_one_table(results, capsys):
    files = [f for f in os.listdir(results) if f.endswith(".json")]
    assert files == ["cifar10_vgg11_epochs1_batch_size8_subset16.json"]
    rows = json.loads((results / files[0]).read_text())["rows"]
    assert len(rows) == 3 and len({r["settings"]["flow_steps"] for r in rows.values()}) == 2
    text = tables.main(["--result_path", str(results)])
    header = text.splitlines()[0]
    for label in rows:
        assert f" {label} " in header
    assert text.count("\n| cifar10 | vgg11 | plain |") == 1 and os.path.isfile(results / "table.md")
    assert "clean (paper)" in header  # CIFAR-10 VGG-11 lambda 0: the authors' result file stands beside ours
    assert "| 90.27 | 6.41 |" in text


def test_seeds_are_merged_into_mean_and_std_and_formats(tmp_path):
    for seed, acc in ((0, 0.5), (1, 0.7)):
        rec = {"val_acc": 0.9, "attacks": {"flow": {"acc": acc}},
               "train_args": {"data_name": "cifar10", "model_name": "vgg11", "reg": "fgr", "fgr_lamb": 300.0,
                              "adv_train": "none", "seed": seed}}
        (tmp_path / f"r{seed}.json").write_text(json.dumps(rec))
    text = tables.main(["--result_path", str(tmp_path)])
    assert "60.00 ± 14.14 (n=2)" in text and "| 85.36 | 55.15 |" in text
    assert "\\pm" in tables.main(["--result_path", str(tmp_path), "--format", "latex"])
    assert tables.main(["--result_path", str(tmp_path), "--format", "csv"]).startswith("dataset,model,method")


def test_no_result_files_is_one_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tables.main(["--result_path", str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: ")


def test_both_layouts_of_both_scripts_make_one_table(tmp_path):
    """Files of the earlier per-script layouts (format 1) and of the shared one (format 2) are read side by side."""
    gsem_args = {"method": "gsem", "seed": 0}
    old_gsem = {"model": "GSeMResNet18", "dataset_name": "cifar10", "alpha": 6, "beta": 4, "train_args": gsem_args,
                "results": {"Clean": {"acc": 0.8}, "PGD500": {"acc": 0.5}}}
    new_gsem = {"format": 2, "script": "evaluate_gsem.py", "model": "GSeMResNet18", "dataset_name": "cifar10",
                "alpha": 5, "beta": 3, "train_args": gsem_args, "clean": {"acc": 0.7, "n": 10},
                "rows": {"PGD500": {"acc": 0.4}}}
    new_fgr = {"format": 2, "script": "evaluate.py", "val_acc": 0.9, "clean": {"acc": 0.9, "n": 10},
               "train_args": {"data_name": "cifar10", "model_name": "vgg11", "fgr_lamb": 0.0},
               "rows": {"flow": {"acc": 0.1}}}
    for name, rec in (("old_gsem", old_gsem), ("new_gsem", new_gsem), ("new_fgr", new_fgr)):
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    text = tables.main(["--result_path", str(tmp_path)])
    assert "| cifar10 | GSeMResNet18 | gsem | α=6, β=4 | 80.00 | – | 50.00 |" in text
    assert "| cifar10 | GSeMResNet18 | gsem | α=5, β=3 | 70.00 | – | 40.00 |" in text
    assert "| cifar10 | vgg11 | plain |  | 90.00 | 10.00 | – |" in text
    from utils import plots

    assert [r["_file"] for r in plots.load_results(str(tmp_path))] == ["new_fgr.json"]
