"""`portrait3d batch` on a local Ray (2 CPU workers) with the tiny config: 4 portraits and one whose
photo is missing, one worker SIGKILLed mid-run and resumed from its checkpoint, a re-run that does nothing,
and `portrait3d evaluate` over the set. Ray starts once for the module."""

import contextlib
import csv
import glob
import io
import json
import os
import signal
import socket
import threading
import time

import pytest
from helpers import ROOT, random_inception_weights, requires_threestudio

from portrait3d.batch import MANIFEST, read_prompts, worker_runtime_env
from portrait3d.cli import main
from portrait3d.trial import checkpoint_step

CONFIG = os.path.join(ROOT, "configs", "portrait3d-tiny.yaml")
SHORT = [
    "system.sds_steps=1",
    "system.refine.steps=0",
    "data.n_test_views=2",
    "system.videos.large_frames=4",
    "system.videos.small_frames=2",
    "trainer.val_check_interval=100",
    "checkpoint.every_n_train_steps=2",
    "system.exporter.view_resolution=32",  # the export's 21 fidelity views (not what these tests check)
]
LONG = 12  # SDS steps of the prompt whose worker is killed (at its step-4 checkpoint)
PROMPTS = [
    {"prompt": "upper body photo, portrait of a woman", "name": "woman"},
    {
        "prompt": "upper body photo, portrait of a man",
        "name": "man",
        "overrides": {"system.sds_steps": LONG},
    },
    {"prompt": "upper body photo, portrait of an old man", "seed": 5},
    {"prompt": "upper body photo, portrait of a girl with red hair", "name": "girl"},
    {
        "prompt": "upper body photo, portrait of a boy",
        "name": "bad",
        "overrides": {
            "system.initializer.source": "image",
            "system.initializer.portrait.image": "no_such.png",
        },
    },  # a photo the worker does not have: fails at its start-up (a misspelt key stops the batch before)
]


def needs_threestudio(test):
    for mark in requires_threestudio:
        test = mark(test)
    return test


