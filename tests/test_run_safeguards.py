"""The threestudio system's safeguards: configuration checked in ``configure`` (before the
initialisation runs), and non-finite losses or gradients that never reach the pyramid, its EMA or a
checkpoint (skipped with a warning, then a clear stop)."""

import contextlib
import glob
import importlib.util
import json
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


def test_sizes_are_bounded_by_what_the_renderer_is_built_for():
    """4096 samples per ray (or a 100 000² video) would allocate gigabytes after the initialisation ran."""
    from types import SimpleNamespace as N

    def cfg(videos=None, refine=None):
        v = {
            "resolution": 512,
            "large_frames": 240,
            "small_frames": 120,
            "samples": (96, 96),
            **(videos or {}),
        }
        r = {"resolution": 512, "view_samples": (96, 96), "fit_samples": (48, 48), **(refine or {})}
        return N(videos=N(**v), refine=N(**r))

    S.check_sizes(cfg())
    for bad, message in (
        (
            cfg(videos={"samples": (4096, 96)}),
            "system.videos.samples: depth_resolution = 4096; expected an integer",
        ),
        (
            cfg(refine={"fit_samples": (48, -1)}),
            "system.refine.fit_samples: depth_resolution_importance = -1",
        ),
        (
            cfg(refine={"view_samples": (48,)}),
            r"system.refine.view_samples=\[48\]: give \[stratified, importance\]",
        ),
        (
            cfg(videos={"resolution": 100000}),
            "system.videos.resolution=100000 must be an integer between 0 and 4096",
        ),
        (cfg(videos={"large_frames": 10**9}), "system.videos.large_frames=1000000000 must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            S.check_sizes(bad)


class _Run(S.NonFiniteGuard):
    """The guard with a one-parameter "pyramid" and an optimizer, stepped as Lightning does."""

    max_nonfinite_steps = 3

    def __init__(self):
        self.p = torch.nn.Parameter(torch.ones(4))
        self.opt = torch.optim.Adam([self.p], lr=0.1)
        self.true_global_step = 0

    def step(self, loss_fn):
        def closure():  # Lightning's: zero_grad, training_step, backward; returns the loss
            self.opt.zero_grad()
            result = self.guard_loss({"loss": loss_fn(self.p)})
            result["loss"].backward()
            return result["loss"]

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


def test_a_stage_whose_every_step_was_skipped_stops_the_run():
    """A stage shorter than max_nonfinite_steps, every step of it skipped (e.g. an overflowing
    guidance scale), used to end "done" with the untrained pyramid; now it stops in one line. A
    stage with one good step, or one this run joined part-way (a resume), goes on."""
    run = _Run()
    run.max_nonfinite_steps = 10
    for _ in range(4):
        run.step(lambda p: (p * float("inf")).sum())
    with pytest.raises(
        S.NonFiniteStepError,
        match=r"every one of the 4 steps of the SDS stage had a non-finite loss or gradient \(non-finite "
        r"loss \(inf\)\), so it trained nothing",
    ):
        run.check_stage_trained("SDS", 4)
    assert run.stage_steps == 0  # the next stage counts from zero
    run.step(lambda p: (p**2).sum())
    run.step(lambda p: (p * float("inf")).sum())
    run.check_stage_trained("refinement", 2)  # one good step
    run.step(lambda p: (p * float("inf")).sum())
    run.check_stage_trained("refinement", 5)  # this run ran 1 of the stage's 5 steps


def test_the_training_loop_settings_that_fail_late_are_refused():
    loop = {"max_steps": 8, "max_epochs": None, "limit_train_batches": 1.0}
    S.check_training_loop(**loop, val_check_interval=4, accumulate_grad_batches=1)
    S.check_training_loop(**{**loop, "max_steps": -1}, val_check_interval=None, accumulate_grad_batches=1)
    for change, message in (
        ({"max_steps": 3.5}, "trainer.max_steps=3.5: give a whole number of steps"),
        ({"max_steps": True}, "trainer.max_steps=True: give a whole number"),
        ({"max_epochs": 0}, "trainer.max_epochs=0, trainer.limit_train_batches=1.0: this trains nothing"),
        ({"val_check_interval": 0}, "trainer.val_check_interval=0: give the steps between validations"),
        ({"val_check_interval": -0.5}, "trainer.val_check_interval=-0.5"),
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2: Portrait3D steps the pyramid"),
    ):
        args = {**loop, "val_check_interval": 4, "accumulate_grad_batches": 1, **change}
        with pytest.raises(ValueError, match=re.escape(message)):
            S.check_training_loop(**args)


def test_cameras_that_cannot_see_the_portrait_are_refused():
    """Rays are sampled only 2.35 to 3.12 from each camera, in a cube of side 0.7: cameras farther,
    nearer, or looking elsewhere render nothing of the portrait (threestudio's own datamodule's
    defaults, 1 to 1.5, among them)."""
    from types import SimpleNamespace as NS

    window = (2.35, 3.12, 0.7)
    pivot = (0.0, 0.0, 0.0649)
    S.check_camera_window(
        NS(look_at=pivot, camera_distance_range=[2.5, 3.0], eval_camera_distance=2.7), *window
    )
    for data, message in (
        (
            NS(look_at=pivot, camera_distance_range=[2.7, 1e6], eval_camera_distance=2.7),
            "data.camera_distance_range=[2.7, 1000000.0]: the renderer samples each ray from "
            "system.renderer.ray_start=2.35 to ray_end=3.12 from its camera, so only cameras 2.41 to 3.06 "
            "from the origin see the portrait",
        ),
        (
            NS(camera_distance_range=[1.0, 1.5], eval_camera_distance=1.5),
            "data.camera_distance_range=[1.0, 1.5]",
        ),
        (
            NS(look_at=pivot, camera_distance_range=[2.7, 2.7], eval_camera_distance=4),
            "data.eval_camera_distance=4:",
        ),
        (
            NS(look_at=(0, 0, 2.7), camera_distance_range=[2.7, 2.7]),
            "data.look_at=[0.0, 0.0, 2.7] is outside",
        ),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            S.check_camera_window(data, *window)
    # a window moved with the SDS cameras: the official ones (refinement, videos, export) see nothing
    with pytest.raises(
        ValueError,
        match=re.escape(
            "system.renderer.ray_start=3.5, ray_end=4.5: the official cameras (the refinement's 21 views, "
            "the videos, the export's views) look at the portrait from 2.7, which must lie in that window "
            "(the official one is 2.35 to 3.12)"
        ),
    ):
        S.check_camera_window(
            NS(look_at=pivot, camera_distance_range=[4, 4], eval_camera_distance=4), 3.5, 4.5, 0.7
        )


def test_a_gpu_index_the_machine_lacks_is_refused_not_run_on_the_cpu(monkeypatch, caplog):
    """launch.py --gpu 5 on a one-GPU machine hides its GPU (CUDA_VISIBLE_DEVICES=5): torch sees none
    and the run went on on the CPU without a word."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "CUDA_VISIBLE_DEVICES='5' (launch.py --gpu 5) names no GPU of this machine, which has 1 (0 to 0), "
            "and the run would train on the CPU: pick one with --gpu 0"
        ),
    ):
        S.check_visible_gpus()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # visible, yet unusable (e.g. an old driver): a warning
    with logs_warning(caplog, r"this machine has 1 GPU\(s\) but torch .* sees none"):
        S.check_visible_gpus()

    def no_nvml():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", no_nvml)  # a CPU machine: nothing to say
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    caplog.clear()
    S.check_visible_gpus()
    assert not caplog.records


def _lightning_module(loss_fn, max_nonfinite_steps=10):
    """A Lightning module with the guard: one weight vector and a linear layer (an fp16 matmul
    under autocast), trained by a real Trainer."""
    import pytorch_lightning as pl

    class Module(S.NonFiniteGuard, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.max_nonfinite_steps = max_nonfinite_steps
            self.linear = torch.nn.Linear(4, 4)

        @property
        def true_global_step(self):
            return self.global_step

        def training_step(self, batch, batch_idx):
            return self.guard_loss({"loss": loss_fn(self.linear, batch[0])})

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.1)

        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(torch.ones(16, 4))
            return torch.utils.data.DataLoader(data, batch_size=1)

    return Module()


def _fit(module, steps, **trainer):
    import pytorch_lightning as pl

    before = [p.detach().clone() for p in module.parameters()]
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    ).fit(module)
    return [not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters())]


def _fp16_mixed():
    """Lightning's 16-mixed plugin (autocast to float16 + GradScaler), forced on the CPU, where
    Lightning would pick bf16-mixed instead: the code path of 16-mixed on a GPU."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    return MixedPrecision("16-mixed", "cpu")


def _quadratic(linear, x):
    # a float32 loss whose fp16 gradients (the linear layer's output) fit the first loss scale
    return (linear(x).float() - 3).square().mean() * 0.01


def _overflows_at_first(linear, x):
    return linear(x).sum()  # d/d(fp16 output) = the loss scale: 65536 overflows fp16 (max 65504)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_every_precision_the_system_accepts_trains(precision):
    """The guard steps the optimizer under each precision run with: under 16-mixed through the
    GradScaler (it used to run the closure itself, so the AMP plugin never stepped)."""
    module = _lightning_module(_quadratic)
    trainer = {"plugins": [_fp16_mixed()]} if precision == "16-mixed" else {"precision": precision}
    assert all(_fit(module, 3, **trainer)), "the weights did not move"
    S.check_trainer(precision if precision != "32" else "32-true", 1, False, False, "cpu")


def test_an_fp16_overflow_is_the_scalers_and_a_nan_loss_is_still_skipped(caplog):
    """The first loss scale (65536) overflows an fp16 matmul's gradient: the scaler skips that step
    and halves its scale, and training goes on (before, the guard counted it and stopped the run)."""
    plugin = _fp16_mixed()
    assert all(_fit(_lightning_module(_overflows_at_first, max_nonfinite_steps=2), 4, plugins=[plugin]))
    assert plugin.scaler.get_scale() == 32768.0  # one overflow, then finite steps

    def nan_at_1(linear, x, calls=[]):  # noqa: B006  (counts the calls)
        calls.append(1)
        return _quadratic(linear, x) * (float("nan") if len(calls) == 2 else 1.0)

    plugin = _fp16_mixed()
    module = _lightning_module(nan_at_1)
    with logs_warning(caplog, r"step 1: non-finite loss \(nan\); step skipped \(1 skipped so far\)"):
        assert all(_fit(module, 4, plugins=[plugin]))
    assert (
        module.nonfinite_total == 1 and plugin.scaler.get_scale() == 65536.0
    )  # a NaN loss: not the scaler's


@pytest.mark.parametrize(
    "precision, devices, deterministic, device, message",
    [
        ("16-true", 1, False, "cpu", r"trainer.precision=16-true: use 32 \(the official setting\), 16-mixed"),
        ("bf16-true", 1, False, "cuda", "trainer.precision=bf16-true"),
        ("64-true", 1, False, "cpu", "must stay float32"),
        ("32-true", 2, False, "cuda", "this run sees 2 GPUs .* pick it with --gpu 0"),
        ("32-true", 1, True, "cuda", "trainer.deterministic=true: the renderer's CUDA backward"),
    ],
)
def test_what_the_system_cannot_train_with_is_refused_in_one_line(
    precision, devices, deterministic, device, message
):
    with pytest.raises(ValueError, match=message) as err:
        S.check_trainer(precision, devices, deterministic, False, device)
    assert "\n" not in str(err.value)
    S.check_trainer("32-true", 1, True, True, "cuda")  # deterministic=warn: runs, with warnings
    S.check_trainer("32-true", 1, True, False, "cpu")  # deterministic on the CPU: works


def test_several_visible_gpus_are_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"this run sees 2 GPUs \(CUDA_VISIBLE_DEVICES='0,1'\).*--gpu 0"):
        S.check_visible_gpus()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    S.check_visible_gpus()


for _test in (
    test_every_precision_the_system_accepts_trains,
    test_an_fp16_overflow_is_the_scalers_and_a_nan_loss_is_still_skipped,
):
    for _mark in requires_threestudio:  # pytorch_lightning comes with threestudio's requirements
        _test = _mark(_test)


def _tail(proc) -> str:
    return proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]


def test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints(
    tmp_path_factory,
):
    from threestudio_env import launch, launch_to_error, make_worktree

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
        ("prec", "trainer.precision=16-true", "trainer.precision=16-true: use 32 (the official setting)"),
        ("lam", "system.loss.lambda_sds=.nan", "system.loss.lambda_sds=nan: give a finite number"),
        (
            "key",
            "system.renderer.depth_resolutoin=8",
            "system.renderer.depth_resolutoin is not a setting of portrait3d-renderer",
        ),
    ):
        proc = launch_to_error(tree, cache, *base_args, f"tag={tag}", override)
        assert proc.returncode != 0 and message in proc.stderr, _tail(proc)
        assert "Traceback" not in proc.stderr, _tail(proc)
    # a level left out of optimizer.params (its keys hold dots: only a config file can drop one)
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(tree, "configs", "portrait3d-tiny.yaml"))
    del cfg.system.optimizer.params["geometry.trigrids_32"]
    path = str(base / "missing_level.yaml")
    OmegaConf.save(cfg, path)
    proc = launch_to_error(
        tree,
        cache,
        "--config",
        path,
        "--train",
        "use_timestamp=false",
        "system.initializer.source=seed",
        "tag=miss",
    )
    assert proc.returncode != 0, _tail(proc)
    assert "system.optimizer.params has no entry for ['geometry.trigrids_32']" in proc.stderr, _tail(proc)
    # every SDS loss infinite (a weight beyond float32; a NaN weight is refused above): steps skipped
    # with warnings, then one clear stop; what was saved is finite
    proc = launch(
        tree,
        cache,
        *base_args,
        "tag=nan",
        "system.loss.lambda_sds=1e39",
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
    # the same, with a stage (4 SDS steps) shorter than max_nonfinite_steps: it used to end "done"
    proc = launch_to_error(tree, cache, *base_args, "tag=allskipped", "system.loss.lambda_sds=1e39")
    assert proc.returncode != 0, _tail(proc)
    assert (
        "[ERROR] every one of the 4 steps of the SDS stage had a non-finite loss or gradient (non-finite "
        "loss (inf)), so it trained nothing; stopping." in proc.stderr
    ), _tail(proc)
    status = json.load(open(os.path.join(tree, "outputs", "portrait3d-tiny", "allskipped", "status.json")))
    assert status["state"] == "failed" and status["error"].startswith("every one of the 4 steps"), status


def test_the_system_sets_the_tf32_policy_and_refuses_several_gpus_in_configure(tmp_path, monkeypatch):
    """system.allow_tf32 sets TF32 for the run's float32 matmuls and convolutions; several visible
    GPUs stop the system's construction (launch.py then never starts a process per GPU)."""
    from threestudio_env import import_extension

    ts = import_extension()
    from threestudio.utils.config import load_config

    def system(*overrides):
        cfg = load_config(
            os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"),
            cli_args=["system.initializer.source=seed", f"exp_root_dir={tmp_path}", *overrides],
        )
        return ts.find(cfg.system_type)(cfg.system)

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for allow in (False, True):
            system(f"system.allow_tf32={allow}")
            assert torch.backends.cuda.matmul.allow_tf32 is allow and torch.backends.cudnn.allow_tf32 is allow
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match=r"this run sees 2 GPUs .*pick it with --gpu 0"):
        system()


