"""threestudio's own launch.py with configs/portrait3d-tiny.yaml: prompt → initialisation → SDS →
refinement → videos in one --train; resume (also after a kill), export, cached initialisation; on CPU.

Runs in an isolated work tree (links to $THREESTUDIO_ROOT) with tiny random models built on
first use into a temporary cache; skipped, with the reason, when threestudio is absent.
"""

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import requires_threestudio

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
    metrics = json.load(
        open(os.path.join(trial, "save", "it8-eval", "metrics.json"))
    )  # paper §5.2, tiny CLIP
    assert metrics["num_renders"] == 8 and 0 <= metrics["clip_score"] <= 100 and metrics["fid"] is None
    assert os.path.isfile(os.path.join(trial, "save", "it8-eval", "contact_sheet.png"))
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert ckpt["portrait3d_refine"]["targets"].shape == (21, 3, 64, 64)
    assert ckpt["portrait3d_refine"]["targets"].dtype == torch.uint8


def test_refinement_views_are_the_sds_ema_at_the_official_cameras(run):
    """The 21 views are rendered from the SDS stage's EMA (the official df.pth), with the GAN
    background, at the official refinement cameras."""
    tree, cache, trial, _ = run
    import imageio.v2 as imageio

    from gan_prior import PortraitGAN
    from gan_prior.media import to_uint8
    from gan_prior.refinement import refinement_labels
    from gan_prior.tiny_models import tiny_model_path

    os.environ["PORTRAIT3D_CACHE"] = cache
    prior = PortraitGAN.from_checkpoint(tiny_model_path("portrait-gan"))
    state = torch.load(
        os.path.join(trial, "ckpts", "epoch=0-step=4.ckpt"), map_location="cpu", weights_only=True
    )["state_dict"]  # the end of SDS
    ema = {r: state[f"ema_trigrids_{r}"] for r in (8, 16, 32)}
    raw = {r: state[f"geometry.trigrids_{r}"] for r in (8, 16, 32)}
    labels = refinement_labels(0)
    for i in (0, 10, 20):
        saved = imageio.imread(os.path.join(trial, "save", "refine", f"view_{i:02d}.png")).astype(int)

        def render(levels):
            with torch.no_grad():
                out = prior.render(
                    levels,
                    state["material.ws"],
                    labels[i : i + 1],
                    resolution=64,
                    deterministic=True,
                    depth_resolution=12,
                    depth_resolution_importance=12,
                )
            return to_uint8(out["image"][0]).astype(int)

        assert abs(render(ema) - saved).max() <= 1, i
        assert abs(render(raw) - saved).max() > 1, i  # not the last SDS iterate


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

    from gan_prior import load_pyramid

    parsed = os.path.join(trial, "configs", "parsed.yaml")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    proc = _resume(launch, tree, cache, trial, "trainer.max_steps=10")
    assert proc.returncode == 0, _tail(proc)
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 10  # continued the refinement from step 8
    proc = launch(tree, cache, "--config", parsed, "--export", f"resume={last}")
    assert proc.returncode == 0, _tail(proc)
    export = os.path.join(trial, "save", "it10-export")
    for fmt in ("obj", "glb"):
        mesh = trimesh.load(os.path.join(export, f"portrait.{fmt}"), force="mesh", process=False)
        assert len(mesh.vertices) > 10 and len(mesh.faces) > 10, fmt
        colours = mesh.visual.vertex_colors
        assert colours.shape == (len(mesh.vertices), 4) and len(set(map(tuple, colours[:, :3]))) > 1, fmt
        assert abs(mesh.vertices).max() <= 0.35 + 1e-4, fmt  # inside the tri-grid cube
    ours, ws = load_pyramid(os.path.join(export, "pyramid.safetensors"))
    official, ws_official = load_pyramid(os.path.join(export, "pyramid_trigrid.pth"))
    for r in (8, 16, 32):  # after refinement the export is the pyramid itself (no SDS EMA)
        assert torch.equal(ours[r], state["state_dict"][f"geometry.trigrids_{r}"])
        assert torch.equal(official[r], ours[r])
    assert torch.equal(ws, ws_official)


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
    newest = sorted(found, key=lambda p: int(p.rsplit("=", 1)[1][: -len(".ckpt")]), reverse=True)
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
    comes from the run seed and the step; same machine, same threads, same operations)."""
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
    proc = _resume(launch, tree, cache, out, ckpt=ckpt)
    assert proc.returncode == 0, _tail(proc)
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


SHORT = [
    "system.initializer.source=seed",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=2",
    "data.n_test_views=2",
]


def swapped_guidance_config(tree, tmp_path, tag, guidance_type, guidance, loss, trained=False) -> str:
    """The tiny config with another guidance, written to a file (a swap by configuration only)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(tree, "configs", "portrait3d-tiny.yaml"))
    sd = "${system.prompt_processor.pretrained_model_name_or_path}"
    cfg.tag, cfg.use_timestamp = tag, False
    cfg.system.guidance_type = guidance_type
    cfg.system.guidance = {
        "pretrained_model_name_or_path": sd,
        "half_precision_weights": False,
        "min_step_percent": 0.02,
        "max_step_percent": 0.4,
        **guidance,
    }
    cfg.system.loss = {**loss, "lambda_entropy": 0.001}
    if trained:
        cfg.system.optimizer.params["guidance"] = {"lr": 1e-3}
    path = str(tmp_path / f"{tag}.yaml")
    OmegaConf.save(cfg, path)
    return path


