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


def bench(script: str, *args: str, timeout: int) -> str:
    """Run ``bench/<script>`` as the README does (``PYTHONPATH=.``): its stdout, once it ended well."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_bench_quick_prints_a_table_of_finite_numbers(tmp_path):
    out_json = tmp_path / "bench.json"
    args = ["--quick", "--no-official", "--device", "cpu", "--json", str(out_json)]
    out = bench("bench_renderer.py", *args, timeout=300)

    assert "| case | ours fwd | ours fwd+bwd |" in out
    assert "torch threads" in out and "CPU:" in out
    rows = [line for line in out.splitlines() if re.match(r"\| 32 (no-bg|bg) \|", line)]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        # ours fwd, ours fwd+bwd, ours added and true peak are numbers; official columns are "–"
        for cell in (cells[1], cells[2], cells[7], cells[9]):
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
        assert ours["peak_bytes"] >= ours["resident_bytes"] > 0 and ours["added_bytes"] > 0
        assert ours["levels_with_grad"] == ours["levels"] == 7
        assert ours["image_shape"] == [1, 3, 32, 32]


def test_bench_export_quick_measures_every_step_with_the_harness(tmp_path):
    """bench/bench_export.py end to end at toy sizes: every export step's wall time and the harness's
    memory figures (true peak ≥ resident), the fidelity of both meshes, and the files it wrote."""
    out_json, files = tmp_path / "export.json", tmp_path / "files"
    args = [
        "--quick",
        "--resolution",
        "32",
        "--texture-size",
        "64",
        "--view-resolution",
        "24",
        "--device",
        "cpu",
    ]
    bench(
        "bench_export.py", *args, "--no-held-out", "--json", str(out_json), "--out", str(files), timeout=600
    )
    data = json.loads(out_json.read_text())
    steps = {r["step"]: r for r in data["steps"]}
    assert list(steps) == ["isosurface", "clean-up", "unwrap", "views", "bake", "fidelity", "write"]
    for name, r in steps.items():
        assert r["wall_s"] > 0 and r["peak_bytes"] >= r["resident_bytes"] > 0, name
        assert r["added_bytes"] == r["peak_bytes"] - r["resident_bytes"], name
    for mesh in ("textured", "vertex_colours"):
        assert math.isfinite(data["report"][mesh]["psnr"]) and 0 < data["report"][mesh]["iou"] <= 1
    assert {"portrait.glb", "portrait.obj", "portrait.mtl", "portrait_albedo.png", "portrait.ply"} <= set(
        os.listdir(files)
    )


def test_bench_pose_runs_the_pose_path_alone(tmp_path):
    """bench/bench_pose.py on the tiny architecture: the target is reproduced from its own pose, the
    gradient at p = 0 agrees with small central differences, and the optimisation lowers the loss."""
    out_json = tmp_path / "pose.json"
    args = ["--tiny", "--targets", "1", "--steps", "6", "--nrr", "16", "--samples", "6", "--device", "cpu"]
    out = bench("bench_pose.py", *args, "--json", str(out_json), timeout=300)
    assert "pose error after 6 steps" in out
    (row,) = json.loads(out_json.read_text())["targets"]
    assert row["pose_error_start_deg"] > 1 and math.isfinite(row["pose_error_deg"])
    assert row["gradient_cosine"]["0.001"] > 0.99
    assert row["loss_lowest"] < row["loss_start"]


def test_bench_camera_runs_every_stage_and_the_posed_estimate(tmp_path):
    """bench/bench_camera.py on the tiny architecture (its README smoke command, with the estimate in
    the true pose): each stage's camera error, and the two inversions' pose, distance and PSNR. The
    tiny target's neck turn fools the estimate at pose 0 (measured 19.2°), not in its pose (0.4°)."""
    out_json = tmp_path / "camera.json"
    args = ["--tiny", "--targets", "1", "--steps", "2", "--nrr", "16", "--samples", "6"]
    args += ["--camera-resolution", "16", "--psi", "0", "--estimate-pose-noise", "0", "--device", "cpu"]
    out = bench("bench_camera.py", *args, "--json", str(out_json), timeout=300)
    assert "refined at the true pose + 0° noise" in out
    data = json.loads(out_json.read_text())
    (row,) = data["targets"]
    assert set(data["runs"]) == {"pose 0 (former)", "pose optimised"}
    for run in data["runs"].values():
        assert all(math.isfinite(run[k]["median"]) for k in ("camera_error_deg", "pose_error_deg", "psnr"))
    assert row["posed 0"]["pose_given_error_deg"] == 0
    assert row["posed 0"]["error"] < 2 < row["refined_error"]
