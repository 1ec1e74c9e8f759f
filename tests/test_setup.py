"""The setup a new user runs (``make`` → ``portrait3d.threestudio_env``): threestudio from a local
archive, the extension linked into it, the start-up file that supplies the CPU import stand-ins and
one-line ``launch.py`` errors; and a non-editable install (``pip install .``) whose report pages have
their templates and the 3D viewer."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT, fake_trial

from portrait3d import launch_errors, threestudio_env
from portrait3d.threestudio_env import ThreestudioError


def fake_archive(path, top="threestudio"):
    """A source tarball shaped like threestudio's (launch.py, threestudio/, custom/, configs/)."""
    src = path.parent / "src" / top
    for d in ("threestudio", "custom", "configs"):
        (src / d).mkdir(parents=True)
    (src / "launch.py").write_text("print('launch')\n")
    (src / "threestudio" / "__init__.py").write_text("__version__ = '0.2.3'\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=top)
    return str(path)


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    dest = tmp_path / "deps" / "threestudio"
    monkeypatch.setattr(threestudio_env, "PINNED_CHECKOUT", str(dest))
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    return dest


def test_provision_extracts_the_archive_once_and_finds_it(tmp_path, pinned):
    archive = fake_archive(tmp_path / "ts.tar.gz")
    with pytest.raises(ThreestudioError, match="make demo"):
        threestudio_env.find_threestudio()
    root = threestudio_env.provision("abc1234", archive)
    assert root == str(pinned) and (pinned / "launch.py").is_file()
    assert (pinned / threestudio_env.PIN_FILE).read_text().strip() == "abc1234"
    assert threestudio_env.find_threestudio() == str(pinned)
    marker = pinned / "threestudio" / "marker"
    marker.write_text("kept")
    assert (
        threestudio_env.provision("abc1234", archive) == root and marker.exists()
    )  # reused, not re-extracted
    threestudio_env.provision("def5678", archive)  # another pin: replaced
    assert not marker.exists() and (pinned / threestudio_env.PIN_FILE).read_text().strip() == "def5678"
    assert not [p for p in os.listdir(pinned.parent) if p.startswith(".threestudio.")]  # no temp left


def test_provision_errors_are_one_line(tmp_path, pinned, monkeypatch):
    with pytest.raises(ThreestudioError, match="THREESTUDIO_ARCHIVE=.*does not exist"):
        threestudio_env.provision("abc1234", str(tmp_path / "missing.tar.gz"))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ThreestudioError, match="cannot extract"):
        threestudio_env.provision("abc1234", str(bad))
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(__file__, arcname="x/readme.py")
    with pytest.raises(ThreestudioError, match="not a threestudio source archive"):
        threestudio_env.provision("abc1234", str(other))
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path))
    with pytest.raises(ThreestudioError, match="THREESTUDIO_ROOT=.* is not a threestudio checkout"):
        threestudio_env.find_threestudio()


def test_install_links_the_extension_and_configs(tmp_path, pinned, monkeypatch):
    root = threestudio_env.provision("abc1234", fake_archive(tmp_path / "ts.tar.gz"))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(threestudio_env.sysconfig, "get_paths", lambda: {"purelib": str(site)})
    assert not threestudio_env.extension_installed(root)
    done = threestudio_env.install_extension(root)
    ext = os.path.join(root, "custom", "threestudio-portrait3d")
    assert os.path.realpath(ext) == os.path.join(ROOT, "custom", "threestudio-portrait3d")
    assert os.path.realpath(os.path.join(root, "configs", "portrait3d-tiny.yaml")) == os.path.join(
        ROOT, "configs", "portrait3d-tiny.yaml"
    )
    assert threestudio_env.extension_installed(root)
    assert str(site / threestudio_env.STARTUP_PTH) in done
    assert threestudio_env.install_extension(root)  # again: links replaced, no error
    os.remove(ext)
    os.makedirs(ext)
    with pytest.raises(ThreestudioError, match="exists and is a folder not made by this installer"):
        threestudio_env.install_extension(root)