def cli(*args):
    """``portrait3d ARGS`` in this process: (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue(), time.time() - start


def manifest(out):
    with open(os.path.join(out, MANIFEST)) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------ prompt files (no Ray)
def test_prompt_files_text_and_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "# a set\n\n"
        '{"prompt": "upper body photo, a man"}\n  \n'
        '{"prompt": "a woman", "name": "w", "seed": 3, "overrides": {"system.refine.steps": 5}}\n'
        '{"prompt": "a child", "overrides": ["system.sds_steps=1"]}\n'
    )
    jobs = read_prompts(str(path), default_seed=7)
    assert [(j.name, j.seed, j.line) for j in jobs] == [
        ("upper_body_photo_a_man", 7, 3),
        ("w", 3, 5),
        ("a_child", 7, 6),
    ]
    # the format is the file's, not the line's: in a text file a line starting with "{" is a prompt
    text = tmp_path / "p.txt"
    text.write_text("{best quality}, portrait of a man\n# a comment\nupper body photo, a woman\n")
    assert [(j.prompt, j.name, j.line) for j in read_prompts(str(text))] == [
        ("{best quality}, portrait of a man", "best_quality_portrait_of_a_man", 1),
        ("upper body photo, a woman", "upper_body_photo_a_woman", 3),
    ]
    # … and a .txt whose first prompt line is a JSON object is JSONL
    text.write_text('{"prompt": "a man", "seed": 2}\n')
    assert [(j.prompt, j.seed) for j in read_prompts(str(text))] == [("a man", 2)]
    assert jobs[1].launch_overrides(["data.width=32"]) == [
        "system.prompt_processor.prompt='a woman'",
        "seed=3",
        "data.width=32",
        "system.refine.steps=5",
    ]
    assert jobs[2].overrides == ["system.sds_steps=1"]
    # a prompt reaches threestudio's YAML command line as it is written (no mapping, number or quote lost)
    from omegaconf import OmegaConf

    for prompt in ("portrait: a man's face, [old]", "007", "yes"):
        (tmp_path / "q.txt").write_text(prompt + "\n")
        override = read_prompts(str(tmp_path / "q.txt"))[0].launch_overrides([])[0]
        assert OmegaConf.from_cli([override]).system.prompt_processor.prompt == prompt


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a man"}\n{"prompt": "a man"}\n', "p.txt:2: name 'a_man' is also line 1's"),
        ('{"prompt": "x", "nmae": "y"}\n', "p.txt:1: unknown key 'nmae'"),
        ('{"prompt": "x"}\n{"prompt": "x"\n', "p.txt:2: not valid JSON"),
        ('{"name": "x"}\n', 'p.txt:1: no "prompt"'),
        ('{"prompt": "x", "seed": "1"}\n', 'p.txt:1: "seed" must be an integer'),
        ('{"prompt": "x", "name": "../up"}\n', "p.txt:1: name '../up' is not a folder name"),
        ('{"prompt": "x", "overrides": "a"}\n', 'p.txt:1: "overrides" must be'),
        ("# only a comment\n\n", "p.txt: no prompts"),
    ],
)
def test_bad_prompt_files_get_one_line(tmp_path, text, message):
    path = tmp_path / "p.txt"
    path.write_text(text)
    code, out, err, _ = cli("batch", str(path), "--config", CONFIG, "--out", str(tmp_path / "runs"))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def _write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.mark.parametrize(
    "name, make, message",
    [
        # items that reach threestudio only as literal text
        (
            "p.txt",
            "portrait of ${oc.env:SECRET_TOKEN}\n",
            "p.txt:1: the prompt holds '${', which threestudio's",
        ),
        ("p.txt", "portrait of ${oops\n", "p.txt:1: the prompt holds '${'"),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"system.refine.prompt": "${oc.env:HOME}"}}\n',
            "p.jsonl:1: override system.refine.prompt holds '${'",
        ),
        ("p.txt", "a portrait\x00of a man\n", "p.txt:1: the prompt holds the control character '\\x00'"),
        ("p.jsonl", '{"prompt": "a\\nb"}\n', "p.jsonl:1: the prompt holds the control character '\\n'"),
        ("p.txt", "x" * 200_000 + "\n", "p.txt:1: the prompt has 200000 characters; at most 2000"),
        # overrides that decide where files go or what is loaded
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"exp_root_dir": "/tmp/elsewhere"}}\n',
            "p.jsonl:1: override 'exp_root_dir' decides where files go",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"tag": "../../../x"}}\n',
            "override 'tag' decides where files go",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": ["--config=/etc/passwd"]}\n',
            "override '--config' decides where files go",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"resume": "http://example.com/x.ckpt"}}\n',
            "override 'resume' decides",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"system.initializer.cache_dir": "/tmp"}}\n',
            "override 'system.initializer.cache_dir' decides",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"use_timestamp": true}}\n',
            "override 'use_timestamp' decides",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"checkpoint.filename": "../../x"}}\n',
            "override 'checkpoint.filename'",
        ),
        # seeds and names
        (
            "p.jsonl",
            '{"prompt": "a", "seed": %d}\n' % 2**80,
            'p.jsonl:1: "seed" 1208925819614629174706176 is out of range',
        ),
        ("p.jsonl", '{"prompt": "a", "seed": -5}\n', 'p.jsonl:1: "seed" -5 is out of range'),
        (
            "p.jsonl",
            '{"prompt": "a", "overrides": {"seed": -3}}\n',
            'p.jsonl:1: give the seed as the line\'s "seed": N, not in "overrides"',
        ),
        ("p.jsonl", '{"prompt": "a\\u0085b"}\n', "p.jsonl:1: the prompt holds the control character '\\x85'"),
        (
            "p.jsonl",
            '{"prompt": "a\\u2028b"}\n',
            "p.jsonl:1: the prompt holds the control character '\\u2028'",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "seed": %s}\n' % ("9" * 5000),
            "p.jsonl:1: not valid JSON (Exceeds the limit (4300 digits) for integer string conversion",
        ),
        ("p.jsonl", '{"prompt": "a", "name": "abc\\n"}\n', "p.jsonl:1: name 'abc\\n' is not a folder name"),
        ("p.jsonl", '{"prompt": "a", "name": 5}\n', 'p.jsonl:1: "name" must be a string'),
        # the file itself
        ("p.txt", b"a portrait\n\xff\xfe of a man\n", "p.txt:2: not UTF-8 text (byte 0xff)"),
        ("p.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "p.jsonl:1: not valid JSON (nested too deeply)"),
        ("p.jsonl", "[1, 2]\n", "p.jsonl:1: a list, not a JSON object"),
        ("p.txt", "huge", "p.txt is 300 MiB; a prompt file holds at most 16 MiB"),
        ("p.txt", "fifo", "p.txt is not a regular file (a pipe or a device)"),
        ("p.txt", "folder", "p.txt is a folder"),
    ],
)
def test_hostile_prompt_files_are_refused_before_anything_starts(tmp_path, name, make, message):
    """Each is one line naming the file's line and the reason, before Ray or any trial folder
    (the issue: secrets read into parsed.yaml, trials written outside --out, a FIFO read as
    "no such file", a NUL or 200 KB prompt or a seed of 2**80 failing only inside the run)."""
    path = tmp_path / name
    if make == "huge":
        with open(path, "wb") as f:
            f.truncate(300 << 20)  # sparse: takes no disk
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "folder":
        path.mkdir()
    else:
        _write(path, make)
    code, out, err, seconds = cli("batch", str(path), "--config", CONFIG, "--out", str(tmp_path / "runs"))
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() and seconds < 10


@pytest.mark.parametrize("override", ["tag=x", "exp_root_dir=/tmp", "resume=/tmp/x.ckpt", "name=other"])
def test_the_batch_keeps_its_own_keys(tmp_path, override):
    """The batch decides where its trials go: its own command line may not move them either."""
    (tmp_path / "p.txt").write_text("a man\n")
    code, _, err, _ = cli(
        "batch", str(tmp_path / "p.txt"), "--config", CONFIG, "--out", str(tmp_path / "r"), override
    )
    key = override.split("=")[0]
    assert code == 2 and f"override {override!r}: override '{key}' decides where files go" in err, err


def test_the_batch_seed_is_an_option_not_an_override(tmp_path):
    """A ``seed=`` override would give every prompt one seed while the manifest records theirs."""
    (tmp_path / "p.txt").write_text("a man\n")
    code, _, err, _ = cli(
        "batch", str(tmp_path / "p.txt"), "--config", CONFIG, "--out", str(tmp_path / "r"), "seed=5"
    )
    assert code == 2 and "override 'seed=5' would give every prompt the same seed: give --seed N" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


@needs_threestudio
def test_each_prompts_config_is_checked_before_anything_starts(tmp_path, monkeypatch):
    """Each line's config, composed as launch.py composes it, is checked before Ray starts: a
    misspelt key or component name, text where a number belongs, a NaN loss weight stop the batch
    with one line naming the first bad line (and the others), not after the lines before it ran."""
    lines = [
        {"prompt": "a man", "name": "fine", "overrides": {"system.sds_steps": 3}},
        {"prompt": "a woman", "overrides": {"system.refine.stpes": 3}},
        {"prompt": "a boy", "overrides": {"system.geometry_type": "pyramid-trigrids"}},
        {"prompt": "a girl", "overrides": {"data.widht": 64}},
        {"prompt": "an old man", "overrides": {"system.loss.lambda_sds": float("nan")}},
        {"prompt": "an old woman", "overrides": {"system.refine.stpes": 3}},
    ]
    # what each bad line says (the child's checks, here in this process)
    from omegaconf import OmegaConf
    from threestudio_env import import_extension

    from portrait3d.prompt_configs import check_config, compose, error_line

    ts, base = import_extension(), OmegaConf.load(CONFIG)
    for line, message in (
        (lines[0], None),
        (
            lines[2],
            "system.geometry_type: 'pyramid-trigrids' is not a registered threestudio component; did you "
            "mean pyramid-trigrid",
        ),
        (lines[3], "data.widht is not a setting of Portrait3DCameraConfig; did you mean width?"),
        (lines[4], "system.loss.lambda_sds='nan': give a number, or a schedule"),
        (
            {"prompt": "a dog", "overrides": ["system.loss.lambda_sds=[1,2"]},
            "override 'system.loss.lambda_sds=[1,2' cannot be read",
        ),
        # what the run's setup checks against its data module and Lightning's Trainer
        (
            {"prompt": "a cat", "overrides": {"data.camera_distance_range": [1.0, 1.5]}},
            "data.camera_distance_range=[1.0, 1.5]: the renderer samples each ray from",
        ),
        (
            {"prompt": "a cat", "overrides": {"trainer.val_check_interval": 0}},
            "trainer.val_check_interval=0: give the steps between validations",
        ),
    ):
        prompts = tmp_path / "one.jsonl"
        prompts.write_text(json.dumps(line) + "\n")
        overrides = read_prompts(str(prompts))[0].launch_overrides([])
        try:
            check_config(compose(base, overrides), ts)
            said = None
        except Exception as e:  # noqa: BLE001 - the line the batch shows
            said = error_line(e)
        assert said == message if message is None else said.startswith(message), (line, said)
    # the batch: the first bad line and the others, before anything starts, nothing built
    prompts, out = tmp_path / "p.jsonl", tmp_path / "runs"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in lines))
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))  # the check builds no tiny model
    code, _, err, _ = cli("batch", str(prompts), "--config", CONFIG, "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert (
        f"error: {prompts}:2: system.refine.stpes is not a setting of RefineConfig; did you mean steps? "
        "(lines 3, 4, 5, 6 also fail); nothing was started"
    ) in err, err
    assert not out.exists()
    # a line without overrides that fails: the config with the batch's overrides is named
    prompts.write_text(json.dumps(lines[1]) + "\n" + json.dumps({"prompt": "a cat"}) + "\n")
    code, _, err, _ = cli(
        "batch", str(prompts), "--config", CONFIG, "--out", str(out), "system.renderer.depth_resolution=abc"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert (
        f"{CONFIG} with the batch's overrides: system.renderer.depth_resolution: Value 'abc' of type 'str' "
        "could not be converted to Integer"
    ) in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_second_prompt_file_keeps_the_first_ones_entries(tmp_path):
    """Another prompt file into the same --out merges into manifest.jsonl by name (the issue: 16
    entries cut to 1, their trials gone from the gallery and evaluate)."""
    out = tmp_path / "runs"
    trial = out / "portrait3d-tiny" / "a_man"
    (trial / "configs").mkdir(parents=True)
    (trial / "configs" / "parsed.yaml").write_text("{}")
    (trial / "stages.json").write_text('{"train": 1.0, "export": 1.0}')
    (tmp_path / "p.txt").write_text("a man\n")
    job = read_prompts(str(tmp_path / "p.txt"))[0]
    earlier = [
        {"name": f"earlier{i}", "prompt": f"portrait {i}", "status": "done", "trial": f"portrait3d-tiny/e{i}"}
        for i in range(15)
    ]
    mine = {
        "name": "a_man",
        "prompt": "a man",
        "seed": 0,
        "status": "done",
        "trial": "portrait3d-tiny/a_man",
        "files": {},
        "inputs": job.inputs(os.path.abspath(CONFIG), []),
    }
    (out / MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in earlier[:7] + [mine] + earlier[7:]))
    code, _, err, _ = cli("batch", str(tmp_path / "p.txt"), "--config", CONFIG, "--out", str(out))
    assert code == 0 and "nothing to do: 1 of 1 prompts done" in err, err
    assert [e["name"] for e in manifest(out)] == [e["name"] for e in earlier[:7]] + ["a_man"] + [
        e["name"] for e in earlier[7:]
    ]


def test_an_out_that_cannot_be_one_is_refused_before_ray(tmp_path):
    (tmp_path / "p.txt").write_text("a man\n")
    (tmp_path / "afile").write_text("x")
    for out, message in (
        (tmp_path / "afile", "afile is a file, not a folder"),
        (tmp_path / "afile" / "runs", "cannot be created: " + str(tmp_path / "afile") + " is a file"),
    ):
        code, _, err, seconds = cli("batch", str(tmp_path / "p.txt"), "--config", CONFIG, "--out", str(out))
        assert code == 2 and f"error: --out: {out}" in err and message in err and err.count("\n") == 1, err


def test_bad_options_get_one_line(tmp_path):
    (tmp_path / "p.txt").write_text("a man\n")
    code, _, err, _ = cli("batch", str(tmp_path / "missing.txt"), "--config", CONFIG)
    assert code == 2 and "missing.txt: no such prompt file" in err
    code, _, err, _ = cli("batch", str(tmp_path / "p.txt"), "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "--config" in err and "none.yaml: no such file" in err
    code, _, err, _ = cli(
        "batch",
        str(tmp_path / "p.txt"),
        "--config",
        CONFIG,
        "--evaluate",
        "--inception",
        str(tmp_path / "fid.pth"),
    )
    assert code == 2 and "--inception" in err and "fid.pth not found" in err
    code, _, err, _ = cli("evaluate", str(tmp_path))
    assert code == 2 and f"no {MANIFEST}" in err


# ------------------------------------------------------------------------ the batch on Ray
def _killer(out, found):
    """Wait for the 'man' trial's step-4 checkpoint, then SIGKILL the Ray worker running it."""
    import psutil

    ckpts = os.path.join(out, "portrait3d-tiny", "man", "ckpts")
    step4, last = os.path.join(ckpts, "epoch=0-step=4.ckpt"), os.path.join(ckpts, "last.ckpt")
    deadline = time.time() + 900
    while time.time() < deadline:
        if (
            os.path.isfile(step4)
            and os.path.isfile(last)
            and os.path.getmtime(last) >= os.path.getmtime(step4)
        ):
            break
        time.sleep(0.05)
    else:
        found["error"] = "no step-4 checkpoint"
        return
    time.sleep(0.5)  # let the write finish
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(a.endswith("launch.py") for a in cmd) and "tag='man'" in cmd:
            worker = proc.parent()
            found.update(
                child=proc.pid,
                worker=worker.pid,
                worker_cmd=" ".join(worker.cmdline())[:300],
                step4_mtime=os.path.getmtime(step4),
            )
            worker.send_signal(signal.SIGKILL)
            found["killed_step"] = checkpoint_step(last)
            return
    found["error"] = "no launch.py process for 'man'"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    import ray
    from threestudio_env import make_worktree

    from gan_prior.tiny_models import tiny_model_path

    base = tmp_path_factory.mktemp("batch")
    tree = make_worktree(str(base / "threestudio"))
    saved = {k: os.environ.get(k) for k in ("THREESTUDIO_ROOT", "PORTRAIT3D_CACHE", "WANDB_MODE")}
    os.environ.update(THREESTUDIO_ROOT=tree, PORTRAIT3D_CACHE=str(base / "cache"), WANDB_MODE="disabled")
    for name in (
        "portrait-gan",
        "stable-diffusion",
        "clip",
    ):  # built once, not by two workers at once
        tiny_model_path(name)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=worker_runtime_env(), log_to_driver=False)
    try:
        prompts = base / "prompts.jsonl"
        prompts.write_text("# the test set\n" + "\n".join(json.dumps(p) for p in PROMPTS) + "\n")
        out = str(base / "runs")
        killed: dict = {}
        killer = threading.Thread(target=_killer, args=(out, killed), daemon=True)
        killer.start()
        result = cli("batch", str(prompts), "--config", CONFIG, "--out", out, "--workers", "2", *SHORT)
        killer.join(timeout=5)
        yield {
            "out": out,
            "prompts": str(prompts),
            "result": result,
            "killed": killed,
            "base": base,
        }
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@needs_threestudio
def test_four_prompts_make_four_trials_and_a_complete_manifest(batch):
    code, stdout, stderr, _ = batch["result"]
    out = batch["out"]
    entries = manifest(out)
    assert [e["name"] for e in entries] == [
        "woman",
        "man",
        "upper_body_photo_portrait_of_an_old_man",
        "girl",
        "bad",
    ]
    assert code == 1 and "1 of 5 prompts failed (bad)" in stderr, stderr[-3000:]
    assert f"all of them on one page: portrait3d gallery {out}" in stdout  # where to look next
    assert "batch: " in stderr and "running" in stderr and "failed" in stderr  # the progress bar
    for e, p in zip(entries[:4], PROMPTS):
        assert e["status"] == "done" and e["error"] is None, e
        assert e["prompt"] == p["prompt"] and e["seed"] == p.get("seed", 0)
        assert e["trial"] == os.path.join("portrait3d-tiny", e["name"])
        trial = os.path.join(out, e["trial"])
        parsed = open(os.path.join(trial, "configs", "parsed.yaml")).read()
        assert f"prompt: {p['prompt']}" in parsed and f"seed: {e['seed']}" in parsed
        assert set(e["times"]) == {"train", "export"} and all(t > 0 for t in e["times"].values())
        assert e["peak_memory_mb"] > 100 and e["node"] == socket.gethostname()
        files = e["files"]
        assert sorted(os.path.basename(f) for f in files["meshes"]) == [
            "portrait.glb",
            "portrait.obj",
        ]
        assert {os.path.basename(f).split("-", 1)[1] for f in files["videos"]} == {
            "large_pose.mp4",
            "small_pose.mp4",
            "test.mp4",
        }
        assert all(os.path.isfile(os.path.join(out, f)) for kind in files.values() for f in kind)
        assert os.path.isfile(os.path.join(out, e["log"]))
    # no stray trial folders (the failed one left none: launch.py's one-line error removes it)
    assert sorted(os.listdir(os.path.join(out, "portrait3d-tiny"))) == sorted(e["name"] for e in entries[:4])
    assert entries[4]["trial"] is None


