"""The benchmark script runs (smoke mode) and writes one JSON entry per workload."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench  # noqa: E402


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "b.json"
    bench.main(["--batch_size", "2", "--steps", "1", "--warmup", "0", "--workloads", "plain", "fgr-native",
                "--json", str(out)])
    rows = json.loads(out.read_text())["workloads"]
    assert set(rows) == {"plain", "fgr-native"} and rows["plain"]["relative"] == 1.0
    assert rows["fgr-native"]["ms_per_step"] > 0
    assert "| fgr-native |" in capsys.readouterr().out
