"""bench/gpu_check.sh --dry-run: the GPU check's script runs on the CPU with tiny models and writes
its table and JSON (the numbers are not asserted: it checks that the one device call will work)."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = (
    "candidates (UNet CFG call)",
    "candidates (VAE decode)",
    "inversion",
    "sds (fp32 guidance)",
    "refinement views (render)",
    "refinement SDEdit (10 CFG steps)",
    "refinement fit",
    "videos (frame)",
)


def test_gpu_check_dry_run_writes_the_table_and_json(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in table and "| **projected total** (fp32 guidance) |" in table
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["dry_run"] is True and data["machine"]["device"] == "cpu" and data["failed_stages"] == []
    rows = {r["stage"]: r for r in data["pipeline"]["rows"]}
    assert tuple(rows) == STAGES
    counts = {
        "inversion": 500,
        "sds (fp32 guidance)": 2000,
        "refinement fit": 399,
        "videos (frame)": 360,
        "candidates (UNet CFG call)": 300,
        "refinement views (render)": 21,
    }
    for name, count in counts.items():
        assert rows[name]["count"] == count
    for r in rows.values():
        assert r["per_step_s"] > 0 and math.isclose(r["projected_s"], r["per_step_s"] * r["count"])
        assert f"| {r['stage']} |" in table
    assert math.isclose(data["projected_total_s"], sum(r["projected_s"] for r in rows.values()))
    renderer = data["renderer"]
    if "skipped" not in renderer:  # with PORTRAIT3D_OFFICIAL_ROOT set: both renderers, same inputs
        assert renderer["agreement_max_abs"] < 1e-4 and renderer["ratio_fwd_bwd"] > 0


def test_prepare_device_names_a_bad_official_root(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/prepare_device.sh", "--official-root", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "is not a 3DPortraitGAN_pyramid folder" in proc.stderr and str(tmp_path) in proc.stderr


def test_gpu_check_on_the_device_needs_the_prepared_folders(tmp_path):
    if os.path.exists(os.path.join(ROOT, ".whl")) or os.path.exists(os.path.join(ROOT, ".device")):
        pytest.skip("this checkout is prepared for the device (.whl/.device exist)")
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh"],
        cwd=ROOT,
        env=dict(os.environ, OUT=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "run bench/prepare_device.sh" in proc.stderr
