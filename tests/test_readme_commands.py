"""The README's component swaps, run exactly as the README writes them (on the tiny config), through
threestudio's own ``launch.py``; and the one line a swap with missing loss weights ends in.

Each ``python launch.py`` command of the README that swaps a component (``..._type=``) is read from
the README, its config replaced by ``configs/portrait3d-tiny.yaml`` (the same pipeline on tiny random
models) and shortened to two steps; nothing else is changed.
"""

import csv
import glob
import os
import re
import shlex

import pytest
import torch
from helpers import ROOT, requires_threestudio
from threestudio_env import launch_to_error

pytestmark = requires_threestudio

SHORT = [
    "system.initializer.source=seed",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=2",
    "data.n_test_views=2",
]


def readme_launch_commands() -> list:
    """Every ``python launch.py ...`` command in the README's bash blocks, as argument lists (the
    shell's splitting; continuation lines joined)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("python launch.py "):
                commands.append(shlex.split(line, comments=True)[2:])
    return commands


def _swaps() -> dict:
    """The README's swap commands by the component they swap to."""
    found = {}
    for args in readme_launch_commands():
        types = [a.split("=", 1)[1] for a in args if re.match(r"system\.\w+_type=", a)]
        if types:
            assert args[:2] == ["--config", "configs/portrait3d.yaml"], args
            found[types[0]] = args
    return found


SWAPS = _swaps()


def test_the_readme_shows_the_swaps():
    assert set(SWAPS) == {
        "stable-diffusion-prompt-processor",
        "stable-diffusion-unified-guidance",
        "stable-diffusion-vsd-guidance",
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from threestudio_env import launch, make_worktree

    base = tmp_path_factory.mktemp("readme")
    return make_worktree(str(base / "threestudio")), str(base / "cache"), launch


def _tail(proc) -> str:
    return proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]


def _as_written(swap: str, tag: str) -> list:
    args = list(SWAPS[swap])
    args[1] = "configs/portrait3d-tiny.yaml"
    return args + [f"tag={tag}", "use_timestamp=false", *SHORT]


def _logged(trial: str) -> list:
    paths = glob.glob(os.path.join(trial, "csv_logs", "**", "metrics.csv"), recursive=True)
    return [row for path in paths for row in csv.DictReader(open(path))]


def _resume(launch, root, cache, trial):
    config = os.path.join(trial, "configs", "parsed.yaml")
    ckpt = os.path.join(trial, "ckpts", "last.ckpt")
    return launch(root, cache, "--config", config, "--train", f"resume={ckpt}", "trainer.max_steps=3")


@pytest.fixture(scope="module")
def perpneg(tree):
    root, cache, launch = tree
    proc = launch(root, cache, *_as_written("stable-diffusion-prompt-processor", "perpneg"))
    assert proc.returncode == 0, _tail(proc)
    return os.path.join(root, "outputs", "portrait3d-tiny", "perpneg")


def test_readme_perp_neg_with_threestudios_prompt_processor(perpneg):
    trial = perpneg
    parsed = open(os.path.join(trial, "configs", "parsed.yaml")).read()
    assert "use_perp_neg: true" in parsed and "negative_prompt: blurry, low quality" in parsed
    assert os.path.isfile(os.path.join(trial, "save", "it2-test.mp4"))


def test_readme_unified_guidance_trains_and_resumes(tree):
    root, cache, launch = tree
    proc = launch(root, cache, *_as_written("stable-diffusion-unified-guidance", "unified"))
    assert proc.returncode == 0, _tail(proc)
    # the SD guidance's weighting carried over under the unified guidance's name for it
    assert "weighting_strategy=sds is 'dreamfusion' in stable-diffusion-unified-guidance" in proc.stderr
    assert "system.loss.lambda_sds is not used by stable-diffusion-unified-guidance" in proc.stderr
    trial = os.path.join(root, "outputs", "portrait3d-tiny", "unified")
    rows = _logged(trial)
    assert any(r.get("train/loss_sd") for r in rows) and not any(r.get("train/loss_sds") for r in rows)
    proc = _resume(launch, root, cache, trial)
    assert proc.returncode == 0, _tail(proc)