@needs_threestudio
def test_a_killed_worker_is_retried_and_resumes_its_checkpoint(batch):
    import psutil
    import torch

    killed, out = batch["killed"], batch["out"]
    assert "error" not in killed and "killed_step" in killed, killed
    assert "ray" in killed["worker_cmd"].lower()  # the Ray worker process was killed, not launch.py
    assert not psutil.pid_exists(killed["child"]) or psutil.Process(killed["child"]).status() == "zombie"
    man = next(e for e in manifest(out) if e["name"] == "man")
    assert man["status"] == "done" and man["attempts"] == 2, man
    assert 4 <= man["resumed_from_step"] == killed["killed_step"] < LONG
    trial = os.path.join(out, "portrait3d-tiny", "man")
    assert glob.glob(os.path.join(out, "portrait3d-tiny", "man*")) == [trial]  # the same trial, not a new one
    step4 = os.path.join(trial, "ckpts", "epoch=0-step=4.ckpt")
    assert os.path.getmtime(step4) == killed["step4_mtime"]  # its earlier checkpoints were kept, not redone
    last = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=True)
    assert last["global_step"] == LONG
    log = open(os.path.join(out, man["log"])).read()
    assert (
        log.count("attempt on") == 2
        and f"resume={os.path.join(trial, 'ckpts', 'last.ckpt')}"
        in open(os.path.join(trial, "cmd.txt")).read() + log
    )


