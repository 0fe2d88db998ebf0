"""The results table and figures: three evaluate.py runs with different attack settings leave three distinguishable
rows of results in one file, and one table lists them, with runs of several seeds as mean ± std and the authors'
numbers beside ours; no cell or figure point stands beside numbers measured on other test points; copies count once;
any folder is read."""
import json
import os

import pytest
import torch

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
        assert f" {tables.strip_n(label)} " in header
    assert text.count("\n| cifar10 | vgg11 | plain |") == 1 and os.path.isfile(results / "table.md")
    assert "clean (paper)" not in header  # the authors' numbers are on 10,000 points, these on 8


def test_a_subset_never_stands_beside_the_whole_test_set(cifar10_root, tmp_path, capsys):
    """One checkpoint evaluated on all 64 test points, then on the first 16: two rows of the table and two entries of
    the figures, each with the clean accuracy measured on its own points; the file keeps the whole set's."""
    from models import build_model
    from utils import plots

    torch.manual_seed(1)
    torch.save(build_model("smallcnn", 10).state_dict(), tmp_path / "m.pt")
    common = ["--data_path", cifar10_root, "--no-verify_data", "--workers", "0", "--no_bar", "--checkpoint",
              str(tmp_path / "m.pt"), "--model_name", "smallcnn", "--result_path", str(tmp_path / "r"), "--steps",
              "2", "--attacks", "flow", "--flow_eps", "0.01", "0.02"]
    whole = evaluate.main(evaluate.get_args(common))
    subset = evaluate.main(evaluate.get_args(common + ["--subset", "16"]))
    n_all = whole["clean"]["n"]
    assert n_all > 16 and subset["clean"]["n"] == n_all and subset["val_n"] == n_all  # the whole set's stays
    on_disk = json.loads((tmp_path / "r" / "m.json").read_text())
    assert set(on_disk["cleans"]) == {"16", str(n_all)} and on_disk["val_acc"] == whole["val_acc"]
    for row in on_disk["rows"].values():  # every row carries the clean accuracy of its own points
        assert row["clean_acc"] == on_disk["cleans"][str(row["n_examples"])]["acc"]
    entries = tables.collect(str(tmp_path / "r"))
    assert sorted(e["n"] for e in entries) == [16, n_all]
    for e in entries:
        assert e["clean"] == on_disk["cleans"][str(e["n"])]["acc"]
        assert all(r["n_examples"] == e["n"] for r in e["rows"].values())
    header, rows = tables.build_table(entries)
    assert len(rows) == 2 and header[4] == "points" and {r[4] for r in rows} == {"16", str(n_all)}
    for r in rows:
        clean = on_disk["cleans"][r[4]]["acc"]
        assert r[header.index("clean")] == f"{100 * clean:.2f}"
        for col in header[6:]:
            row = next(v for k, v in on_disk["rows"].items() if tables.strip_n(k) == col
                       and v["n_examples"] == int(r[4]))
            assert r[header.index(col)] == f"{100 * row['acc']:.2f}"
    curves = plots.budget_curves(entries)[("flow", "flow_eps")]
    assert len(curves) == 2 and all(len(points) == 2 for points in curves.values())  # one curve per set of points
    assert {name.rsplit("(n=", 1)[1] for name in curves} == {"16)", f"{n_all})"}
    paths = plots.main(["--result_path", str(tmp_path / "r"), "--out", str(tmp_path / "fig.png")])
    assert len(paths) == 4 and all(os.path.getsize(p) > 10_000 for p in paths)


def test_copies_of_one_result_are_one_run_and_seeds_say_n(tmp_path, capsys):
    rec = {"format": 2, "script": "evaluate.py", "checkpoint_sha256": "a" * 64, "data": {"sha256": "d"},
           "clean": {"acc": 0.9, "n": 10}, "val_acc": 0.9,
           "train_args": {"data_name": "cifar10", "model_name": "vgg11", "fgr_lamb": 100.0, "seed": 0},
           "rows": {"flow": {"attack": "flow", "acc": 0.5, "n_examples": 10}}}
    (tmp_path / "a.json").write_text(json.dumps(rec))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.json").write_text(json.dumps(rec))
    text = tables.main(["--result_path", str(tmp_path)])
    assert "| cifar10 | vgg11 | FGR | λ=100 | 10 | 90.00 | 50.00 |" in text  # one run: no mean over copies
    assert "copy/a.json: the same checkpoint evaluated on the same points as a.json" in capsys.readouterr().err
    seed1 = {**rec, "checkpoint_sha256": "b" * 64, "train_args": {**rec["train_args"], "seed": 1},
             "clean": {"acc": 0.7, "n": 10}, "rows": {"flow": {"attack": "flow", "acc": 0.3, "n_examples": 10}}}
    (tmp_path / "b.json").write_text(json.dumps(seed1))
    text = tables.main(["--result_path", str(tmp_path)])
    assert "| 10 | 80.00 ± 14.14 (n=2) | 40.00 ± 14.14 (n=2) |" in text


