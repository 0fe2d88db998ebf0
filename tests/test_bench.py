"""The benchmark script runs (smoke mode: tiny batch, one step) and writes one JSON entry per workload."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench  # noqa: E402


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "b.json"
    bench.main(["--batch_size", "2", "--steps", "1", "--warmup", "0", "--workloads", "fgr", "pgd", "apgd",
                "--json", str(out)])
    rows = json.loads(out.read_text())["workloads"]
    assert set(rows) == {"fgr", "pgd", "apgd"}
    for r in rows.values():
        assert r["ours"]["images_per_s"] > 0 and r["baseline"]["images_per_s"] > 0
        assert abs(r["speedup"] - r["ours"]["images_per_s"] / r["baseline"]["images_per_s"]) < 1e-9
    assert "| pgd | 2 |" in capsys.readouterr().out
