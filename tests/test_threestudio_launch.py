"""threestudio's own launch.py with configs/portrait3d-tiny.yaml: prompt → initialisation → SDS →
refinement → videos in one --train; resume (also after a kill), export, cached initialisation; on CPU.

Runs in an isolated work tree (links to $THREESTUDIO_ROOT) with tiny random models built on
first use into a temporary cache; skipped, with the reason, when threestudio is absent.
"""

import csv
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import requires_threestudio
from threestudio_env import launch_to_error

pytestmark = requires_threestudio


def _tail(proc) -> str:
    return proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from threestudio_env import launch, make_worktree

    base = tmp_path_factory.mktemp("ts")
    tree = make_worktree(str(base / "threestudio"))
    cache = str(base / "cache")
    proc = launch(
        tree, cache, "--config", "configs/portrait3d-tiny.yaml", "--train", "tag=smoke", "use_timestamp=false"
    )
    assert proc.returncode == 0, _tail(proc)
    trial = os.path.join(tree, "outputs", "portrait3d-tiny", "smoke")
    return tree, cache, trial, launch


def _metrics(trial):
    paths = sorted(glob.glob(os.path.join(trial, "csv_logs", "**", "metrics.csv"), recursive=True))
    return [row for path in paths for row in csv.DictReader(open(path))]


def _resume(launch, tree, cache, trial, *overrides, ckpt=None):
    """``launch.py --train`` resumed from the trial's parsed config and ``ckpt`` (default last.ckpt)."""
    ckpt = ckpt or os.path.join(trial, "ckpts", "last.ckpt")
    config = os.path.join(trial, "configs", "parsed.yaml")
    return launch(tree, cache, "--config", config, "--train", f"resume={ckpt}", *overrides)


def _export(launch, tree, cache, trial, *overrides):
    """``launch.py --export`` of the trial's parsed config and ``ckpts/last.ckpt``."""
    config = os.path.join(trial, "configs", "parsed.yaml")
    return launch(tree, cache, "--config", config, "--export", f"resume={_last(trial)}", *overrides)


def _last(trial):
    return os.path.join(trial, "ckpts", "last.ckpt")


def _init_dir(trial):
    found = glob.glob(os.path.join(trial, "save", "init", "*", "inversion.json"))
    assert len(found) == 1, found
    return os.path.dirname(found[0])


def test_one_train_command_goes_prompt_init_sds_refinement_and_test_videos(run):
    tree, cache, trial, _ = run
    init = _init_dir(trial)  # prompt -> candidates -> aligned image -> w+ -> pyramid
    cands = json.load(open(os.path.join(init, "candidates.json")))
    assert cands["seeds"] == [0, 1] and cands["prompt"] == "upper body photo, portrait of a woman"
    assert all(os.path.isfile(os.path.join(init, f)) for f in cands["files"])
    for name in (
        "aligned.png",
        "alignment.json",
        "w_plus.safetensors",
        "pyramid.safetensors",
        "comparison.png",
        "timings.json",
    ):
        assert os.path.isfile(os.path.join(init, name)), name
    assert set(json.load(open(os.path.join(init, "timings.json")))) == {
        "candidates",
        "alignment",
        "inversion",
    }
    refine = os.path.join(trial, "save", "refine")  # the 21 views and their SDEdit versions, side by side
    for i in range(21):
        assert os.path.isfile(os.path.join(refine, f"view_{i:02d}.png"))
        assert os.path.isfile(os.path.join(refine, f"refined_{i:02d}.png"))
    assert len(json.load(open(os.path.join(refine, "cameras.json")))["labels"]) == 21
    rows = [r for r in _metrics(trial) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)
    # steps 0-3 SDS, 4-7 refinement (Lightning's CSV rows repeat a stage's last value afterwards)
    assert [bool(r.get("train/loss_refine")) for r in rows] == [False] * 4 + [True] * 4
    assert all(r["train/loss"] == r["train/loss_refine"] for r in rows[4:])
    for name in ("it8-test.mp4", "it8-large_pose.mp4", "it8-small_pose.mp4", "it8-views.png"):
        assert os.path.isfile(os.path.join(trial, "save", name)), name
    import imageio.v2 as imageio

    for name, seconds in (("it8-test.mp4", 1.0), ("it8-large_pose.mp4", 1.0), ("it8-small_pose.mp4", 0.5)):
        with imageio.get_reader(os.path.join(trial, "save", name)) as video:  # long enough to be seen
            assert video.get_meta_data()["duration"] == pytest.approx(seconds, abs=0.05), name
    metrics = json.load(
        open(os.path.join(trial, "save", "it8-eval", "metrics.json"))
    )  # paper §5.2, tiny CLIP
    assert metrics["num_renders"] == 8 and 0 <= metrics["clip_score"] <= 100 and metrics["fid"] is None
    assert os.path.isfile(os.path.join(trial, "save", "it8-eval", "contact_sheet.png"))
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["portrait3d_refine"]["targets"].shape == (21, 3, 64, 64)
    assert ckpt["portrait3d_refine"]["targets"].dtype == torch.uint8


