"""The benchmark script runs (smoke mode: tiny batch, one step) and writes one JSON entry per workload."""
import json
import os
import sys

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
    assert "| pgd | 2 |" in capsys.readouterr().out


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
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import objectives as objective_bench

    times = objective_bench.main(["--smoke", "--batch_size", "2"])
    assert set(times) == set(objective_bench.OBJECTIVES) and all(t > 0 for t in times.values())
    assert "| trades |" in capsys.readouterr().out