SETTINGS = [  # (override, the one line configure and portrait3d batch give for it)
    (
        "system.renderer.depth_resolutoin=3",
        "system.renderer.depth_resolutoin is not a setting of "
        "portrait3d-renderer; did you mean depth_resolution, depth_resolution_importance?",
    ),
    (
        "system.geometry.level_size=[8]",
        "system.geometry.level_size is not a setting of pyramid-trigrid; did you mean level_sizes?",
    ),
    (
        "system.material.checkpiont=x",
        "system.material.checkpiont is not a setting of portrait3d-gan-material",
    ),
    ("system.refine.stpes=3", "system.refine.stpes is not a setting of RefineConfig; did you mean steps?"),
    (
        "system.initializer.portrait.inversion.stepz=3",
        "system.initializer.portrait.inversion: unknown key(s) ['stepz']",
    ),
    (
        "system.renderer.depth_resolution=abc",
        "system.renderer.depth_resolution: Value 'abc' of type 'str' could not be converted to Integer",
    ),
    ("system.renderer.ray_start=nan", "system.renderer.ray_start=nan: give a finite number"),
    ("system.ema_decay=.inf", "system.ema_decay=inf: give a finite number"),
    (
        "system.optimizer.params.geometry.trigrids_8.lr=.nan",
        "system.optimizer.params.geometry.trigrids_8.lr=nan: give a finite number",
    ),
    ("system.loss.lambda_sds=nan", "system.loss.lambda_sds='nan': give a number, or a schedule"),
    ("system.loss.lambda_entropy=[0,1,2,3,4]", "system.loss.lambda_entropy=[0, 1, 2, 3, 4]: give a number"),
    ("system.guidance.guidance_scale=.nan", "system.guidance.guidance_scale=nan: give a finite number"),
    (
        "system.guidance.min_step_percent=0.9",
        "system.guidance.min_step_percent=0.9 and max_step_percent=0.4 (portrait3d-sd-guidance): give 0 ≤ min "
        "≤ max ≤ 1",
    ),
    ("system.optimizer.args.lr=-1", "system.optimizer.args.lr=-1: give a learning rate ≥ 0"),
    (
        "system.optimizer.params.geometry.trigrids_8.lr=2",
        "system.optimizer.params has 'geometry' and 'geometry.trigrids_8': an override such as",
    ),
    ("system.prompt_processor.prompt=' '", "system.prompt_processor.prompt is empty: give the text"),
    (
        "system.exporter.texture_sise=64",
        "system.exporter.texture_sise is not a setting of portrait3d-exporter; did you mean texture_size",
    ),
    # the refinement's: 0 SDEdit steps failed after the SDS stage; a negative rate or weight ran
    (
        "system.refine.sdedit_steps=0",
        "system.refine.sdedit_steps=0 must be in 1..1000 (the DDIM schedule's length); the official value is 50",
    ),
    ("system.refine.lr=-1", "system.refine.lr=-1.0 must be ≥ 0; the official value is 1"),
    (
        "system.refine.loss_weight=-1",
        "system.refine.loss_weight=-1.0 must be ≥ 0; the official value is 1000",
    ),
    # the initialisation's numbers: 0 divided by zero in the camera search
    (
        "system.initializer.portrait.camera_resolution=0",
        "system.initializer.portrait.camera_resolution: 0 must be a whole number ≥ 8 and ≤ 4096; the default is 64",
    ),
    (
        "system.initializer.portrait.inversion.noise_ramp_length=0",
        "system.initializer.portrait.inversion.noise_ramp_length: 0 must be a number > 0; the default is 0.75",
    ),
    # the export wrote ../../evil.glb beside the trial's save/; 1e8 samples per ray ran out of memory
    (
        "system.exporter.save_name=../../evil",
        "system.exporter.save_name='../../evil': give a file name without folders (the export's files go "
        "to the trial's save/it<step>-export/)",
    ),
    (
        "system.exporter.save_name=a\\b",
        "system.exporter.save_name='a\\\\b': give a file name without folders",
    ),
    (
        "system.exporter.ray_samples=[100000000,0]",
        "system.exporter.ray_samples=[100000000, 0] must be [stratified 2..512, importance 0..512]",
    ),
]