@needs_threestudio
def test_a_bad_override_fails_alone_with_its_error(batch):
    code, stdout, stderr, _ = batch["result"]
    bad = next(e for e in manifest(batch["out"]) if e["name"] == "bad")
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert (
        "training failed (launch.py exit code 1): system.initializer.portrait.image: no_such.png not found; "
        "give the path to a portrait photo"
    ) in bad["error"]
    assert "\n" not in bad["error"] and "failed  bad: " in stderr


@needs_threestudio
def test_running_again_does_nothing_then_evaluate_the_set(batch):
    from gan_prior import evaluation as E
    from gan_prior.tiny_models import tiny_model_path

    out, prompts = batch["out"], batch["prompts"]
    stamp = os.path.getmtime(os.path.join(out, MANIFEST))
    code, _, err, seconds = cli("batch", prompts, "--config", CONFIG, "--out", out, "--workers", "2", *SHORT)
    assert code == 1 and "nothing to do: 4 of 5 prompts done" in err and "--retry-failed" in err, err
    assert seconds < 10 and os.path.getmtime(os.path.join(out, MANIFEST)) == stamp
    # the same name with another prompt is refused, naming the trial
    other = batch["base"] / "other.jsonl"
    other.write_text(json.dumps({"prompt": "a portrait of a cat", "name": "woman"}) + "\n")
    code, _, err, _ = cli("batch", str(other), "--config", CONFIG, "--out", out, *SHORT)
    assert code == 2 and "name 'woman'" in err and "other inputs" in err

    inception = random_inception_weights(str(batch["base"] / "inception.pth"))
    code, stdout, err, _ = cli("evaluate", out, "--inception", inception)
    assert code == 0, err
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    clip = tiny_model_path("clip")
    assert metrics["clip_model"] == clip  # from the trials' config (system.evaluation.clip_model)
    assert (
        metrics["num_portraits"] == 4 and metrics["num_views"] == 4 * 4 and metrics["num_reference"] == 4 * 2
    )
    for p in metrics["portraits"]:
        video = glob.glob(os.path.join(out, "portrait3d-tiny", p["name"], "save", "it*-large_pose.mp4"))[0]
        expected = E.clip_score(E.load_images(video), p["prompt"], clip)["clip_score"]
        assert p["clip_score"] == pytest.approx(expected, abs=1e-4) and p["num_views"] == 4
    assert metrics["clip_score"] == pytest.approx(sum(p["clip_score"] for p in metrics["portraits"]) / 4)
    assert metrics["fid"] > 0 and metrics["kid_std"] >= 0
    rows = list(csv.reader(open(os.path.join(out, "metrics.csv"))))
    assert rows[0][:3] == ["name", "prompt", "clip_score"] and len(rows) == 6 and rows[-1][0] == "mean"
    table = open(os.path.join(out, "metrics.md")).read()
    assert clip in table and "| 4 |" in table and "16 rendered views" in table
    assert f"CLIP score {metrics['clip_score']:.2f} over 4 portraits" in stdout