def test_readme_vsd_trains_its_lora_and_resumes(tree):
    root, cache, launch = tree
    proc = launch(root, cache, *_as_written("stable-diffusion-vsd-guidance", "vsd"))
    assert proc.returncode == 0, _tail(proc)
    trial = os.path.join(root, "outputs", "portrait3d-tiny", "vsd")
    state = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    lora_up = [
        v for k, v in state.items() if k.startswith("guidance.") and "lora" in k and k.endswith("up.weight")
    ]
    assert lora_up and any(v.abs().sum() > 0 for v in lora_up)  # LoRA "up" starts at 0: it was trained
    assert any(r.get("train/loss_vsd") for r in _logged(trial))
    proc = _resume(launch, root, cache, trial)
    assert proc.returncode == 0, _tail(proc)


def test_a_swap_without_its_loss_weights_names_them_all_before_any_work(tree):
    """Only the guidance type: one line naming every missing and unused loss weight, before the
    initialisation (which would write save/init/) runs."""
    root, cache, launch = tree
    proc = launch_to_error(
        root,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=bare",
        "use_timestamp=false",
        "system.guidance_type=stable-diffusion-unified-guidance",
        "system.optimizer.params.guidance.lr=0.0001",
        "system.guidance.guidance_type=vsd",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, _tail(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        "[ERROR] system.guidance_type=stable-diffusion-unified-guidance returns loss_sd, loss_sd_img and "
        "loss_train_phi: system.loss has no lambda_sd, lambda_sd_img and lambda_train_phi; add their "
        "weights, e.g. system.loss.lambda_sd=1 system.loss.lambda_sd_img=1 system.loss.lambda_train_phi=1 "
        "(or system.guidance.use_img_loss=false for no image-space loss); system.loss.lambda_sds is not "
        "used by stable-diffusion-unified-guidance"
    )
    proc = launch_to_error(
        root,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=bare",
        "use_timestamp=false",
        "system.guidance_type=stable-diffusion-vsd-guidance",
    )
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("[ERROR] system.guidance_type=stable-diffusion-vsd-guidance returns loss_lora and")
    assert line.endswith(
        "stable-diffusion-vsd-guidance trains parameters of its own: add "
        "system.optimizer.params.guidance.lr=0.0001 so that they are optimised and checkpointed"
    )
    assert not glob.glob(os.path.join(root, "outputs", "portrait3d-tiny", "bare", "save", "init"))
    # Perp-Neg with the official processor, which has none: refused before the initialisation too
    proc = launch_to_error(
        root,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=bare",
        "use_timestamp=false",
        "system.prompt_processor.use_perp_neg=true",
    )
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "[ERROR] system.prompt_processor.use_perp_neg: the official Portrait3D SDS has no Perp-Neg"
        )
    ), _tail(proc)
    assert not glob.glob(os.path.join(root, "outputs", "portrait3d-tiny", "bare", "save", "init"))


def test_a_face_detector_with_the_tiny_gan_stops_at_start_up(tree, tmp_path):
    """A photo on the tiny models with a face detector (the README: the tiny GAN renders no face):
    one line naming the key, before the 16 framing renders or anything else."""
    import imageio.v2 as imageio
    import numpy as np

    root, cache, launch = tree
    photo = tmp_path / "astronaut.png"
    imageio.imwrite(photo, np.full((64, 64, 3), 128, np.uint8))
    proc = launch_to_error(
        root,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=photo_haar",
        "use_timestamp=false",
        "system.initializer.source=image",
        f"system.initializer.portrait.image={photo}",
        "system.initializer.portrait.detector=haar",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, _tail(proc)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "[ERROR] system.initializer.portrait.detector: 'haar' cannot be used with the tiny GAN"
    ), _tail(proc)
    assert "use detector 'none'" in line
    assert not glob.glob(os.path.join(root, "outputs", "portrait3d-tiny", "photo_haar", "save", "init"))


