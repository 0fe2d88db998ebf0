"""The benchmark script runs (smoke mode: tiny batch, one step) and writes one JSON entry per workload."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench  # noqa: E402


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "b.json"
    bench.main(["--smoke", "--workloads", "fgr", "gsem", "pgd", "apgd", "pgd-amp",
                "--json", str(out)])
    rows = json.loads(out.read_text())["workloads"]
    assert set(rows) == {"fgr", "gsem", "pgd", "apgd", "pgd-amp"}
    for r in rows.values():
        assert r["ours"]["images_per_s"] > 0 and r["baseline"]["images_per_s"] > 0
        assert abs(r["speedup"] - r["ours"]["images_per_s"] / r["baseline"]["images_per_s"]) < 1e-9
        assert r["flops_per_step"] > 0 and 0 < r["ours"]["fraction_of_peak"] == r["ours"]["flops_per_s"] / \
            json.loads(out.read_text())["peak"][r["dtype"]]["peak_flops_per_s"] and r["bound"]
    assert "| pgd | 2 |" in capsys.readouterr().out


def test_flops_are_counted_through_the_double_backward():
    """A convolution's FLOPs: 2 x N x C_out x H x W x C_in x k^2 forward, twice that backward, and the double
    backward of the FGR-style penalty adds to it (a counter that missed autograd.grad would report the forward only)."""
    import torch

    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    conv = torch.nn.Conv2d(3, 8, 3)
    forward = 2 * 4 * 8 * 30 * 30 * 3 * 9
    assert bench.count(lambda: conv(x).sum())["flops"] == forward

    def penalty():
        (g,) = torch.autograd.grad(conv(x).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
    assert bench.count(penalty)["flops"] >= 3 * forward


def test_reference_hooks_give_the_corrected_gradient():
    """The baseline's hook pair (the reference's correction) and the module's straight-through correction give the
    same input gradient, with noise (same seed, same draws) and without; without either, the gradient differs."""
    import torch
    import torch.nn.functional as F

    from models import build_model

    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])

    def grad(model, hooks):
        torch.manual_seed(1)
        xi = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y)
        with hooks(model) if hooks else torch.enable_grad():
            return torch.autograd.grad(loss, xi)[0]

    for beta in (0, 4):
        torch.manual_seed(0)
        ours = build_model("GSeMResNet18", 10, beta=beta).eval()
        ref = bench.reference_model("GSeMResNet18", "cpu").eval()
        ref.load_state_dict(ours.state_dict())
        for m in ref.modules():
            if hasattr(m, "beta"):
                m.beta = beta
        g_ours, g_ref = grad(ours, None), grad(ref, bench.reference_hooks)
        assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(grad(ref, None), g_ref, rtol=1e-2, atol=1e-6)  # the hooks do change the gradient


def test_objective_cost_benchmark_smoke(capsys):
    times = bench.main(["--objectives", "--smoke", "--batch_size", "2"])
    assert set(times) == set(bench.OBJECTIVES) and all(t > 0 for t in times.values())
    assert "| trades |" in capsys.readouterr().out


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_in_smoke_mode(tmp_path):
    """benchmarks/gpu_check.py as it will run on a lent GPU, on the CPU at tiny sizes: every script end to end (with
    torchrun), the timed workloads with FLOP/s and fraction of peak, the eot_batch search, the estimates; exit 0."""
    import subprocess

    out = tmp_path / "gc.json"
    root = os.path.join(os.path.dirname(__file__), "..")
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke", "--json", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["scripts"]) == 7 and all(r["rc"] == 0 for r in report["scripts"].values())
    assert set(report["timings"]) == {"fgr VGG-11", "gsem GSeM-ResNet-18", "gsem GSeM-WRN-28-10", "pgd EOT 20",
                                      "apgd EOT 20"}
    for r in report["timings"].values():
        assert r["ours"]["images_per_s"] > 0 and r["ours"]["flops_per_s"] > 0 and 0 < r["ours"]["fraction_of_peak"]
    assert report["eot_batch"]["largest"] == 4 and not report["failed"]
    assert any(k.startswith("FGR table") for k in report["estimates"]) and all(
        v > 0 for v in report["estimates"].values())
    assert "| estimate | device-hours |" in p.stdout