def run_python(code, path_entries=(), site=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([*path_entries, ROOT])
    args = [sys.executable, "-c", code]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def test_start_up_file_serves_stand_ins_only_where_the_real_package_is_missing(tmp_path):
    # the .pth line as site.py runs it
    code = (
        threestudio_env.STARTUP_LINE.strip() + "\n"
        "import sys; assert 'gan_prior' not in sys.modules and 'torch' not in sys.modules  # cheap\n"
        "import tinycudann, nvdiffrast.torch, controlnet_aux, sys\n"
        "print(tinycudann.__file__); print(nvdiffrast.torch.__file__)\n"
        "print(sys.excepthook._portrait3d)\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0].startswith(os.path.join(ROOT, "portrait3d", "cpu_stubs", "tinycudann"))
    assert lines[1].startswith(os.path.join(ROOT, "portrait3d", "cpu_stubs", "nvdiffrast"))
    assert lines[2] == "True"
    real = tmp_path / "real" / "tinycudann"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    r = run_python(
        code.replace("print(tinycudann.__file__)", "print(tinycudann.REAL)"), [str(tmp_path / "real")]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True"  # the installed package wins over the stand-in


def test_stand_ins_raise_with_the_install_hint():
    r = run_python(
        "import portrait3d.stand_ins as c; c.install()\n"
        "import tinycudann\n"
        "try:\n tinycudann.Encoding(3, {})\nexcept RuntimeError as e:\n print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "not available" in r.stdout


def test_gan_prior_makes_pypi_torchvision_importable():
    r = run_python("import gan_prior, torchvision, torch; print(torchvision.__version__)")
    assert r.returncode == 0, r.stderr


def test_one_line_messages_for_known_launch_errors():
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.create(
        {
            "tag": "${rmspace:${system.prompt_processor.prompt},_}",
            "system": {"prompt_processor": {"prompt": "???"}},
        }
    )
    # threestudio's resolver, registered here only for this test when threestudio is not imported
    # (left registered, it would make a later `import threestudio` in this process fail)
    ours = not OmegaConf.has_resolver("rmspace")
    if ours:
        OmegaConf.register_new_resolver("rmspace", lambda s, sub: s.replace(" ", sub))
    try:
        with pytest.raises(OmegaConfBaseException) as e:
            OmegaConf.to_container(cfg, resolve=True)
    finally:
        if ours:
            OmegaConf.clear_resolver("rmspace")
    assert launch_errors.one_line(e.value).startswith("system.prompt_processor.prompt is not set")

    from dataclasses import dataclass

    @dataclass
    class Config:
        initializer: dict
        initializer_type: str = "gan-prior-initializer"

    def parse(fields, cfg):
        return fields(**cfg)

    with pytest.raises(TypeError) as e:
        parse(Config, {"initialiser": {}})
    assert launch_errors.one_line(e.value) == (
        "unknown config key 'initialiser' in test_one_line_messages_for_known_launch_errors.<locals>.Config; "
        "did you mean initializer, initializer_type?"
    )
    assert "not installed" in launch_errors.one_line(KeyError("portrait3d-camera-datamodule"))
    assert launch_errors.one_line(ZeroDivisionError("a bug")) is None  # a bug keeps its traceback


@pytest.mark.parametrize("pep706", [True, False])
def test_an_archive_with_paths_outside_is_refused(tmp_path, pinned, monkeypatch, pep706):
    if not pep706:  # Python < 3.11.4 (e.g. Debian 12's 3.11.2): our own member check
        monkeypatch.delattr(threestudio_env.tarfile, "data_filter", raising=False)
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="threestudio/../../escaped")
    with pytest.raises(ThreestudioError):
        threestudio_env.provision("abc1234", str(evil))
    assert not (tmp_path / "escaped").exists() and not (pinned.parent.parent / "escaped").exists()


def test_known_noise_of_a_run_is_quiet_and_the_rest_kept():
    """The start-up file quiets what a run printed that a user can do nothing about (CUDA-toolkit
    notices on a CPU torch, Lightning's cloud tips, its eval-mode and pytree notices, emitted as they
    are), and keeps other warnings."""
    code = (
        "import logging, sys, warnings\n"
        "if sys.argv[1] == 'startup':\n"
        "    import portrait3d.startup\n"
        "logging.getLogger('torch.utils.cpp_extension').warning(\"No CUDA runtime is found, using CUDA_HOME='/x'\")\n"
        "logging.getLogger('pytorch_lightning.utilities.rank_zero').warning('💡 Tip: try litlogger')\n"
        "warnings.warn('Found 36 module(s) in eval mode at the start of training. If ...', UserWarning)\n"
        "warnings.warn('`isinstance(treespec, LeafSpec)` is deprecated, use ...', FutureWarning)\n"
        "warnings.warn('Be aware that when using `ckpt_path`, callbacks used to create the checkpoint ...')\n"
        "warnings.warn('predict returned None if it was on purpose, ignore this warning...')\n"
        "logging.getLogger('pytorch_lightning.utilities.rank_zero').warning('a warning to keep')\n"
    )
    noisy, quiet = (
        # -S: without site-packages' .pth files, so that only the "startup" run has the start-up file
        subprocess.run(
            [sys.executable, "-S", "-c", code, mode], capture_output=True, text=True, cwd=ROOT
        ).stderr
        for mode in ("plain", "startup")
    )
    noise = ("No CUDA runtime", "💡 Tip", "eval mode", "LeafSpec", "Be aware", "predict returned None")
    for line in (*noise, "a warning to keep"):
        assert line in noisy, noisy  # (what each line looks like without the start-up file)
    assert "a warning to keep" in quiet
    assert not any(line in quiet for line in noise), quiet


VIEWER_BUNDLE = os.path.join(
    ROOT, "node_modules", "@google", "model-viewer", "dist", "model-viewer-umd.min.js"
)


def test_the_viewer_version_is_package_jsons():
    from portrait3d.report import VIEWER_PACKAGE, VIEWER_VERSION

    with open(os.path.join(ROOT, "package.json")) as f:
        assert json.load(f)["dependencies"][VIEWER_PACKAGE] == VIEWER_VERSION


def test_a_non_editable_install_writes_reports_with_templates_and_the_3d_view(tmp_path):
    """``pip install .`` (a wheel, not -e) of a checkout where ``npm ci`` ran: the installed
    ``portrait3d report``, run away from the checkout, finds its templates and its copy of the viewer;
    without that copy it says in one line how to get one, and PORTRAIT3D_VIEWER_JS serves."""
    assert os.path.isfile(VIEWER_BUNDLE), "run `npm ci` (make setup) first"
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".deps",
            "node_modules",
            "build",
            "dist",
            "outputs",
            "tests",
            "*.egg-info",
            "__pycache__",
        ),
    )
    os.symlink(os.path.join(ROOT, "node_modules"), src / "node_modules")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("portrait3d_threestudio-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    trial = fake_trial(str(tmp_path / "runs" / "exp" / "t"), prompt="an installed portrait")
    env = {k: v for k, v in os.environ.items() if k != "PORTRAIT3D_VIEWER_JS"}
    env["PYTHONPATH"] = str(site)  # before the editable install of this checkout

    def report(**extra):
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import portrait3d, sys; print(portrait3d.__file__, file=sys.stderr); "
                "from portrait3d.cli import main; sys.exit(main())",
                "report",
                trial,
            ],
            cwd=str(tmp_path),
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = report()
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(str(site / "portrait3d" / "__init__.py")), r.stderr  # the installed copy
    page = open(os.path.join(trial, "save", "index.html")).read()
    assert "<model-viewer" in page and "an installed portrait" in page
    copied = os.path.join(trial, "save", "_report", "model-viewer.min.js")
    with open(VIEWER_BUNDLE) as a, open(copied) as b:
        original, shipped = a.read(), b.read()
    assert len(shipped) > 100_000 and shipped.split("//# sourceMappingURL")[0].strip() in original

    shutil.rmtree(site / "portrait3d" / "viewer")  # a wheel built without node_modules
    r = report()
    assert r.returncode == 2 and r.stderr.count("\n") == 2, r.stderr  # the module path, then one line
    line = r.stderr.splitlines()[1]
    assert "npm install @google/model-viewer@" in line and "PORTRAIT3D_VIEWER_JS" in line, line
    r = report(PORTRAIT3D_VIEWER_JS=VIEWER_BUNDLE)
    assert r.returncode == 0, r.stderr
