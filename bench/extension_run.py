"""The extension's own run, timed stage by stage: what ``launch.py --train`` then ``--export`` execute,
in this process, with threestudio's Trainer set up as ``launch.py`` sets it up (ModelCheckpoint from
the config's ``checkpoint``, the learning-rate monitor, threestudio's progress bar, the TensorBoard and
CSV loggers) plus :class:`StageTimer`.

A short run (a few SDS and fit steps, one validation, a few test views and video frames) at the
configuration's settings; each stage's time per unit is then projected to the counts of the full
configuration (:func:`full_counts`). The stages:

* ``start-up``: the system's construction and ``on_fit_start`` (prior, prompt processor, guidance);
* ``sds step``: ``training_step`` (render, the guidance's VAE encode, UNet and its per-step decode of
  the denoised latents, the losses), backward, the guard and the optimizer, Lightning's logging —
  one training step as the user's run makes it (the first is not counted: warm-up);
* ``validation``: one validation pass (``data.n_val_views`` views), every ``val_check_interval``;
* ``refinement views + SDEdit``: ``prepare_refinement`` (21 views, SDEdit, saving them), once;
* ``refinement fit step``: one training step of stage 2;
* ``checkpoint write``: one ``trainer.save_checkpoint`` (last.ckpt every ``every_n_train_steps``,
  and the SDS result);
* ``test view``: one of threestudio's ``data.n_test_views`` turntable views (render + image file);
* ``official video frame``: ``save_official_videos`` per frame (large + small pose);
* ``test stage, rest``: the rest of the test stage (threestudio's video, metrics, report);
* ``export``: ``--export`` — a new system from last.ckpt, ``trainer.predict`` (mesh, pyramids).

Each record holds the region's seconds and its memory (bench/harness.py: true peak, resident).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections import defaultdict
from typing import Callable, Optional

import torch
from harness import PeakMemory, sync

from portrait3d.threestudio_env import import_threestudio, make_worktree


class StageTimer:
    """Seconds and memory of named regions: ``with timer("stage"): ...`` (regions may nest; an inner
    one resets the peak counter, so an outer one that holds another is not a memory figure)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.records: dict[str, list[dict]] = defaultdict(list)
        self._open: dict[str, tuple] = {}

    def begin(self, stage: str) -> None:
        sync(self.device)
        self._open[stage] = (time.perf_counter(), PeakMemory(self.device).start())

    def end(self, stage: str, **extra) -> None:
        if stage not in self._open:
            return
        start, mem = self._open.pop(stage)
        sync(self.device)
        seconds = time.perf_counter() - start
        self.records[stage].append({"seconds": seconds, **mem.result(), **extra})

    @contextlib.contextmanager
    def __call__(self, stage: str, **extra):
        self.begin(stage)
        try:
            yield
        finally:
            self.end(stage, **extra)

    def wrap(self, obj, method: str, stage: str, count: Optional[Callable[..., int]] = None) -> None:
        """Time every call of ``obj.method`` as ``stage`` (``count(*args)``: its units, default 1)."""
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            with self(stage, units=count(obj, *args) if count else 1):
                return original(*args, **kwargs)

        setattr(obj, method, timed)