def test_any_folder_is_read_with_one_note_per_unused_file(tmp_path, capsys):
    from utils import plots

    (tmp_path / "latin1.json").write_bytes('{"val_acc": 0.5, "name": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "list_rows.json").write_text(json.dumps({"format": 2, "val_acc": 0.9, "clean": {"acc": 0.9, "n": 4},
                                                         "rows": [{"acc": 0.1}]}))
    (tmp_path / "other.json").write_text(json.dumps({"name": "an unrelated file", "values": [1, 2]}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "good.json").write_text(json.dumps({"val_acc": 0.9, "attacks": {"flow": {"acc": 0.4}},
                                                    "args": {"data_name": "cifar10", "model_name": "vgg11"}}))
    tables.main(["--result_path", str(tmp_path)])
    err = capsys.readouterr().err
    for name, why in (("latin1.json", "not UTF-8"), ("list_rows.json", "its rows are not an object"),
                      ("other.json", "not a result file"), ("broken.json", "not valid JSON")):
        assert err.count(f"note: skipped {name}: {why}") == 1, err
    assert len(plots.main(["--result_path", str(tmp_path), "--out", str(tmp_path / "f.png")])) == 2
    assert capsys.readouterr().err.count("note: skipped") == 4


def test_seeds_are_merged_into_mean_and_std_and_formats(tmp_path):
    for seed, acc in ((0, 0.5), (1, 0.7)):
        rec = {"val_acc": 0.9, "attacks": {"flow": {"acc": acc}},
               "train_args": {"data_name": "cifar10", "model_name": "vgg11", "reg": "fgr", "fgr_lamb": 300.0,
                              "adv_train": "none", "seed": seed}}
        (tmp_path / f"r{seed}.json").write_text(json.dumps(rec))
    text = tables.main(["--result_path", str(tmp_path)])
    assert "60.00 ± 14.14 (n=2)" in text and "| 85.36 | 55.15 |" in text  # points unknown (earlier layout)
    assert "\\pm" in tables.main(["--result_path", str(tmp_path), "--format", "latex"])
    alp = {"val_acc": 0.8, "attacks": {"flow": {"acc": 0.4}},
           "train_args": {"data_name": "cifar10", "model_name": "vgg11", "fgr_lamb": 0.0, "loss": "alp"}}
    (tmp_path / "alp.json").write_text(json.dumps(alp))  # main.py --loss alp: its own method, not "plain"
    assert "| cifar10 | vgg11 | alp (flow) |" in tables.main(["--result_path", str(tmp_path)])
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
    assert "| cifar10 | GSeMResNet18 | gsem | α=6, β=4 | – | 80.00 | – | 50.00 |" in text
    assert "| cifar10 | GSeMResNet18 | gsem | α=5, β=3 | 10 | 70.00 | – | 40.00 |" in text
    assert "| cifar10 | vgg11 | plain |  | 10 | 90.00 | 10.00 | – |" in text


@pytest.mark.parametrize("n, drawn", [(10000, True), (500, False)])
def test_the_authors_curve_is_drawn_only_beside_results_on_their_points(tmp_path, n, drawn):
    """``--reference`` overlays the authors' CIFAR-10 VGG-11 points on a run measured on all 10,000 test images, and
    says why it adds nothing for a run on a subset; the figure is written either way."""
    from utils import plots

    record = {"format": 2, "script": "evaluate.py", "checkpoint_sha256": "ab", "data": {"sha256": "x", "n": n},
              "train_args": {"data_name": "cifar10", "model_name": "vgg11", "fgr_lamb": 300.0, "reg": "fgr"},
              "clean": {"acc": 0.9, "n": n}, "rows": {"flow": {"acc": 0.5, "attack": "flow", "n_examples": n}}}
    (tmp_path / "r.json").write_text(json.dumps(record))
    said = []
    paths = plots.plot(tables.collect(str(tmp_path)), str(tmp_path / "fig.png"), reference=True, say=said.append)
    assert all(os.path.getsize(p) > 0 for p in paths)
    assert bool(said) != drawn and all("adds nothing" in s for s in said)


def test_a_demonstration_block_in_the_docs_is_replaced_whole(tmp_path):
    """``utils.plots.to_docs``: the block between a tag's markers is replaced (command, machine, table, figure) and
    the rest of the page kept; a page without the block gets it appended; the figure is copied beside the docs."""
    from utils import plots

    (tmp_path / "fig.png").write_bytes(b"png")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("intro\n<!-- demo:start -->\nold table\n<!-- demo:end -->\noutro\n")
    for _ in range(2):  # twice: the block is replaced, not added again
        plots.to_docs("page.md", "demo", "| new |\n", str(tmp_path / "fig.png"), "figures/x.png", command="python d.py",
                      note="a CPU", alt="a figure", docs=str(tmp_path / "docs"))
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert text.count("<!-- demo:start -->") == 1 and "Command: `python d.py`; measured on a CPU." in text
    assert "| new |" in text and "![a figure](figures/x.png)" in text
    assert (tmp_path / "docs" / "figures" / "x.png").read_bytes() == b"png"
    plots.to_docs("page.md", "other", "| t |\n", str(tmp_path / "fig.png"), "figures/y.png", command="c", note="n",
                  alt="f", docs=str(tmp_path / "docs"))
    assert page.read_text().rstrip().endswith("<!-- other:end -->")
