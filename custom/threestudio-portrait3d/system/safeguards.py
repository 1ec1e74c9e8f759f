"""What keeps a run from going silently wrong: configuration checked in ``configure`` (before the
initialisation's text-to-image and inversion run), and a guard that keeps a non-finite loss or
gradient from ever reaching the pyramid, its EMA or a checkpoint.

The guard skips such a step (no optimizer update; the EMA only averages finite pyramids), warns
with the step and the running count, and stops the run with one clear error after
``max_nonfinite_steps`` skipped steps in a row.
"""

import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from gan_prior.camera import CANONICAL_RADIUS
from gan_prior.checks import MAX_FRAMES, MAX_RESOLUTION, check_render_options
from gan_prior.pyramid_trigrid import level_key
from gan_prior.renderer import RenderConfig

LOG = logging.getLogger("pytorch_lightning")  # threestudio's logger


class NonFiniteStepError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def check_level_sizes(level_sizes: Sequence, prior_levels: Sequence[int], source: str) -> None:
    """``system.geometry.level_sizes``: distinct powers of two the prior has; all of them when the
    initializer makes the pyramid from the prior (``source`` prompt, image or seed)."""
    sizes = list(level_sizes)
    if not sizes or not all(isinstance(r, int) and not isinstance(r, bool) for r in sizes):
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: give a list of tri-grid sizes, e.g. {list(prior_levels)}"
        )
    duplicates = sorted({r for r in sizes if sizes.count(r) > 1})
    if duplicates:
        raise ValueError(f"system.geometry.level_sizes={sizes} lists {duplicates} twice; each level once")
    unknown = sorted(set(sizes) - set(prior_levels))
    if unknown:
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: the prior has no level {unknown}; its levels are "
            f"{list(prior_levels)}"
        )
    if source != "pyramid" and sorted(sizes) != sorted(prior_levels):
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: the initializer (source {source!r}) makes the prior's "
            f"levels {list(prior_levels)}; list all of them (a subset needs source=pyramid)"
        )


def check_optimizer_levels(params: Optional[Mapping], level_sizes: Iterable[int]) -> None:
    """Every level in ``system.optimizer.params`` exists, and every level is optimised."""
    keys = [str(k) for k in (params or {})]
    if not keys or "geometry" in keys:
        return  # threestudio optimises the whole system, or the whole geometry
    levels = {level_key(r) for r in level_sizes}
    named = {k.split(".", 1)[1] for k in keys if k.startswith("geometry.")}
    extra = sorted(named - levels)
    if extra:
        raise ValueError(
            f"system.optimizer.params lists {['geometry.' + k for k in extra]}, which "
            f"system.geometry.level_sizes={sorted(level_sizes)} does not have; remove them or add the levels"
        )
    missing = sorted(levels - named, key=lambda k: int(k.rsplit("_", 1)[1]))
    if missing:
        raise ValueError(
            f"system.optimizer.params has no entry for {['geometry.' + k for k in missing]}: those levels "
            "would never be optimised; add e.g. geometry." + missing[0] + ": {lr: 1.0}"
        )


