"""Smoke test of bench/bench_renderer.py: it runs and prints a table of finite numbers.

Not a timing assertion: only that the script works end to end (--quick: 32×32, 1 repeat, full-size
generator, no official code).
"""

import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "bench_renderer.py")


def test_bench_quick_prints_a_table_of_finite_numbers(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--no-official", "--device", "cpu", "--json", str(out_json)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout

    assert "| case | ours fwd | ours fwd+bwd |" in out
    assert "torch threads" in out and "CPU:" in out
    rows = [line for line in out.splitlines() if re.match(r"\| 32 (no-bg|bg) \|", line)]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        # ours fwd, ours fwd+bwd, ours peak mem are numbers; official columns are "–"
        for cell in (cells[1], cells[2], cells[7]):
            value = float(cell.split()[0])
            assert math.isfinite(value) and value > 0, row
        assert cells[3] == "–" and cells[5] == "–", row

    data = json.loads(out_json.read_text())
    assert [c["case"] for c in data["cases"]] == ["32 no-bg", "32 bg"]
    for case in data["cases"]:
        ours = case["ours"]
        assert "official" not in case
        for key in ("forward_median_s", "fwd_bwd_median_s", "loss"):
            assert math.isfinite(ours[key]), (key, ours)
        assert 0 < ours["forward_median_s"] <= ours["fwd_bwd_median_s"]
        assert ours["peak_mem_bytes"] > 0
        assert ours["levels_with_grad"] == ours["levels"] == 7
        assert ours["image_shape"] == [1, 3, 32, 32]