def test_the_same_command_again_is_refused_unless_asked_to_overwrite(tree, perpneg):
    """A fresh run into a trial folder that holds a trained run (same tag, use_timestamp=false) stops
    with one line naming resume= and a new tag, touching nothing; system.overwrite=true trains again
    from step 0 in place of the old results, keeping the cached initialisation and files of the user's."""
    root, cache, launch = tree
    trial = perpneg
    last = os.path.join(trial, "ckpts", "last.ckpt")
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(trial, "**", "*"), recursive=True)}
    args = _as_written("stable-diffusion-prompt-processor", "perpneg")
    proc = launch_to_error(root, cache, *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, _tail(proc)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"[ERROR] {trial} already holds a trained run (ckpts/last.ckpt, step 2): continue it with "
        f"resume={last}, or start another with a new tag=... (or without use_timestamp=false); "
        "system.overwrite=true trains it again from step 0, replacing its results"
    )
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(trial, "**", "*"), recursive=True)}
    assert after == before  # nothing written, nothing removed
    # asked to overwrite: an old run's later file is gone, the cached initialisation stays
    stale = os.path.join(trial, "save", "it99-test.mp4")
    cached = os.path.join(trial, "save", "init", "0123456789ab", "pyramid.safetensors")
    os.makedirs(os.path.dirname(cached))
    notes = os.path.join(trial, "notes.txt")  # a user's own file in the trial: not the run's to remove
    for path in (stale, cached, notes):
        open(path, "wb").close()
    proc = launch(root, cache, *args, "system.overwrite=true")
    assert proc.returncode == 0, _tail(proc)
    assert not os.path.exists(stale) and os.path.isfile(cached) and os.path.isfile(notes)
    assert os.path.getmtime(last) > before[last] and os.path.isfile(
        os.path.join(trial, "save", "it2-test.mp4")
    )


def test_the_printed_commands_work_pasted_into_a_fresh_shell(tmp_path):
    """`portrait3d run` / `make demo` end with resume and export commands: pasted into a shell with
    no virtualenv active and no `python` on PATH, they start threestudio's launch.py (here with
    --help added, which stops once the arguments are read)."""
    import subprocess

    from portrait3d.run import Trial, describe
    from portrait3d.threestudio_env import find_threestudio

    trial = tmp_path / "outputs" / "portrait3d-tiny" / "a trial@20260101-000000"
    (trial / "configs").mkdir(parents=True)
    text = describe(Trial(str(trial)), find_threestudio())
    lines = text.splitlines()
    commands = [lines[i + 1].strip() for i, line in enumerate(lines) if line in ("resume:", "export again:")]
    assert len(commands) == 2 and not any(c.startswith("python ") for c in commands), text
    for command in commands:
        proc = subprocess.run(
            ["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c", command + " --help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0 and "usage: launch.py" in proc.stdout, proc.stdout + proc.stderr


def _weights_table_keys() -> list:
    """The ``system.*=`` keys the README's weights table tells users to set."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = text[text.index("| weights |") :].split("\n\n")[0]
    return sorted(set(re.findall(r"`(system\.[a-z0-9_.]+)=", table)))


def test_each_key_of_the_weights_table_is_named_by_its_own_error(tree):
    """Every key the README's weights table names exists, and a bad value for it ends at start-up in
    one line that starts with that key (the key the user set, not one that follows it)."""
    root, cache, launch = tree
    keys = _weights_table_keys()
    assert keys == [
        "system.evaluation.clip_model",
        "system.evaluation.inception",
        "system.initializer.portrait.vgg16",
        "system.prior_checkpoint",
        "system.prompt_processor.pretrained_model_name_or_path",
    ]
    for key in keys:
        proc = launch_to_error(
            root,
            cache,
            "--config",
            "configs/portrait3d-tiny.yaml",
            "--train",
            "tag=weights",
            "use_timestamp=false",
            "system.refine.steps=0",  # (its check would name the SD model first)
            f"{key}=/nowhere/model",
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, _tail(proc)
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"[ERROR] {key}") and "/nowhere/model" in line, (key, line)
        assert not glob.glob(os.path.join(root, "outputs", "portrait3d-tiny", "weights", "save", "init"))