def check_positive(values: Mapping[str, Any]) -> None:
    """``{"system.option": value}``: each an integer ≥ 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def check_sizes(cfg) -> None:
    """Resolutions, frame counts and samples per ray of the system config (``cfg``) within what the
    renderer is built for (:mod:`gan_prior.checks`): a typo such as 4096 samples per ray would
    otherwise allocate gigabytes, after the initialisation has run."""
    for name, value, high in (
        ("system.videos.resolution", cfg.videos.resolution, MAX_RESOLUTION),
        ("system.refine.resolution", cfg.refine.resolution, MAX_RESOLUTION),
        ("system.videos.large_frames", cfg.videos.large_frames, MAX_FRAMES),
        ("system.videos.small_frames", cfg.videos.small_frames, MAX_FRAMES),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ValueError(f"{name}={value!r} must be an integer between 0 and {high}")
    for name, samples in (
        ("system.videos.samples", cfg.videos.samples),
        ("system.refine.view_samples", cfg.refine.view_samples),
        ("system.refine.fit_samples", cfg.refine.fit_samples),
    ):
        if len(samples) != 2:
            raise ValueError(
                f"{name}={list(samples)}: give [stratified, importance] samples per ray, e.g. [48, 48]"
            )
        check_render_options(
            {"depth_resolution": samples[0], "depth_resolution_importance": samples[1]}, f"{name}: "
        )


def check_run_settings(c) -> None:
    """Counts, sizes and rates of the system config (``c``) that would fail late (after the
    initialisation, at the end of the test stage): checked before anything expensive runs."""
    check_positive(
        {
            "system.ema_every_n_steps": c.ema_every_n_steps,
            "system.refine.chunk": c.refine.chunk,
            "system.videos.chunk": c.videos.chunk,
            "system.videos.sheet_views": c.videos.sheet_views,
            "system.videos.fps": c.videos.fps,
            "system.videos.resolution": c.videos.resolution,
            "system.max_nonfinite_steps": c.max_nonfinite_steps,
        }
    )
    check_sizes(c)
    if not 0.0 < c.ema_decay <= 1.0:
        raise ValueError(f"system.ema_decay={c.ema_decay} must be in (0, 1]; the official value is 0.95")
    if c.sds_steps < 0 or c.refine.steps < 0:
        raise ValueError(
            f"system.sds_steps={c.sds_steps} and system.refine.steps={c.refine.steps} must be ≥ 0"
        )


# Lightning's precision flags (``trainer.precision``, normalised) a run trains correctly with: the
# pyramid, its EMA and the optimizer state stay float32; "16-mixed" steps through Lightning's GradScaler
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def check_trainer(precision: str, num_devices: int, deterministic: bool, warn_only: bool, device) -> None:
    """What Lightning's Trainer was given that this system cannot train with (``setup``, before the
    initialisation): another precision, several devices, deterministic algorithms on CUDA."""
    if str(precision) not in PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision}: use 32 (the official setting), 16-mixed or bf16-mixed; "
            "the pyramid, its EMA and the optimizer state must stay float32"
        )
    if num_devices > 1:
        raise ValueError(single_device_message(num_devices))
    if deterministic and not warn_only and torch.device(device).type == "cuda":
        raise ValueError(
            "trainer.deterministic=true: the renderer's CUDA backward (grid_sampler_3d, gather) has no "
            "deterministic implementation; use trainer.deterministic=warn (or leave it unset): a resumed "
            "run repeats the uninterrupted one bitwise on the CPU only"
        )


def check_training_loop(
    max_steps, max_epochs, limit_train_batches, val_check_interval, accumulate_grad_batches
) -> None:
    """Lightning's loop settings (``trainer.*``) that would train nothing, fail at the first step or
    draw the same noise twice: refused in ``setup``, before the initialisation."""
    if max_epochs == 0 or limit_train_batches == 0:
        raise ValueError(
            f"trainer.max_epochs={max_epochs}, trainer.limit_train_batches={limit_train_batches}: "
            "this trains nothing; leave them unset (trainer.max_steps ends the run)"
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int):
        raise ValueError(
            f"trainer.max_steps={max_steps!r}: give a whole number of steps (the configs' default is "
            "system.sds_steps + system.refine.steps)"
        )
    if val_check_interval is not None and not val_check_interval > 0:
        raise ValueError(
            f"trainer.val_check_interval={val_check_interval!r}: give the steps between validations "
            "(>= 1), or leave it unset"
        )
    if accumulate_grad_batches != 1:
        # each step's timestep, noise and ray jitter are drawn from (seed, step) (utils/step_seed.py):
        # the batches of one accumulated step would repeat the same draws
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches!r}: Portrait3D steps the pyramid "
            "after every batch, as the official code does; leave it unset"
        )


def check_camera_window(data, ray_start: float, ray_end: float, box_warp: float) -> None:
    """The data module's cameras (``data``, its config) see the portrait: the tri-grid fills a cube of
    side ``box_warp`` about the origin and each ray is sampled from ``ray_start`` to ``ray_end``
    from its camera (official ``rendering_kwargs``), so the point the cameras look at must be inside
    the cube and within that window from every camera; otherwise no sample lands on the portrait
    and the first step fails without a gradient. Cameras sit ``d`` from the origin
    (``camera_distance_range``, ``eval_camera_distance``; threestudio's datamodules too). The
    official cameras of the refinement, the videos and the export sit ``CANONICAL_RADIUS`` from the
    pivot they look at: the window must hold that distance too."""
    if not ray_start <= CANONICAL_RADIUS <= ray_end:
        raise ValueError(
            f"system.renderer.ray_start={ray_start:g}, ray_end={ray_end:g}: the official cameras (the "
            f"refinement's 21 views, the videos, the export's views) look at the portrait from "
            f"{CANONICAL_RADIUS:g}, which must lie in that window (the official one is "
            f"{RenderConfig.ray_start:g} to {RenderConfig.ray_end:g})"
        )
    half = box_warp / 2
    look_at = [float(v) for v in getattr(data, "look_at", (0.0, 0.0, 0.0))]
    if any(abs(v) >= half for v in look_at):
        raise ValueError(
            f"data.look_at={look_at} is outside the portrait's volume (each coordinate within ±{half:g}, "
            "system.renderer.box_warp / 2): the cameras would look at empty space"
        )
    offset = sum(v * v for v in look_at) ** 0.5
    low, high = ray_start + offset, ray_end - offset
    for name in ("camera_distance_range", "eval_camera_distance"):
        value = getattr(data, name, None)
        values = [value] if isinstance(value, (int, float)) else list(value or [])
        if any(not low <= d <= high for d in values):
            shown = values[0] if len(values) == 1 else values
            raise ValueError(
                f"data.{name}={shown}: the renderer samples each ray from system.renderer.ray_start="
                f"{ray_start:g} to ray_end={ray_end:g} from its camera, so only cameras {low:.3g} to "
                f"{high:.3g} from the origin see the portrait; keep the distances there or widen that window"
            )


def single_device_message(n: int) -> str:
    return (
        f"this run sees {n} GPUs (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}) and "
        "threestudio's launch.py would train on all of them; Portrait3D trains on one: pick it with "
        "--gpu 0 (or CUDA_VISIBLE_DEVICES=0); portrait3d batch runs one prompt per GPU"
    )


def machine_gpus() -> int:
    """The GPUs the NVIDIA driver has, whatever ``CUDA_VISIBLE_DEVICES`` hides (NVML, as torch's own
    device count uses it); 0 without a driver or with a CPU build of torch."""
    if torch.version.cuda is None:
        return 0
    try:
        return max(0, int(torch.cuda._raw_device_count_nvml()))
    except Exception:  # no libnvidia-ml (a CPU machine), or a torch without this helper
        return 0


def check_visible_gpus() -> None:
    """launch.py trains on every visible GPU (DDP), which would initialise and refine once per GPU;
    and where ``--gpu`` (``CUDA_VISIBLE_DEVICES``) names no GPU of the machine, torch sees none and
    the run would go on on the CPU. Both refused in ``configure``, before anything starts."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1:
        raise ValueError(single_device_message(n))
    gpus = machine_gpus() if n == 0 else 0
    if not gpus:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    named = [v.strip() for v in visible.split(",") if v.strip()]
    if named and all(v.isdigit() and int(v) >= gpus for v in named):
        raise ValueError(
            f"CUDA_VISIBLE_DEVICES={visible!r} (launch.py --gpu {visible}) names no GPU of this machine, which "
            f"has {gpus} (0 to {gpus - 1}), and the run would train on the CPU: pick one with --gpu 0"
        )
    LOG.warning(
        f"this machine has {gpus} GPU(s) but torch {torch.__version__} sees none (CUDA_VISIBLE_DEVICES="
        f"{visible!r}; a driver older than CUDA {torch.version.cuda}?): training on the CPU, far slower"
    )


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """One boolean on the last tensor's device (a gradient's): every value of every tensor is finite
    (read once, by the caller)."""
    device = tensors[-1].device
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


class NonFiniteGuard:
    """Mixed into the system: ``guard_loss`` in ``training_step``, ``optimizer_step`` decides.

    A step is skipped (no optimizer update) when its loss or a gradient is not finite, at the cost
    of one host read per step (the loss and every gradient checked together on the device). Under
    ``trainer.precision=16-mixed`` the step goes through Lightning's GradScaler: the closure is
    passed through, the guard checks the loss, and an overflowing gradient is the scaler's to handle
    (it skips the step and lowers the loss scale); only overflows below a loss scale of 1 count as
    non-finite gradients.
    """

    max_nonfinite_steps: int = 10

    def guard_loss(self, result: Optional[dict]) -> Optional[dict]:
        """``result`` (``{"loss": …}``) unchanged; its loss is kept for ``optimizer_step``'s check
        (a non-finite loss goes through backward and its step is skipped)."""
        loss = None if result is None else result.get("loss")
        self._guarded_loss = loss.detach() if torch.is_tensor(loss) else loss
        return result

    def _loss_check(self) -> Optional[Tensor]:
        loss = getattr(self, "_guarded_loss", None)
        if loss is None:
            return None
        return torch.as_tensor(loss).reshape(-1)

    def _why_nonfinite(self, optimizer, gradients: bool) -> Optional[str]:
        """None when the step's loss (and, with ``gradients``, every gradient) is finite; else why.
        One host read; a second only to tell a bad loss from a bad gradient."""
        loss = self._loss_check()
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        checked = ([loss] if loss is not None else []) + (grads if gradients else [])
        if not checked or bool(all_finite(checked)):
            return None
        if loss is not None and not bool(torch.isfinite(loss).all()):
            return f"non-finite loss ({float(loss[0])})"
        return "non-finite gradient"

    def check_stage_trained(self, stage: str, steps: int) -> None:
        """At the end of a stage of ``steps`` steps: when this run ran all of them and skipped every
        one (a stage shorter than ``max_nonfinite_steps``, e.g. with an overflowing guidance scale),
        stop with one line rather than carry the untrained pyramid on as if trained. Then count the
        next stage's steps from zero."""
        run, self.stage_steps = getattr(self, "stage_steps", 0), 0
        if steps > 0 and run == steps and getattr(self, "nonfinite_in_a_row", 0) >= steps:
            raise NonFiniteStepError(
                f"every one of the {steps} steps of the {stage} stage had a non-finite loss or gradient "
                f"({getattr(self, 'nonfinite_why', '?')}), so it trained nothing; stopping. Lower the "
                "learning rate or the guidance scale"
            )

    def skip_step(self, why: str) -> None:
        self.nonfinite_why = why
        self.nonfinite_in_a_row = getattr(self, "nonfinite_in_a_row", 0) + 1
        self.nonfinite_total = getattr(self, "nonfinite_total", 0) + 1
        step = getattr(self, "true_global_step", "?")
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteStepError(
                f"step {step}: {self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                f"({why}); stopping. The pyramid and checkpoints hold only finite values: resume from "
                "ckpts/last.ckpt with a lower learning rate or guidance scale"
            )
        # the logger threestudio.warn writes to, not the warnings module: warning filters must not hide it
        LOG.warning(f"step {step}: {why}; step skipped ({self.nonfinite_total} skipped so far)")

    def grad_scaler(self):
        """The GradScaler of Lightning's ``16-mixed`` precision plugin, or None."""
        trainer = getattr(self, "_trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return getattr(plugin, "scaler", None)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, run only when the loss and every gradient are finite."""
        self._guarded_loss = None
        self.stage_steps = getattr(self, "stage_steps", 0) + 1  # stepped or skipped
        scaler = self.grad_scaler()
        if scaler is not None:
            self._scaled_step(optimizer, optimizer_closure, scaler)
            return
        # fp32 / bf16: the closure (training_step + backward) first, then the decision; the
        # optimizer is not called at all for a skipped step (Adan counts every call it gets)
        result = optimizer_closure() if optimizer_closure is not None else None
        why = None
        if optimizer_closure is None or result is not None:  # None: training_step gave no loss
            why = self._why_nonfinite(optimizer, gradients=True)
            if why is None:
                self.nonfinite_in_a_row = 0
                optimizer.step()
                return
        optimizer.zero_grad(set_to_none=True)
        if why is not None:
            self.skip_step(why)

    def _scaled_step(self, optimizer, optimizer_closure, scaler) -> None:
        """16-mixed: the closure goes through ``optimizer.step`` so that Lightning's AMP plugin
        unscales, steps and updates its GradScaler (a closure that returns None skips all three)."""
        skipped = []

        def guarded():
            result = optimizer_closure() if optimizer_closure is not None else None
            why = self._why_nonfinite(optimizer, gradients=False)  # scaled gradients: the scaler's
            if why is not None:
                skipped.append(why)
                optimizer.zero_grad(set_to_none=True)
                return None
            return result

        if getattr(self, "_loss_scale", None) is None:
            self._loss_scale = scaler.get_scale()
        optimizer.step(closure=guarded)
        if skipped:
            self.skip_step(skipped[0])
            return
        scale = scaler.get_scale()
        overflow, self._loss_scale = scale < self._loss_scale, scale
        if overflow and scale < 1:
            self.skip_step(f"non-finite gradient (the fp16 loss scale is down to {scale:g})")
        elif not overflow:
            self.nonfinite_in_a_row = 0
