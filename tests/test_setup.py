"""The setup a new user runs (``make`` → ``portrait3d.threestudio_env``): threestudio from a local
archive, the extension linked into it, the start-up file that supplies the CPU import stand-ins and
one-line ``launch.py`` errors."""

import os
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT

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
        "import portrait3d.cpu_compat as c; c.install()\n"
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
    if not OmegaConf.has_resolver("rmspace"):
        OmegaConf.register_new_resolver("rmspace", lambda s, sub: s.replace(" ", sub))
    with pytest.raises(OmegaConfBaseException) as e:
        OmegaConf.to_container(cfg, resolve=True)
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