def test_swap_prompt_processor_options_negative_prompt_and_perp_neg(run):
    tree, cache, trial, launch = run
    proc = launch(
        tree,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=perpneg",
        "use_timestamp=false",
        # threestudio's own processor (the official one, our default, has no Perp-Neg)
        "system.prompt_processor_type=stable-diffusion-prompt-processor",
        "system.prompt_processor.negative_prompt=blurry, low quality",
        "system.prompt_processor.use_perp_neg=true",
        *SHORT,
    )
    assert proc.returncode == 0, _tail(proc)
    parsed = open(
        os.path.join(tree, "outputs", "portrait3d-tiny", "perpneg", "configs", "parsed.yaml")
    ).read()
    assert "use_perp_neg: true" in parsed and "negative_prompt: blurry, low quality" in parsed
    assert os.path.isfile(os.path.join(tree, "outputs", "portrait3d-tiny", "perpneg", "save", "it2-test.mp4"))


def test_swap_guidance_to_unified_guidance_and_resume(run, tmp_path):
    """Another threestudio guidance by config only (threestudio's unified guidance in SDS mode)."""
    tree, cache, trial, launch = run
    path = swapped_guidance_config(
        tree,
        tmp_path,
        "unified",
        "stable-diffusion-unified-guidance",
        {"guidance_type": "sds", "guidance_scale": 100.0},
        {"lambda_sd": 1.0, "lambda_sd_img": 0.0},
    )
    proc = launch(tree, cache, "--config", path, "--train", *SHORT)
    assert proc.returncode == 0, _tail(proc)
    out = os.path.join(tree, "outputs", "portrait3d-tiny", "unified")
    metrics = glob.glob(os.path.join(out, "csv_logs", "**", "metrics.csv"), recursive=True)
    rows = list(csv.DictReader(open(metrics[0])))
    assert any(r.get("train/loss_sd") for r in rows)  # the swapped guidance's loss was used
    proc = _resume(launch, tree, cache, out, "trainer.max_steps=3")
    assert proc.returncode == 0, _tail(proc)


def test_the_real_config_resolves_and_names_a_missing_checkpoint(run, tmp_path):
    """`launch.py --config configs/portrait3d.yaml --train system.prompt_processor.prompt=...` as the
    README types it: the config and every registered name resolve; without model_512.pkl the run
    stops with one line saying how to give it."""
    tree, cache, trial, launch = run
    os.environ["PORTRAIT3D_GAN_CHECKPOINT"] = str(tmp_path / "model_512.pkl")
    try:
        proc = launch(
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
    proc = launch(
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


def test_newcomer_mistakes_end_in_one_line(run):
    """A missing or empty prompt and a misspelt key: one [ERROR] line naming the option (and the closest
    valid names), no traceback, and no empty trial folder left behind."""
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
    )
    for args, message in cases:
        assert _stderr_error_line(launch(tree, cache, *args)).startswith(message)
    assert not os.path.exists(os.path.join(tree, "outputs", "portrait3d-tiny", "typo2"))


def test_without_the_extension_then_cloned_into_custom(tmp_path):
    """Our config in a threestudio tree without the extension says how to install it; a clone of this
    repository in custom/ (threestudio's usual way) is loaded as the extension."""
    from helpers import ROOT, THREESTUDIO_ROOT
    from threestudio_env import launch

    tree = tmp_path / "bare"
    tree.mkdir()
    for name in os.listdir(THREESTUDIO_ROOT):
        if name not in ("custom", "outputs", ".threestudio_cache"):
            os.symlink(os.path.join(THREESTUDIO_ROOT, name), tree / name)
    (tree / "custom").mkdir()
    cache = str(tmp_path / "cache")
    line = _stderr_error_line(
        launch(str(tree), cache, "--config", os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"), "--train")
    )
    assert line.startswith(
        "[ERROR] the Portrait3D extension is not installed in this threestudio checkout: run `python"
    )
    assert "install_extension.py" in line
    os.symlink(ROOT, tree / "custom" / "Portrait3D-threestudio")
    line = _stderr_error_line(
        launch(
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
        proc = launch(
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


def test_swap_guidance_to_vsd_trains_its_lora_and_resumes(run, tmp_path):
    """threestudio's VSD guidance by config only: its LoRA is optimised, checkpointed and resumed."""
    tree, cache, trial, launch = run
    path = swapped_guidance_config(
        tree,
        tmp_path,
        "vsd",
        "stable-diffusion-vsd-guidance",
        {
            "pretrained_model_name_or_path_lora": "${system.prompt_processor.pretrained_model_name_or_path}",
            "guidance_scale": 7.5,
        },
        {"lambda_vsd": 1.0, "lambda_lora": 1.0},
        trained=True,
    )
    proc = launch(tree, cache, "--config", path, "--train", *SHORT)
    assert proc.returncode == 0, _tail(proc)
    out = os.path.join(tree, "outputs", "portrait3d-tiny", "vsd")
    state = torch.load(os.path.join(out, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    lora_up = [
        v for k, v in state.items() if k.startswith("guidance.") and "lora" in k and k.endswith("up.weight")
    ]
    assert lora_up and any(v.abs().sum() > 0 for v in lora_up)  # LoRA "up" starts at 0: it was trained
    proc = _resume(launch, tree, cache, out, "trainer.max_steps=3")
    assert proc.returncode == 0, _tail(proc)