def test_run_refuses_an_outputs_folder_it_cannot_use_before_launch_py(tmp_path, monkeypatch):
    """``portrait3d run --outputs`` a file (or an empty path, which ran in the current folder) is one
    line naming --outputs, before threestudio starts (whose line named exp_root_dir)."""
    import portrait3d.run as run

    monkeypatch.setattr(run, "launch", lambda *a, **k: pytest.fail("launch.py started"))
    afile = tmp_path / "afile"
    afile.write_text("")
    for outputs, message in (
        (str(afile), f"error: --outputs: {afile} is a file, not a folder; give a folder"),
        (str(afile / "sub"), f"error: --outputs: {afile / 'sub'} cannot be created: {afile} is a file"),
        ("", "error: --outputs: empty path; give an output folder"),
    ):
        code, _, err, _ = cli("run", "--config", CONFIG, "--outputs", outputs)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_run_names_a_trial_launch_py_put_out_of_reach(tmp_path, monkeypatch):
    """A config whose tag holds a '/' (threestudio's own ``${rmspace:prompt}`` with "AC/DC" in the
    prompt) nests the trial one folder deeper than ``portrait3d run`` looks: a successful launch.py is
    then one line saying where to look and what to set, not "training failed (exit code 1)"."""
    import portrait3d.run as run

    def launch(root, args, log=None, stats=None):
        stamp = next(a.split("=", 1)[1].strip("'") for a in args if a.startswith("timestamp="))
        os.makedirs(tmp_path / "out" / "portrait3d-tiny" / "an_AC" / f"DC_fan{stamp}")
        return 0

    monkeypatch.setattr(run, "require_threestudio", lambda root=None: str(tmp_path))
    monkeypatch.setattr(run, "launch", launch)
    with pytest.raises(run.UsageError) as e:
        run.train_and_export("configs/portrait3d-tiny.yaml", [], str(tmp_path / "out"))
    assert str(e.value).startswith("training: launch.py finished, but its trial folder (*@")
    assert str(e.value).endswith(
        f"is not directly in {tmp_path / 'out'}/<name>/: a config whose tag holds a '/' nests it deeper; "
        "set tag=... to one folder name"
    )
