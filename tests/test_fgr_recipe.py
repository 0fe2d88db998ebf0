"""FGR as users run it: lambda that means the same at every batch size, the warm-up, the flat-network warning, an
unfinished run's checkpoint marked, and results that re-apply (``--save_adv``)."""
from argparse import Namespace

import pytest
import torch

import evaluate
import main
from models import build_model
from utils.flow import warp
from utils.losses import gradient_regularized


def lamb_args(**kw):
    return Namespace(**{"fgr_lamb": 300.0, "fgr_lamb_ref_batch": 0, "batch_size": 128, "fgr_warmup": 0, **kw})


def test_lambda_scaled_to_the_batch_keeps_the_per_example_weight_of_the_penalty():
    # a batch of 16 and the same 16 examples twice (batch 32): in eval mode (no BatchNorm coupling) every example has
    # the same CE and flow gradient in both, so CE + lambda R is equal iff the penalty weighs the same per example
    torch.manual_seed(0)
    model = build_model("smallcnn", 10).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])

    def loss(xb, yb, batch):
        lamb = main.applied_lambda(lamb_args(fgr_lamb_ref_batch=16, batch_size=batch))
        return gradient_regularized(model, xb, yb, xb, lamb=lamb, rs_sigma=0.0)

    small, big = loss(x, y, 16), loss(x2, y2, 32)
    assert main.applied_lambda(lamb_args(fgr_lamb_ref_batch=16, batch_size=32)) == 1200.0
    assert big[0].item() == pytest.approx(small[0].item(), rel=1e-5)
    assert big[2]["reg"].item() == pytest.approx(small[2]["reg"].item() / 4, rel=1e-5)  # R alone scales as 1/B^2
    g_small = torch.autograd.grad(small[0], list(model.parameters()))
    g_big = torch.autograd.grad(big[0], list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_small, g_big))
    # the reference's semantics (lambda as given) weigh the penalty 4x less per example at twice the batch
    unscaled = gradient_regularized(model, x2, y2, x2, lamb=300.0, rs_sigma=0.0)[0]
    assert unscaled.item() != pytest.approx(small[0].item(), rel=1e-3)


def test_the_lambda_statement_and_the_warm_up():
    assert main.lambda_statement(lamb_args()) is None  # the reference batch: nothing to say
    assert "as lambda 1200 at the reference's batch 128" in main.lambda_statement(lamb_args(batch_size=64))
    line = main.lambda_statement(lamb_args(batch_size=64, fgr_lamb_ref_batch=128))
    assert "applied as 75 at batch 64" in line and "as lambda 300 at the reference's batch 128" in line
    assert main.lambda_statement(lamb_args(fgr_lamb=0.0, batch_size=64)) is None
    warm = lamb_args(fgr_warmup=2)
    assert [main.lambda_at(warm, e) for e in (1, 2, 3, 4)] == [0.0, 150.0, 300.0, 300.0]
    assert main.lambda_at(lamb_args(), 1) == 300.0


def test_a_flat_network_is_warned_about():
    def rec(acc, reg):
        return {"train_acc": acc, "train_reg": reg}
    assert main.flat_network_warning([rec(0.15, 0.007)], 10) is None  # one epoch: nothing to compare
    warning = main.flat_network_warning([rec(0.15, 0.007), rec(0.16, 0.0003)], 10)
    assert "near chance" in warning and "0.007 to 0.0003" in warning
    assert main.flat_network_warning([rec(0.15, 0.007), rec(0.60, 0.0003)], 10) is None  # it trains
    assert main.flat_network_warning([rec(0.15, 0.0003), rec(0.16, 0.0005)], 10) is None  # the penalty grows
    assert main.flat_network_warning([{"train_acc": 0.1}, {"train_acc": 0.1}], 10) is None  # plain training


def run_args(root, tmp_path, *extra):
    return ["--data_path", root, "--no-verify_data", "--workers", "0", "--no_bar", "--model_name", "smallcnn",
            "--weight_path", str(tmp_path / "w"), "--result_path", str(tmp_path / "r"), "--subset", "16",
            "--batch_size", "8", *extra]


