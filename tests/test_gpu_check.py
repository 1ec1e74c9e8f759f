"""bench/gpu_check.sh --dry-run: the GPU check's script runs on the CPU with tiny models and writes
its table and JSON (the numbers are not asserted: it checks that the one device call will work),
with the extension's own run inside and, where the official code is on disk, the renderer comparison."""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import NEEDS_OFFICIAL, requires_threestudio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import official  # noqa: E402  (bench/official.py: where the official code is found)

# every stage a run executes, projected to the full configuration's counts
COUNTS = {
    "candidates (UNet CFG call)": 300,
    "candidates (VAE decode)": 6,
    "inversion": 500,
    "start-up": 1,
    "sds step": 2000,
    "validation": 23,  # every 100 of 2399 steps
    "refinement views + SDEdit": 1,
    "refinement fit step": 399,
    "checkpoint write": 24,  # last.ckpt every 100 steps, and the SDS result
    "test view": 120,
    "official video frame": 360,
    "test stage, rest": 1,
    "export": 1,
}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (out / "gpu_check.md").read_text(), json.loads((out / "gpu_check.json").read_text())


@pytest.mark.parametrize("marks", [pytest.param(None, marks=requires_threestudio)])
def test_gpu_check_dry_run_times_every_stage_of_the_extensions_run(dry_run, marks):
    table, data = dry_run
    assert "DRY RUN" in table and "| **projected total** (fp32 guidance) |" in table
    assert data["dry_run"] is True and data["machine"]["device"] == "cpu" and data["failed_stages"] == []
    rows = {r["stage"]: r for r in data["pipeline"]["rows"]}
    assert rows.keys() == COUNTS.keys()
    for name, r in rows.items():
        assert r["count"] == COUNTS[name], name
        assert r["per_step_s"] > 0 and math.isclose(r["projected_s"], r["per_step_s"] * r["count"])
        assert r["peak_bytes"] >= r["resident_bytes"] > 0, name  # the true peak, the resident part
        assert f"| {name} |" in table
    assert math.isclose(data["projected_total_s"], sum(r["projected_s"] for r in rows.values()))
    assert data["peak_bytes"] == max(r["peak_bytes"] for r in rows.values())
    # the inversion step as the released weights take it (posed), the pose-0 step beside it, and
    # the run's prior saved from that generator, SMPL buffers included
    assert rows["inversion"]["notes"].startswith("posed (SMPL deformation"), rows["inversion"]["notes"]
    assert "at pose 0 (a checkpoint without SMPL buffers)" in rows["inversion"]["notes"]
    assert any(
        o.startswith("system.prior_checkpoint=") for o in data["pipeline"]["settings"]["run_overrides"]
    )
    # the textured export's own steps, from the mesh_fidelity.json it wrote
    notes = rows["export"]["notes"]
    assert all(f"{step} " in notes for step in ("clean-up", "unwrap", "views", "bake", "fidelity")), notes
    assert "textured PSNR" in notes and f"- export: {notes}" in table


@pytest.mark.parametrize("marks", [pytest.param(None, marks=requires_threestudio)])
def test_gpu_check_compares_our_renderer_with_the_official_one(dry_run, marks):
    """Wherever the official code is on disk (this project's machines keep it at
    /work/official/3DPortraitGAN_pyramid), with no setting needed."""
    if official.find_root() is None:
        pytest.skip(f"{NEEDS_OFFICIAL}: none at {official.DEFAULT_ROOT}")
    renderer = dry_run[1]["renderer"]
    assert "skipped" not in renderer, renderer
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


# what bench/prepare_device.sh carried besides the working tree (.whl + .device), measured on
# 2026-12-06: 47 764 KiB (the largest: imageio-ffmpeg 26 MB, transformers 10 MB, threestudio 2.4 MB)
CARRIED_KIB = 47764


def test_the_working_tree_leaves_room_for_what_the_device_call_carries():
    """The device call carries the working tree plus .whl/.device within 64 MiB; prepare_device.sh
    refuses above 63 MiB. Tracked files growing (fixtures, images) must not make the one GPU call
    impossible: this fails first, here, where prepare_device.sh (it needs the network) is not run."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    paths = [os.path.join(ROOT, f.decode()) for f in files if f]
    tree_kib = sum(
        -(-os.path.getsize(p) // 4096) * 4 for p in paths if os.path.isfile(p)
    )  # du's 4 KiB blocks
    assert tree_kib + CARRIED_KIB <= 63 * 1024, (
        f"working tree {tree_kib} KiB + carried {CARRIED_KIB} KiB is over the 63 MiB bench/prepare_device.sh "
        "allows: shrink a fixture or drop a carried wheel"
    )


@pytest.mark.parametrize("marks", [pytest.param(None, marks=requires_threestudio)])
def test_threestudio_and_the_extension_import_with_the_device_stand_ins(marks):
    """The device image lacks IPython, wandb, envlight and libigl, which threestudio imports at
    module level: bench/device_stubs stands in for them there. Put first on the path here, they
    shadow the installed packages as their absence does on the device, so a stand-in that misses
    what threestudio imports (IPython.display, once) fails here instead of in the one GPU call."""
    from helpers import THREESTUDIO_ROOT

    stubs = os.path.join(ROOT, "bench", "device_stubs")
    code = (
        "import sys\n"
        f"sys.path[:0] = [{stubs!r}, {os.path.join(ROOT, 'portrait3d', 'cpu_stubs')!r}, {ROOT!r}]\n"
        "from portrait3d.threestudio_env import import_threestudio\n"
        f"ts = import_threestudio({THREESTUDIO_ROOT!r})\n"
        "from threestudio.systems.base import BaseSystem\n"
        "from threestudio.utils.callbacks import ConfigSnapshotCallback\n"
        "from threestudio.utils.config import load_config\n"
        "import IPython, wandb, envlight, igl\n"
        f"assert all(m.__file__.startswith({stubs!r}) for m in (IPython, wandb, envlight, igl))\n"
        "names = {'portrait3d-system', 'pyramid-trigrid', 'gan-prior-initializer'}\n"
        "assert names <= set(ts.__modules__), sorted(names - set(ts.__modules__))\n"
    )
    env = dict(os.environ, WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=THREESTUDIO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