def _step_seed_module():
    """The extension's ``utils/step_seed.py`` (no relative imports), loaded by path."""
    import importlib.util

    from helpers import ROOT

    path = os.path.join(ROOT, "custom", "threestudio-portrait3d", "utils", "step_seed.py")
    spec = importlib.util.spec_from_file_location("p3d_step_seed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refinement_views_are_the_sds_ema_at_the_official_cameras(run):
    """The 21 views are rendered from the SDS stage's EMA (the official df.pth), with the GAN
    background, at the official refinement cameras, with the sampler's jitter (official
    gen_quality_improve_data_from_triplane.py) drawn from the run's seed (0) and stream."""
    tree, cache, trial, _ = run
    import imageio.v2 as imageio

    from gan_prior import PortraitGAN
    from gan_prior.media import to_uint8
    from gan_prior.refinement import refinement_labels
    from gan_prior.tiny_models import tiny_model_path

    seed = _step_seed_module().step_seed(0, 0, "refine-views")

    os.environ["PORTRAIT3D_CACHE"] = cache
    prior = PortraitGAN.from_checkpoint(tiny_model_path("portrait-gan"))
    state = torch.load(
        os.path.join(trial, "ckpts", "epoch=0-step=4.ckpt"), map_location="cpu", weights_only=True
    )["state_dict"]  # the end of SDS
    ema = {r: state[f"ema_trigrids_{r}"] for r in (8, 16, 32)}
    raw = {r: state[f"geometry.trigrids_{r}"] for r in (8, 16, 32)}
    labels = refinement_labels(0)

    def render(levels, deterministic=False):
        """The 21 views in order, their jitter drawn as the run draws it."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = [
                prior.render(
                    levels,
                    state["material.ws"],
                    labels[i : i + 1],
                    resolution=64,
                    deterministic=deterministic,
                    depth_resolution=12,
                    depth_resolution_importance=12,
                )["image"][0]
                for i in range(len(labels))
            ]
        return [to_uint8(v).astype(int) for v in views]

    from_ema, from_raw, without_jitter = render(ema), render(raw), render(ema, deterministic=True)
    for i in (0, 10, 20):
        saved = imageio.imread(os.path.join(trial, "save", "refine", f"view_{i:02d}.png")).astype(int)
        assert abs(from_ema[i] - saved).max() <= 1, i
        assert abs(from_raw[i] - saved).max() > 1, i  # not the last SDS iterate
        assert abs(without_jitter[i] - saved).max() > 1, i  # the sampler's jitter


def test_pyramid_changed_decoder_and_torgb_did_not(run):
    tree, cache, trial, _ = run
    from gan_prior import PortraitGAN, load_pyramid
    from gan_prior.tiny_models import tiny_model_path

    os.environ["PORTRAIT3D_CACHE"] = cache
    prior = PortraitGAN.from_checkpoint(tiny_model_path("portrait-gan"))
    state = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    init, ws = load_pyramid(os.path.join(_init_dir(trial), "pyramid.safetensors"))  # the inversion's pyramid
    for r in (8, 16, 32):
        assert not torch.allclose(state[f"geometry.trigrids_{r}"], init[r]), (
            r
        )  # SDS + refinement moved every level
        assert (state[f"geometry.trigrids_{r}"] - init[r]).abs().max() < 10
    assert torch.allclose(state["material.ws"], ws)
    for k, v in prior.decoder.state_dict().items():
        assert torch.equal(state[f"geometry.decoder.{k}"], v), k
    for k, v in prior.torgb.state_dict().items():
        assert torch.equal(state[f"material.torgb.{k}"], v), k
    assert not any(k.startswith("guidance.") for k in state)


def test_resume_then_export_mesh_and_pyramids(run):
    tree, cache, trial, launch = run
    import trimesh
    from conftest import CI
    from test_mesh_export import gltf_validator, validate_glb

    from gan_prior import load_pyramid

    last = _last(trial)
    proc = _resume(launch, tree, cache, trial, "trainer.max_steps=10")
    assert proc.returncode == 0, _tail(proc)
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 10  # continued the refinement from step 8
    proc = _export(launch, tree, cache, trial, "system.exporter.mesh_formats=[glb,obj,ply]")
    assert proc.returncode == 0, _tail(proc)
    export = os.path.join(trial, "save", "it10-export")
    assert {
        "portrait.glb",
        "portrait.obj",
        "portrait.mtl",
        "portrait_albedo.png",
        "portrait.ply",
        "mesh_fidelity.json",
    } <= set(os.listdir(export))
    for fmt in ("obj", "glb"):  # textured: UVs and the baked texture, as Blender / trimesh open them
        mesh = trimesh.load(os.path.join(export, f"portrait.{fmt}"), force="mesh", process=False)
        assert len(mesh.vertices) > 10 and len(mesh.faces) > 10, fmt
        assert mesh.visual.uv.shape == (len(mesh.vertices), 2), fmt
        image = np.asarray(
            mesh.visual.material.baseColorTexture if fmt == "glb" else mesh.visual.material.image
        )
        assert image.shape[:2] == (512, 512) and image[..., :3].std() > 5, fmt
        assert abs(mesh.vertices).max() <= 0.35 + 1e-4, fmt  # inside the tri-grid cube
    ply = trimesh.load(os.path.join(export, "portrait.ply"), process=False)  # the vertex colours
    assert len(set(map(tuple, ply.visual.vertex_colors[:, :3]))) > 1
    report = json.load(open(os.path.join(export, "mesh_fidelity.json")))
    assert report["source"] == {"checkpoint": os.path.realpath(last), "step": 10}
    assert report["mesh"]["components"] >= 1 and report["mesh"]["faces"] == len(ply.faces)
    textured, vertex = report["textured"], report["vertex_colours"]
    assert len(textured["views"]) == 21 and textured["psnr"] > vertex["psnr"] + 1.0, (textured, vertex)
    assert (
        "Isosurface at σ = " in proc.stdout + proc.stderr
        and "kept the largest of" in proc.stdout + proc.stderr
    )
    if gltf_validator() is not None or CI:  # validate_glb fails under CI=true without the validator
        assert validate_glb(os.path.join(export, "portrait.glb"))["issues"]["numErrors"] == 0
    ours, ws = load_pyramid(os.path.join(export, "pyramid.safetensors"))
    official, ws_official = load_pyramid(os.path.join(export, "pyramid_trigrid.pth"))
    for r in (8, 16, 32):  # after refinement the export is the pyramid itself (no SDS EMA)
        assert torch.equal(ours[r], state["state_dict"][f"geometry.trigrids_{r}"])
        assert torch.equal(official[r], ours[r])
    assert torch.equal(ws, ws_official)


def test_export_mistakes_end_in_one_line_and_another_runs_export_is_kept(run, tmp_path):
    """Bad export options stop a training run at start-up, an empty isosurface stops the export
    before any mesh work (with the density range found), and a checkpoint of another run does not
    overwrite this trial's export of the same step."""
    tree, cache, trial, launch = run
    for override, message in (
        (
            "system.exporter.texture_size=1000",
            "[ERROR] system.exporter.texture_size=1000 must be a power of two",
        ),
        (
            "system.exporter.texture_size=16384",
            "[ERROR] system.exporter.texture_size=16384 must be a power of two",
        ),
        ("system.exporter.max_faces=50", "[ERROR] system.exporter.max_faces=50 is below 100"),
    ):
        args = [
            "--config",
            "configs/portrait3d-tiny.yaml",
            "--train",
            "tag=badexport",
            "use_timestamp=false",
            override,
        ]
        assert _stderr_error_line(launch_to_error(tree, cache, *args)).startswith(message)
        assert not os.path.isdir(
            os.path.join(tree, "outputs", "portrait3d-tiny", "badexport", "save", "init")
        )
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    line = _stderr_error_line(
        launch_to_error(
            tree,
            cache,
            "--config",
            parsed,
            "--export",
            f"resume={last}",
            "system.geometry.isosurface_threshold=1000",
        )
    )
    assert re.match(
        r"\[ERROR\] system.geometry.isosurface_threshold=1000 gives an empty isosurface: the density σ found "
        r"ranges from -?[0-9.]+ to -?[0-9.]+ \(9³ grid\); pick a level inside that range",
        line,
    ), line
    step = torch.load(last, weights_only=True)["global_step"]
    export = os.path.join(trial, "save", f"it{step}-export")
    if not os.path.isfile(os.path.join(export, "mesh_fidelity.json")):
        assert launch(tree, cache, "--config", parsed, "--export", f"resume={last}").returncode == 0
    before = {n: os.path.getmtime(os.path.join(export, n)) for n in os.listdir(export)}
    other = str(tmp_path / "other-run.ckpt")
    shutil.copy(last, other)
    line = _stderr_error_line(launch_to_error(tree, cache, "--config", parsed, "--export", f"resume={other}"))
    assert line.startswith("[ERROR] ") and line.endswith(
        f"save/it{step}-export holds the export of another run ({os.path.realpath(last)}); not overwriting it: "
        "export with that checkpoint's own trial config, or move the folder away"
    )
    assert {n: os.path.getmtime(os.path.join(export, n)) for n in os.listdir(export)} == before


def test_threestudios_mesh_exporter_by_one_override(run):
    """README, *Export*: ``system.exporter_type=mesh-exporter system.exporter.fmt=obj-mtl`` on a trial
    of our config (whose ``system.exporter`` holds our exporter's settings) exports threestudio's
    textured ``model.obj`` beside our files, which it leaves alone; where nvdiffrast is the import
    stand-in it rasterizes with our UV rasterizer. A misspelt key of that exporter stops a training
    run at start-up in one line."""
    import trimesh

    from portrait3d.stand_ins import STUBS_DIR

    tree, cache, trial, launch = run
    step = torch.load(_last(trial), weights_only=True)["global_step"]
    export = os.path.join(trial, "save", f"it{step}-export")
    ours = (
        {n: os.path.getmtime(os.path.join(export, n)) for n in os.listdir(export)}
        if os.path.isdir(export)
        else {}
    )
    proc = _export(
        launch, tree, cache, trial, "system.exporter_type=mesh-exporter", "system.exporter.fmt=obj-mtl"
    )
    assert proc.returncode == 0, _tail(proc)
    log = proc.stdout + proc.stderr
    assert "system.exporter: mesh_formats, pyramid_formats, view_seed" in log, log[-3000:]
    assert "left out (settings of portrait3d-exporter, which mesh-exporter does not have)" in log
    import nvdiffrast

    if os.path.abspath(nvdiffrast.__file__).startswith(STUBS_DIR):
        assert "mesh-exporter: nvdiffrast is not installed; rasterizing with our UV rasterizer" in log
    assert {"model.obj", "model.mtl"} <= set(os.listdir(export))
    mesh = trimesh.load(os.path.join(export, "model.obj"), force="mesh", process=False)
    assert len(mesh.faces) > 10 and mesh.visual.uv.shape == (len(mesh.vertices), 2)
    texture = np.asarray(mesh.visual.material.image)
    assert texture.shape[:2] == (512, 512) and texture[..., :3].std() > 5  # texture_size: the config's
    assert {n: os.path.getmtime(os.path.join(export, n)) for n in ours} == ours  # ours untouched
    line = _stderr_error_line(
        launch_to_error(
            tree,
            cache,
            "--config",
            "configs/portrait3d-tiny.yaml",
            "--train",
            "tag=badexporter",
            "use_timestamp=false",
            "system.exporter_type=mesh-exporter",
            "system.exporter.fmtt=obj",
        )
    )
    assert line == "[ERROR] system.exporter.fmtt is not a setting of mesh-exporter; did you mean fmt?", line
    assert not os.path.isdir(os.path.join(tree, "outputs", "portrait3d-tiny", "badexporter", "save", "init"))


def test_a_second_run_reuses_the_cached_initialisation(run):
    tree, cache, trial, launch = run
    init = _init_dir(trial)
    stamps = {f: os.path.getmtime(os.path.join(init, f)) for f in ("aligned.png", "pyramid.safetensors")}
    proc = launch(
        tree,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=again",
        "use_timestamp=false",
        f"system.initializer.cache_dir={os.path.dirname(init)}",
        "system.sds_steps=1",
        "system.refine.steps=0",
        "data.n_test_views=2",
        "system.videos.large_frames=0",
        "system.videos.small_frames=0",
    )
    assert proc.returncode == 0, _tail(proc)
    assert "Reusing the initialisation in" in proc.stdout + proc.stderr
    assert stamps == {f: os.path.getmtime(os.path.join(init, f)) for f in stamps}
    assert not os.path.exists(os.path.join(tree, "outputs", "portrait3d-tiny", "again", "save", "init"))


# 12 SDS + 12 refinement steps; a checkpoint every 2 steps and an EMA update every 3, so that a
# checkpoint falls on a step that updates the EMA (step 6: the update must be in that checkpoint)
RESUMABLE = [
    "system.sds_steps=12",
    "system.refine.steps=12",
    "system.ema_every_n_steps=3",
    "checkpoint.every_n_train_steps=2",
    "trainer.val_check_interval=100",
    "data.n_test_views=1",
    "system.videos.large_frames=2",
    "system.videos.small_frames=0",
]


def _resumable_args(trial, tag):
    return [
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        f"tag={tag}",
        "use_timestamp=false",
        f"system.initializer.cache_dir={os.path.dirname(_init_dir(trial))}",
        *RESUMABLE,
    ]


def _final_state(out):
    path = os.path.join(out, "ckpts", "epoch=0-step=24.ckpt")  # last.ckpt may be last-v1.ckpt after a resume
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["global_step"] == 24
    return state


@pytest.fixture(scope="module")
def uninterrupted(run):
    tree, cache, trial, launch = run
    proc = launch(tree, cache, *_resumable_args(trial, "straight"))
    assert proc.returncode == 0, _tail(proc)
    return os.path.join(tree, "outputs", "portrait3d-tiny", "straight")


def test_every_checkpoint_holds_the_ema_updates_of_its_steps(uninterrupted):
    """The EMA update of a step is in the checkpoint saved at that step (Lightning saves before
    the module's on_train_batch_end), so a run resumed from it does not miss one: after SDS
    steps 3, 6, 9 and 12, with checkpoints every 2 steps (they coincide at steps 6 and 12)."""
    for step in range(2, 25, 2):
        path = os.path.join(uninterrupted, "ckpts", f"epoch=0-step={step}.ckpt")
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert int(state["ema_updates"]) == min(step, 12) // 3, step


def _step_of(path) -> int:
    """The step in a checkpoint's name: ``epoch=0-step=16.ckpt``, or ``epoch=0-step=16-v1.ckpt``
    (Lightning's name when a resumed run saves a step that the killed run had saved after the
    checkpoint it resumed from: killed between the step checkpoint and last.ckpt)."""
    match = re.fullmatch(r"epoch=\d+-step=(\d+)(?:-v\d+)?\.ckpt", os.path.basename(path))
    assert match, path
    return int(match.group(1))


def _checkpoints_up_to(out, step) -> dict:
    """``{path: sha256}`` of the trial's step checkpoints at ``step`` or before."""
    found = {}
    for path in glob.glob(os.path.join(out, "ckpts", "epoch=*-step=*.ckpt")):
        if _step_of(path) <= step:
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def _kill_after_checkpoint(tree, cache, args, out, step):
    """Start launch.py, SIGKILL it once the step-``step`` checkpoint is on disk; then the
    checkpoint to resume from and its contents: last.ckpt, or the newest that loads if the kill cut
    it short."""
    from threestudio_env import launch_env

    proc = subprocess.Popen(
        [sys.executable, "launch.py", *args],
        cwd=tree,
        env=launch_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt, deadline = os.path.join(out, "ckpts", f"epoch=0-step={step}.ckpt"), time.time() + 600
    while not os.path.isfile(ckpt):
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
        )
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = glob.glob(os.path.join(out, "ckpts", "epoch=*-step=*.ckpt"))
    newest = sorted(found, key=_step_of, reverse=True)
    for path in [os.path.join(out, "ckpts", "last.ckpt"), *newest]:  # last.ckpt, as a user would
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # cut short by the kill
            continue
    raise AssertionError(f"no readable checkpoint in {found}")


@pytest.mark.parametrize("phase, kill_after", [("sds", 2), ("refinement", 14)])
def test_killed_then_resumed_ends_with_the_uninterrupted_pyramid(run, uninterrupted, phase, kill_after):
    """SIGKILL during SDS or during the refinement, resume from the last checkpoint: the final
    pyramid, its EMA and ws are bitwise those of the same run never interrupted (every random draw
    comes from the run seed and the step; same machine, same threads, same operations). Bitwise on
    the CPU only: on CUDA the renderer's backward adds with atomics (utils/step_seed.py)."""
    tree, cache, trial, launch = run
    tag = f"kill-{phase}"
    out = os.path.join(tree, "outputs", "portrait3d-tiny", tag)
    ckpt, killed = _kill_after_checkpoint(tree, cache, _resumable_args(trial, tag), out, kill_after)
    k = killed["global_step"]
    if phase == "sds":
        assert kill_after <= k < 12 and "portrait3d_refine" not in killed, k
    else:
        assert 12 < k < 24 and "portrait3d_refine" in killed, k
        views = os.path.join(out, "save", "refine", "refined_00.png")
        stamp = os.path.getmtime(views)
    earlier = _checkpoints_up_to(out, k)
    assert earlier and os.path.join(out, "ckpts", f"epoch=0-step={kill_after}.ckpt") in earlier
    logs_before = set(glob.glob(os.path.join(out, "csv_logs", "version_*", "metrics.csv")))
    proc = _resume(launch, tree, cache, out, ckpt=ckpt)
    assert proc.returncode == 0, _tail(proc)
    # resumed at step k, not restarted from 0 (which ends bitwise equal too): the checkpoints of the
    # steps before it are untouched, and the resumed run's log starts at k
    assert _checkpoints_up_to(out, k) == earlier
    (log,) = set(glob.glob(os.path.join(out, "csv_logs", "version_*", "metrics.csv"))) - logs_before
    with open(log, newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps and steps[0] == k and steps[-1] == 23, (steps[:3], steps[-3:])
    resumed = _final_state(out)
    if phase == "refinement":  # the targets came from the checkpoint, not from a second SDEdit
        assert torch.equal(resumed["portrait3d_refine"]["targets"], killed["portrait3d_refine"]["targets"])
        assert os.path.getmtime(views) == stamp
    assert os.path.isfile(os.path.join(out, "save", "it24-large_pose.mp4"))
    uninterrupted = _final_state(uninterrupted)
    keys = [
        k for k in uninterrupted["state_dict"] if k.startswith(("geometry.trigrids_", "ema_", "material.ws"))
    ]
    assert len(keys) == 3 + 3 + 1 + 1, keys  # 3 levels, their EMA, the EMA's update count, ws
    assert int(uninterrupted["state_dict"]["ema_updates"]) == 4  # after SDS steps 3, 6, 9 and 12
    for key in keys:
        a, b = resumed["state_dict"][key], uninterrupted["state_dict"][key]
        assert torch.equal(a, b), (
            f"{key}: max |resumed - uninterrupted| = {(a.double() - b.double()).abs().max()}"
        )
    assert torch.equal(resumed["portrait3d_refine"]["targets"], uninterrupted["portrait3d_refine"]["targets"])


def test_refinement_alone_from_an_exported_official_format_pyramid(run):
    """Stage 2 on its own: start from a pyramid file in the official gallery / epoch_*.pth format."""
    tree, cache, trial, launch = run
    from gan_prior import load_pyramid, save_pyramid

    pyramid = [os.path.join(os.path.dirname(trial), "start_pyramid_trigrid.pth")]
    save_pyramid(
        pyramid[0], *load_pyramid(os.path.join(_init_dir(trial), "pyramid.safetensors")), fmt="official"
    )
    proc = launch(
        tree,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=refineonly",
        "use_timestamp=false",
        "system.initializer.source=pyramid",
        f"system.initializer.pyramid_path={pyramid[0]}",
        "system.sds_steps=0",
        "system.refine.steps=2",
        "data.n_test_views=2",
        "system.videos.small_frames=0",
    )
    assert proc.returncode == 0, _tail(proc)
    out = os.path.join(tree, "outputs", "portrait3d-tiny", "refineonly")
    rows = _metrics(out)
    assert len([r for r in rows if r.get("train/loss_refine")]) == 2 and not any(
        r.get("train/loss_sds") for r in rows
    )
    assert os.path.isfile(os.path.join(out, "save", "refine", "refined_20.png"))


def test_the_real_config_resolves_and_names_a_missing_checkpoint(run, tmp_path):
    """`launch.py --config configs/portrait3d.yaml --train system.prompt_processor.prompt=...` as the
    README types it: the config and every registered name resolve; without model_512.pkl the run
    stops with one line saying how to give it."""
    tree, cache, trial, launch = run
    os.environ["PORTRAIT3D_GAN_CHECKPOINT"] = str(tmp_path / "model_512.pkl")
    try:
        proc = launch_to_error(
            tree,
            cache,
            "--config",
            "configs/portrait3d.yaml",
            "--train",
            "system.prompt_processor.prompt=upper body photo, a man",
        )
    finally:
        del os.environ["PORTRAIT3D_GAN_CHECKPOINT"]
    assert proc.returncode != 0
    assert "model_512.pkl not found; set system.prior_checkpoint=/path/to/model_512.pkl" in proc.stderr
    assert "KeyError" not in proc.stderr and "IMPORT FAILED" not in proc.stdout + proc.stderr


def test_a_misspelt_component_name_gets_one_clear_line(run):
    tree, cache, trial, launch = run
    proc = launch_to_error(
        tree,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=typo",
        "use_timestamp=false",
        "system.geometry_type=pyramid-trigrids",
    )
    assert proc.returncode != 0
    assert (
        "system.geometry_type: 'pyramid-trigrids' is not a registered threestudio component; "
        "did you mean pyramid-trigrid"
    ) in proc.stderr


def _stderr_error_line(proc) -> str:
    """The run's last stderr line, which must be its one [ERROR] line (no traceback before it)."""
    assert proc.returncode != 0, _tail(proc)
    assert "Traceback" not in proc.stderr, _tail(proc)
    return proc.stderr.strip().splitlines()[-1]


def test_a_forked_launch_ends_as_a_real_one(run):
    """The start-up checks run through ``launch_to_error`` (threestudio's launch.py in a child of a warm
    interpreter): a real ``python launch.py`` of the same command prints the same, line for line (the
    import times aside), and ends with the same status."""
    tree, cache, trial, launch = run
    for args in (
        [
            "--config",
            "configs/portrait3d.yaml",
            "--train",
            "system.prompt_processor.prompt=",
        ],  # the system's check
        [
            "--config",
            "configs/portrait3d-tiny.yaml",
            "--train",
            "system.geometry_type=pyramid-trigrids",
        ],  # the registry
    ):
        forked, real = launch_to_error(tree, cache, *args), launch(tree, cache, *args)
        assert forked.returncode == real.returncode != 0, (_tail(forked), _tail(real))
        assert forked.stderr == real.stderr, (forked.stderr[-3000:], real.stderr[-3000:])
        times = re.compile(r"^ *[0-9.]+ seconds", flags=re.M)
        assert times.sub("", forked.stdout) == times.sub("", real.stdout), (forked.stdout, real.stdout)


def test_newcomer_mistakes_end_in_one_line(run):
    """A missing or empty prompt, a misspelt key, a value of the wrong kind, an override that is not
    YAML: one [ERROR] line naming the option (and the closest valid names), no traceback, and no
    empty trial folder left behind."""
    tree, cache, trial, launch = run
    cases = (
        (
            ["--config", "configs/portrait3d.yaml", "--train"],
            '[ERROR] system.prompt_processor.prompt is not set: add system.prompt_processor.prompt="',
        ),
        (
            ["--config", "configs/portrait3d.yaml", "--train", "system.prompt_processor.prompt="],
            "[ERROR] system.prompt_processor.prompt is empty",
        ),
        (
            ["--config", "configs/portrait3d.yaml", "--train", "system.prompt_processor.prompt=null"],
            "[ERROR] system.prompt_processor.prompt is empty: give the text of the portrait",
        ),
        (
            ["--config", "configs/portrait3d-tiny.yaml", "--train", "system.refine.steps=nan"],
            "[ERROR] a config value computed from others failed (unsupported operand type(s) for +: 'int' "
            "and 'str'): an override gave text where a number belongs",
        ),
        (
            [
                "--config",
                "configs/portrait3d-tiny.yaml",
                "--train",
                "tag=typo2",
                "use_timestamp=false",
                "system.initialiser.source=seed",
            ],
            "[ERROR] unknown config key 'initialiser' in Portrait3DSystem.Config; did you mean initializer",
        ),
        # a value where a section belongs, text where the data's sizes belong, an unclosed list
        (
            ["--config", "configs/portrait3d-tiny.yaml", "--train", "tag=typo2", "system.renderer=5"],
            "[ERROR] config key 'renderer': Cannot assign int to Dict[Any, Any]; give a value of that type",
        ),
        (
            ["--config", "configs/portrait3d-tiny.yaml", "--train", "tag=typo2", "data.width=abc"],
            "[ERROR] data.width='abc': give a whole number ≥ 1 (at most 4096), or a list of them",
        ),
        (
            ["--config", "configs/portrait3d-tiny.yaml", "--train", "tag=typo2", "data.width=[64,128]"],
            "[ERROR] data.height, data.width and data.batch_size give 1, 2 and 1 values: give one, or "
            "len(data.resolution_milestones) + 1 = 1 each",
        ),
        (
            [
                "--config",
                "configs/portrait3d-tiny.yaml",
                "--train",
                "tag=typo2",
                "system.loss.lambda_sds=[1,2",
            ],
            "[ERROR] override 'system.loss.lambda_sds=[1,2' is not valid YAML (while parsing a flow sequence)",
        ),
    )
    tiny = ["--config", "configs/portrait3d-tiny.yaml", "--train", "tag=typo2"]
    cases += (  # what launch.py's own set-up (Lightning, the seed, resume=) and the optimizer refuse
        ([*tiny, "trainer.max_steps=abc"], "[ERROR] trainer.* (Lightning): '<' not supported between"),
        (
            [*tiny, "trainer.devices=3"],
            "[ERROR] trainer.devices is set by launch.py itself (--gpu picks the GPU)",
        ),
        (
            [*tiny, "trainer.max_epochs=0"],
            "[ERROR] trainer.max_epochs=0, trainer.limit_train_batches=1.0: this",
        ),
        # Lightning's loop settings that failed at the first step (a ZeroDivisionError) or ran 3.5 steps
        ([*tiny, "trainer.val_check_interval=0"], "[ERROR] trainer.val_check_interval=0: give the steps"),
        (
            [*tiny, "trainer.accumulate_grad_batches=0"],
            "[ERROR] trainer.accumulate_grad_batches=0: Portrait3D",
        ),
        ([*tiny, "trainer.max_steps=3.5"], "[ERROR] trainer.max_steps=3.5: give a whole number of steps"),
        # cameras whose rays miss the portrait (the first step failed: "does not require grad")
        (
            [*tiny, "data.camera_distance_range=[2.7,1e6]"],
            "[ERROR] data.camera_distance_range=[2.7, 1000000.0]: the renderer samples each ray from "
            "system.renderer.ray_start=2.35 to ray_end=3.12 from its camera, so only cameras 2.41 to 3.06",
        ),
        ([*tiny, "data.look_at=[0,0,2.7]"], "[ERROR] data.look_at=[0.0, 0.0, 2.7] is outside the portrait's"),
        ([*tiny, "seed=-1"], "[ERROR] seed=-1: -1 is not in bounds"),
        (
            [*tiny, "resume=/nowhere/last.ckpt"],
            "[ERROR] resume=/nowhere/last.ckpt: Checkpoint file not found",
        ),
        (
            [*tiny, "system.initializer.source=seed", "system.optimizer.name=Foo"],
            "[ERROR] system.optimizer / system.scheduler: module 'torch.optim' has no attribute 'Foo'",
        ),
        (
            ["--config", "configs/portrait3d-tiny.yaml", "--test", "tag=typo2"],
            "[ERROR] launch.py --test shows a trained run, and this one starts from nothing: add resume=",
        ),
    )
    for args, message in cases:
        line = _stderr_error_line(launch_to_error(tree, cache, *args))
        assert line.startswith(message), (args, line)
    assert not os.path.exists(os.path.join(tree, "outputs", "portrait3d-tiny", "typo2"))


def test_without_the_extension_then_cloned_into_custom(tmp_path):
    """Our config in a threestudio tree without the extension says how to install it; a clone of this
    repository in custom/ (threestudio's usual way) is loaded as the extension."""
    from helpers import ROOT, THREESTUDIO_ROOT

    tree = tmp_path / "bare"
    tree.mkdir()
    for name in os.listdir(THREESTUDIO_ROOT):
        if name not in ("custom", "outputs", ".threestudio_cache"):
            os.symlink(os.path.join(THREESTUDIO_ROOT, name), tree / name)
    (tree / "custom").mkdir()
    cache = str(tmp_path / "cache")
    line = _stderr_error_line(
        launch_to_error(
            str(tree), cache, "--config", os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"), "--train"
        )
    )
    assert line.startswith(
        "[ERROR] the Portrait3D extension is not installed in this threestudio checkout: run `python"
    )
    assert "install_extension.py" in line
    os.symlink(ROOT, tree / "custom" / "Portrait3D-threestudio")
    line = _stderr_error_line(
        launch_to_error(
            str(tree),
            cache,
            "--config",
            "custom/Portrait3D-threestudio/configs/portrait3d-tiny.yaml",
            "--train",
            "system.initialiser.source=seed",
        )
    )
    assert line.startswith("[ERROR] unknown config key 'initialiser' in Portrait3DSystem.Config")


def test_refinement_settings_are_checked_before_training(run):
    """A refinement or evaluation setting it cannot use stops the run at start-up with one line, not
    after the SDS stage."""
    tree, cache, trial, launch = run
    for override, message in (
        ("system.refine.resolution=60", "system.refine.resolution=60: SDEdit needs a multiple of 8"),
        ("system.refine.model=/nowhere/sd", "system.refine.model: folder /nowhere/sd does not exist"),
        (
            "system.evaluation.inception=/nowhere/fid.pth",
            "system.evaluation.inception: /nowhere/fid.pth not found",
        ),
    ):
        proc = launch_to_error(
            tree,
            cache,
            "--config",
            "configs/portrait3d-tiny.yaml",
            "--train",
            "tag=badrefine",
            "use_timestamp=false",
            override,
        )
        assert proc.returncode != 0 and message in proc.stderr, _tail(proc)
        assert not os.path.isdir(
            os.path.join(tree, "outputs", "portrait3d-tiny", "badrefine", "save", "init")
        )