def test_settings_are_checked_without_building_or_reading_anything(tmp_path):
    """``Portrait3DSystem.check_settings`` (configure's first check, and portrait3d batch's before
    it starts): a misspelt key anywhere, text where a number belongs, a non-finite number, a loss
    weight threestudio's C() cannot read — each one line naming the key, where before some failed
    only when their component was built (after the initialisation's check) or at the first step."""
    from threestudio_env import import_extension

    ts = import_extension()
    from threestudio.utils.config import load_config, parse_structured

    def check(*overrides):
        cfg = load_config(
            os.path.join(ROOT, "configs", "portrait3d-tiny.yaml"),
            cli_args=[
                f"exp_root_dir={tmp_path}",
                "tag=settings",
                *overrides,
            ],  # (a tag: a blank prompt reaches the check)
        )
        system = ts.find(cfg.system_type)
        return system.check_settings(parse_structured(system.Config, cfg.system))

    assert check() == []  # the config as shipped, and a valid schedule and weights
    assert check("system.loss.lambda_entropy=[1,0.5,2]", "system.loss.lambda_sds=2") == []
    for override, message in SETTINGS:
        with pytest.raises(ValueError) as e:
            check(override)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (override, str(e.value))
    assert check("system.exporter.mesh_formats=[]") == []  # the pyramid alone
    with pytest.raises(
        ValueError, match="system.exporter.mesh_formats and system.exporter.pyramid_formats are both"
    ):
        check("system.exporter.mesh_formats=[]", "system.exporter.pyramid_formats=[]")