def lightning_callback(timer: StageTimer, sds_steps: int):
    """The Lightning callback that times training steps, validations, test views and prediction."""
    from pytorch_lightning.callbacks import Callback

    class Timing(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.stage = "sds step" if module.true_global_step < sds_steps else "refinement fit step"
            self.first = module.true_global_step in (0, sds_steps)  # warm-up; stage 2's holds SDEdit
            timer.begin("step")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            timer.end("step")
            record = timer.records["step"].pop()
            timer.records[self.stage + (" (first)" if self.first else "")].append(record)

        def on_validation_start(self, trainer, module):
            timer.begin("validation")

        def on_validation_end(self, trainer, module):
            timer.end("validation")

        def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            timer.begin("test view")

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            timer.end("test view")

    return Timing()


def _trainer(cfg, callbacks, loggers):
    """``pytorch_lightning.Trainer`` as threestudio's ``launch.py`` builds it."""
    from pytorch_lightning import Trainer

    return Trainer(
        callbacks=callbacks,
        logger=loggers,
        inference_mode=False,
        accelerator="gpu",
        devices=-1,
        **cfg.trainer,
    )


def run(config: str, overrides: list[str], device, workdir: str, test_and_export: bool = True) -> StageTimer:
    """``launch.py --config CONFIG --train OVERRIDES`` then ``--export resume=last.ckpt``, in
    ``workdir`` (a threestudio work tree with this extension), timed by a :class:`StageTimer`
    (``test_and_export=False``: the training only)."""
    tree = os.path.join(workdir, "threestudio")
    if not os.path.isdir(tree):
        make_worktree(tree)
    with contextlib.chdir(tree):  # launch.py's relative paths: configs/, outputs/, .threestudio_cache/
        return _run(tree, config, overrides, device, test_and_export)


def _run(tree: str, config: str, overrides: list[str], device, test_and_export: bool) -> StageTimer:
    threestudio = import_threestudio(tree)
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
    from threestudio.utils.callbacks import CodeSnapshotCallback, ConfigSnapshotCallback, CustomProgressBar
    from threestudio.utils.config import load_config

    timer = StageTimer(device)
    cfg = load_config(config, cli_args=overrides, n_gpus=1)
    pl.seed_everything(cfg.seed, workers=True)
    dm = threestudio.find(cfg.data_type)(cfg.data)
    with timer("start-up"):
        system = threestudio.find(cfg.system_type)(cfg.system, resumed=False)
        system.set_save_dir(os.path.join(cfg.trial_dir, "save"))
    timer.wrap(system, "prepare_refinement", "refinement views + SDEdit")
    frames = cfg.system.videos.large_frames + cfg.system.videos.small_frames
    timer.wrap(system, "save_official_videos", "official videos", count=lambda *_: frames)
    ckpts = os.path.join(cfg.trial_dir, "ckpts")
    trainer = _trainer(
        cfg,
        [
            lightning_callback(timer, cfg.system.sds_steps),
            ModelCheckpoint(dirpath=ckpts, **cfg.checkpoint),
            LearningRateMonitor(logging_interval="step"),
            CodeSnapshotCallback(os.path.join(cfg.trial_dir, "code"), use_version=False),
            ConfigSnapshotCallback(config, cfg, os.path.join(cfg.trial_dir, "configs"), use_version=False),
            CustomProgressBar(refresh_rate=1),
        ],
        [TensorBoardLogger(cfg.trial_dir, name="tb_logs"), CSVLogger(cfg.trial_dir, name="csv_logs")]
        + system.get_loggers(),
    )
    timer.wrap(trainer, "save_checkpoint", "checkpoint write")
    fit_start = system.on_fit_start
    system.on_fit_start = lambda: _timed_call(timer, "start-up", fit_start)
    trainer.fit(system, datamodule=dm)
    if test_and_export:
        with timer("test stage"):
            trainer.test(system, datamodule=dm)
    del trainer, system
    _free(device)
    if test_and_export:
        last = os.path.join(ckpts, "last.ckpt")
        with timer("export"):
            exporter = threestudio.find(cfg.system_type)(cfg.system, resumed=True)
            exporter.set_save_dir(os.path.join(cfg.trial_dir, "save"))
            state = torch.load(last, map_location="cpu", weights_only=True)
            exporter.set_resume_status(state["epoch"], state["global_step"])
            del state
            _trainer(cfg, [], []).predict(exporter, datamodule=dm, ckpt_path=last)
        del exporter
        _free(device)
    timer.trial_dir = cfg.trial_dir
    return timer


def _timed_call(timer: StageTimer, stage: str, fn):
    with timer(stage):
        return fn()


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def full_counts(cfg_values: dict) -> dict:
    """How often a full run of the configuration executes each stage's unit: ``cfg_values`` holds
    ``sds_steps``, ``refine_steps``, ``val_check_interval``, ``every_n_train_steps``, ``n_test_views``,
    ``large_frames``, ``small_frames``."""
    c = cfg_values
    steps = c["sds_steps"] + c["refine_steps"]
    return {
        "start-up": 1,
        "sds step": c["sds_steps"],
        "validation": steps // c["val_check_interval"],
        "refinement views + SDEdit": 1 if c["refine_steps"] > 0 else 0,
        "refinement fit step": c["refine_steps"],
        # last.ckpt every n steps, plus the SDS result (ckpts/epoch=0-step=<sds_steps>.ckpt)
        "checkpoint write": steps // c["every_n_train_steps"] + (1 if c["refine_steps"] > 0 else 0),
        "test view": c["n_test_views"],
        "official video frame": c["large_frames"] + c["small_frames"],  # 512², 96+96 samples
        "test stage, rest": 1,
        "export": 1,
    }
