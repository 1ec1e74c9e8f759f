"""The threestudio system's safeguards: configuration checked in ``configure`` (before the
initialisation runs), and non-finite losses or gradients that never reach the pyramid, its EMA or a
checkpoint (skipped with a warning, then a clear stop)."""

import contextlib
import glob
import importlib.util
import logging
import os
import re

import pytest
import torch
from helpers import ROOT, requires_threestudio


def _safeguards():
    path = os.path.join(ROOT, "custom", "threestudio-portrait3d", "system", "safeguards.py")
    spec = importlib.util.spec_from_file_location("portrait3d_safeguards", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


S = _safeguards()


@pytest.mark.parametrize(
    "sizes, source, message",
    [
        ([8, 8, 16, 32], "prompt", "lists [8] twice"),
        ([8, 16, 64], "pyramid", "the prior has no level [64]"),
        ([8, 16], "prompt", "list all of them"),
        ([], "seed", "give a list"),
        (["8"], "seed", "give a list"),
    ],
)
def test_level_sizes_are_checked_against_the_prior(sizes, source, message):
    with pytest.raises(
        ValueError, match=f"system.geometry.level_sizes=.*{message.replace('[', '.').replace(']', '.')}"
    ):
        S.check_level_sizes(sizes, [8, 16, 32], source)
    S.check_level_sizes([8, 16], [8, 16, 32], "pyramid")  # a subset from a pyramid file is fine
    S.check_level_sizes([32, 8, 16], [8, 16, 32], "seed")


def test_every_level_is_optimised_and_no_other():
    params = {f"geometry.trigrids_{r}": {"lr": 1.0} for r in (8, 16, 32)}
    S.check_optimizer_levels(params, [8, 16, 32])
    S.check_optimizer_levels({"geometry": {"lr": 1.0}}, [8, 16, 32])
    with pytest.raises(
        ValueError, match=r"no entry for \['geometry.trigrids_32'\]: those levels would never be"
    ):
        S.check_optimizer_levels({k: v for k, v in params.items() if "32" not in k}, [8, 16, 32])
    with pytest.raises(
        ValueError, match=r"lists \['geometry.trigrids_64'\], which system.geometry.level_sizes"
    ):
        S.check_optimizer_levels({**params, "geometry.trigrids_64": {"lr": 1.0}}, [8, 16, 32])
    with pytest.raises(ValueError, match=r"system.videos.sheet_views=0 must be a positive integer"):
        S.check_positive({"system.refine.chunk": 5, "system.videos.sheet_views": 0})


class _Run(S.NonFiniteGuard):
    """The guard with a one-parameter "pyramid" and an optimizer, stepped as Lightning does."""

    max_nonfinite_steps = 3

    def __init__(self):
        self.p = torch.nn.Parameter(torch.ones(4))
        self.opt = torch.optim.Adam([self.p], lr=0.1)
        self.true_global_step = 0

    def step(self, loss_fn):
        def closure():
            self.opt.zero_grad()
            result = self.guard_loss({"loss": loss_fn(self.p)})
            if result is not None:
                result["loss"].backward()
                return result["loss"]
            return None

        self.optimizer_step(0, 0, self.opt, closure)
        self.true_global_step += 1


@contextlib.contextmanager
def logs_warning(caplog, pattern: str = ""):
    """The block logs a warning matching ``pattern`` on threestudio's logger (what a user sees,
    whatever their warning filters)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pytorch_lightning"):
        yield
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(re.search(pattern, m) for m in messages), messages


def test_a_non_finite_loss_or_gradient_is_skipped_then_stops_the_run(caplog):
    run = _Run()
    run.step(lambda p: (p**2).sum())
    good = run.p.detach().clone()
    with logs_warning(caplog, r"step 1: non-finite loss \(nan\); step skipped \(1 skipped so far\)"):
        run.step(lambda p: (p * float("nan")).sum())
    assert torch.equal(run.p.detach(), good)  # not updated, and Adam's state was not fed a NaN

    def nan_gradient(p):  # a finite loss whose backward is NaN
        x = p * 1.0
        x.register_hook(lambda g: g * float("nan"))
        return x.sum()

    with logs_warning(caplog, "step 2: non-finite gradient"):
        run.step(nan_gradient)
    assert torch.isfinite(run.p).all() and torch.equal(run.p.detach(), good)
    run.step(lambda p: (p**2).sum())  # a finite step resets the count in a row
    assert run.nonfinite_in_a_row == 0 and not torch.equal(run.p.detach(), good)
    assert all(
        torch.isfinite(s).all() for st in run.opt.state.values() for s in st.values() if torch.is_tensor(s)
    )
    with logs_warning(caplog):
        run.step(lambda p: (p * float("inf")).sum())
        run.step(lambda p: (p * float("inf")).sum())
    with pytest.raises(S.NonFiniteStepError, match="3 steps in a row had a non-finite loss or gradient"):
        run.step(lambda p: (p * float("inf")).sum())
    assert run.nonfinite_total == 5


def _tail(proc) -> str:
    return proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]


def test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints(
    tmp_path_factory,
):
    from threestudio_env import launch, make_worktree

    base = tmp_path_factory.mktemp("safeguards")
    tree, cache = make_worktree(str(base / "threestudio")), str(base / "cache")
    base_args = [
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "use_timestamp=false",
        "system.initializer.source=seed",
    ]
    for tag, override, message in (
        (
            "dup",
            "system.geometry.level_sizes=[8,8,16,32]",
            "system.geometry.level_sizes=[8, 8, 16, 32] lists [8] twice",
        ),
        ("sheet", "system.videos.sheet_views=0", "system.videos.sheet_views=0 must be a positive integer"),
        ("ema", "system.ema_every_n_steps=0", "system.ema_every_n_steps=0 must be a positive integer"),
    ):
        proc = launch(tree, cache, *base_args, f"tag={tag}", override, timeout=600)
        assert proc.returncode != 0 and message in proc.stderr, _tail(proc)
        assert "Traceback" not in proc.stderr, _tail(proc)
    # a level left out of optimizer.params (its keys hold dots: only a config file can drop one)
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(tree, "configs", "portrait3d-tiny.yaml"))
    del cfg.system.optimizer.params["geometry.trigrids_32"]
    path = str(base / "missing_level.yaml")
    OmegaConf.save(cfg, path)
    proc = launch(
        tree,
        cache,
        "--config",
        path,
        "--train",
        "use_timestamp=false",
        "system.initializer.source=seed",
        "tag=miss",
        timeout=600,
    )
    assert proc.returncode != 0, _tail(proc)
    assert "system.optimizer.params has no entry for ['geometry.trigrids_32']" in proc.stderr, _tail(proc)
    # every SDS loss NaN: steps skipped with warnings, then one clear stop; what was saved is finite
    proc = launch(
        tree,
        cache,
        *base_args,
        "tag=nan",
        "system.loss.lambda_sds=.nan",
        "system.max_nonfinite_steps=3",
        "checkpoint.every_n_train_steps=1",
        timeout=600,
    )
    assert proc.returncode != 0, _tail(proc)
    assert "3 steps in a row had a non-finite loss or gradient" in proc.stderr, _tail(proc)
    assert "step 0: non-finite loss" in proc.stderr, _tail(proc)
    for ckpt in glob.glob(os.path.join(tree, "outputs", "portrait3d-tiny", "nan", "ckpts", "*.ckpt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for k, v in state.items() if k.startswith(("geometry.", "ema_")))


for _mark in requires_threestudio:  # the launch test only
    test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints = _mark(
        test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints
    )