def test_by_default_a_run_keeps_the_last_checkpoint_and_the_sds_result(tmp_path_factory):
    """checkpoint.save_top_k=0 (configs/portrait3d.yaml: ~0.95 GiB per checkpoint): ckpts/ holds
    last.ckpt and the stage boundary (the SDS result), not one file per 100 steps."""
    from omegaconf import OmegaConf
    from threestudio_env import launch, make_worktree

    full = OmegaConf.load(os.path.join(ROOT, "configs", "portrait3d.yaml")).checkpoint
    assert (full.save_last, full.save_top_k) == (True, 0)
    base = tmp_path_factory.mktemp("ckpts")
    tree = make_worktree(str(base / "threestudio"))
    proc = launch(
        tree,
        str(base / "cache"),
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "use_timestamp=false",
        "tag=keep",
        "system.initializer.source=seed",
        "checkpoint.save_top_k=0",
        "system.videos.large_frames=0",
        "system.videos.small_frames=0",
        timeout=900,
    )
    assert proc.returncode == 0, _tail(proc)
    ckpts = os.path.join(tree, "outputs", "portrait3d-tiny", "keep", "ckpts")
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    boundary = torch.load(os.path.join(ckpts, "epoch=0-step=4.ckpt"), map_location="cpu", weights_only=True)
    last = torch.load(os.path.join(ckpts, "last.ckpt"), map_location="cpu", weights_only=True)
    assert boundary["global_step"] == 4 and "portrait3d_refine" not in boundary  # SDS done, refinement not
    assert last["global_step"] == 8 and "portrait3d_refine" in last


for _mark in requires_threestudio:  # the threestudio tests only
    test_by_default_a_run_keeps_the_last_checkpoint_and_the_sds_result = _mark(
        test_by_default_a_run_keeps_the_last_checkpoint_and_the_sds_result
    )
    test_the_system_sets_the_tf32_policy_and_refuses_several_gpus_in_configure = _mark(
        test_the_system_sets_the_tf32_policy_and_refuses_several_gpus_in_configure
    )
    test_settings_are_checked_without_building_or_reading_anything = _mark(
        test_settings_are_checked_without_building_or_reading_anything
    )

    test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints = _mark(
        test_bad_run_settings_stop_in_configure_and_a_diverged_run_stops_with_finite_checkpoints
    )