@pytest.mark.slow
def test_main_prints_the_lambda_first_and_marks_an_unfinished_checkpoint(cifar10_root, tmp_path, capsys):
    args = run_args(cifar10_root, tmp_path, "--fgr_lamb", "300", "--fgr_lamb_ref_batch", "128", "--fgr_warmup", "1",
                    "--epochs", "2", "--select", "last")
    main.main(main.get_args(args))
    out = capsys.readouterr().out
    first = "lambda: --fgr_lamb 300 at --fgr_lamb_ref_batch 128 is applied as 1.172 at batch 8"
    assert out.splitlines()[0].startswith(first)
    name = ("cifar10_smallcnn_fgr_300.0_rs_0.01_epochs2_batch_size8_fgr_lamb_ref_batch128_fgr_warmup1_selectlast"
            "_subset16")
    ckpt = torch.load(tmp_path / "w" / f"{name}.pt", weights_only=True)
    assert ckpt["finished"] is True and ckpt["epochs"] == 2 and ckpt["args"]["fgr_lamb_applied"] == 1.171875
    log = __import__("json").loads((tmp_path / "w" / f"{name}.log.json").read_text())
    assert "train_reg" not in log["epochs"][0] and log["epochs"][1]["train_reg"] > 0  # epoch 1 plain (warm-up)
    main.main(main.get_args(args[:-2] + ["--select", "best"]))
    best_name = name.replace("_selectlast", "")
    best_file = torch.load(tmp_path / "w" / f"{best_name}.pt", weights_only=True)
    assert best_file["finished"] is True  # whichever epoch was best, the finished run's file says so
    ckpt["finished"], ckpt["epoch"] = False, 1  # as a killed --select last run leaves it
    torch.save(ckpt, tmp_path / "w" / f"{name}.pt")
    record = evaluate.main(evaluate.get_args(run_args(cifar10_root, tmp_path, "--checkpoint",
                                                      str(tmp_path / "w" / f"{name}.pt"), "--steps", "2")))
    assert "is from epoch 1 of a run of 2 epochs that has not finished" in capsys.readouterr().out
    assert record["finished"] is False


@pytest.mark.slow
def test_saved_flows_and_images_re_apply_to_the_recorded_predictions(cifar10_root, tmp_path):
    torch.manual_seed(0)
    model = build_model("smallcnn", 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = run_args(cifar10_root, tmp_path, "--checkpoint", str(tmp_path / "m.pt"), "--save_adv",
                    str(tmp_path / "adv"), "--attacks", "flow", "adef", "--steps", "3", "--flow_eps", "0.05",
                    "--adef_steps", "5")
    record = evaluate.main(evaluate.get_args(args))
    net = build_model("smallcnn", 10).eval()
    net.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    from torchvision import transforms

    from utils.datasets import load_dataset
    test = load_dataset("cifar10", cifar10_root, False, transforms.Compose([transforms.Resize((36, 36)),
                                                                             transforms.CenterCrop(32),
                                                                             transforms.ToTensor()]), verify=False)
    for label, padding in (("flow [flow_eps=0.05, flow_steps=3, n=16]", "zeros"),
                           ("adef [adef_steps=5, n=16]", "border")):
        row = record["rows"][label]
        saved = torch.load(row["saved"], weights_only=True)
        assert set(saved) == {"x_adv", "y", "flow", "index", "robust"}
        x = torch.stack([test[int(i)][0] for i in saved["index"]])
        assert torch.equal(saved["y"], torch.tensor([test[int(i)][1] for i in saved["index"]]))
        with torch.no_grad():
            again = warp(x, saved["flow"], padding_mode=padding).clamp(0, 1)
            fooled = ~saved["robust"]
            assert torch.allclose(again[fooled], saved["x_adv"][fooled], atol=1e-5)  # the flow gives the image
            # the re-applied flows give the recorded outcome of every point
            assert torch.equal(net(again).argmax(1) == saved["y"], saved["robust"])
            assert torch.equal(net(saved["x_adv"]).argmax(1) == saved["y"], saved["robust"])
        assert row["robust_flags"] == saved["robust"].tolist()


def test_the_lambda_flags_name_only_runs_with_a_penalty():
    p = main.parser()
    defaults, flags = vars(p.parse_args([])), p.result_flags()
    recipe = ["--batch_size", "64", "--fgr_lamb_ref_batch", "128", "--fgr_warmup", "3", "--epochs", "6"]
    from utils.cli import fgr_run_name
    assert fgr_run_name(p.parse_args(["--fgr_lamb", "300", *recipe]), defaults, flags) == \
        "cifar10_vgg11_fgr_300.0_rs_0.01_epochs6_batch_size64_fgr_lamb_ref_batch128_fgr_warmup3"
    assert fgr_run_name(p.parse_args(["--fgr_lamb", "0", *recipe]), defaults, flags) == \
        "cifar10_vgg11_epochs6_batch_size64"  # plain training: the lambda flags change nothing
