"""``portrait3d-system``: Portrait3D in threestudio, both optimisation stages in one run.

Stage 1, SDS (steps ``0 … sds_steps − 1``; paper §3.4, official ``main_3DPortraitGAN_cam.py``): the
pyramid tri-grid — filled by ``gan-prior-initializer`` on a fresh run — is optimised with any
threestudio guidance and prompt processor while the GAN decoder, ToRGB and background stay
frozen; a binary-entropy regulariser on the per-sample weights; an EMA of the pyramid (torch_ema
semantics, every ``ema_every_n_steps``), the official ``df.pth``.

Stage 2, refinement (steps ``sds_steps …``; ``refine.steps = 0`` turns it off): the 21 official
views, SDEdit and the patch fit, in :mod:`.refinement_stage`. The test-stage outputs (official
videos, metrics) and the exporter's files are in :mod:`.test_outputs`.
The refined targets and their cameras travel in the checkpoints, so a run resumes on either side
of the boundary. Tests and exports use the refined pyramid (the official export reads the last
fit epoch, not an EMA); an SDS-only run uses the EMA.
"""

import os
from dataclasses import dataclass, field

import threestudio
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from threestudio.systems.base import BaseLift3DSystem
from threestudio.utils.typing import *

from gan_prior.diffusion import check_pipeline_source
from gan_prior.pyramid_trigrid import level_key
from gan_prior.refinement import RefineFitConfig

from ..exporter.portrait3d_exporter import check_exporter_config
from ..prior import load_prior
from ..utils.report_hook import write_run_report
from ..utils.step_seed import run_seed, seed_step
from ..utils.trial_status import record_status
from .config_check import (
    check_component_keys,
    check_finite,
    check_loss_weights,
    check_optimizer_settings,
    check_registered_names,
    check_timestep_range,
    parse_section,
)
from .existing_trial import claim_trial
from .exporter_swap import OUR_EXPORTER, adapt_exporter_config, use_uv_rasterizer_where_stubbed
from .guidance_swap import check_guidance_swap, loss_message, missing_and_unused
from .refinement_stage import RefineConfig, RefinementStage, check_refine_settings
from .safeguards import (
    NonFiniteGuard,
    NonFiniteStepError,
    check_camera_window,
    check_level_sizes,
    check_optimizer_levels,
    check_run_settings,
    check_trainer,
    check_training_loop,
    check_visible_gpus,
)
from .test_outputs import EvaluationConfig, TestOutputs, VideoConfig


def binary_entropy(w: Tensor) -> Tensor:
    """Mean binary entropy in bits of the per-sample weights (official stable-dreamfusion
    ``nerf/utils.py``: ``−w·log2 w − (1 − w)·log2(1 − w)``; natural log would be 0.69× as strong)."""
    return (-w * torch.log2(w) - (1 - w) * torch.log2(1 - w)).mean()


def _plain(obj: Any) -> Any:
    """OmegaConf containers → plain lists/dicts, recursively (tensors untouched)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


@threestudio.register("portrait3d-system")
class Portrait3DSystem(NonFiniteGuard, RefinementStage, TestOutputs, BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        prior_checkpoint: str = ""  # the GAN prior; components refer to it as ${system.prior_checkpoint}
        initializer_type: str = "gan-prior-initializer"
        initializer: dict = field(default_factory=dict)
        ema_decay: float = 0.95
        ema_every_n_steps: int = 100
        eval_with_ema: bool = True
        sds_steps: int = 2000
        refine: RefineConfig = field(default_factory=RefineConfig)
        videos: VideoConfig = field(default_factory=VideoConfig)
        evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
        max_nonfinite_steps: int = (
            10  # skipped steps (NaN/Inf loss or gradient) in a row before the run stops
        )
        overwrite: bool = (
            False  # a fresh run may replace a trained run in its trial folder (existing_trial.py)
        )
        # float32 matmuls and convolutions in TF32 on Ampere and newer GPUs (10-bit mantissa, faster);
        # false: full float32 (the official SDS stage ran its matmuls so, its convolutions in TF32)
        allow_tf32: bool = True

    cfg: Config

    # ------------------------------------------------------------------ setup
    def configure(self) -> None:
        check_visible_gpus()  # before anything loads, and before Lightning starts a process per GPU
        self.fitted = False  # set by on_fit_start: --test / --export without resume= are refused
        for note in self.check_settings(self.cfg):
            threestudio.info(note)
        self.max_nonfinite_steps = self.cfg.max_nonfinite_steps
        self.check_models()
        self.check_prior_levels()
        if not self.resumed:  # a fresh run's initialisation: its photo, perceptual network, detector
            initializer = threestudio.find(self.cfg.initializer_type)(self.cfg.initializer)
            if hasattr(initializer, "check"):
                try:
                    initializer.check()
                except ValueError as e:
                    raise ValueError(self.named_as_set(str(e))) from None
        self.check_refine_config()
        c = self.cfg.refine
        self.fit_cfg = RefineFitConfig(
            resolution=c.resolution,
            patch_resolution=c.patch_resolution,
            depth_resolution=c.fit_samples[0],
            depth_resolution_importance=c.fit_samples[1],
            loss_weight=c.loss_weight,
        )
        self.check_evaluation_config()
        self.refine_targets: Optional[Tensor] = None  # uint8 [21, 3, R, R], once the views are refined
        self.refine_labels: Optional[Tensor] = None  # [21, 25]
        self.seed = run_seed()
        torch.backends.cuda.matmul.allow_tf32 = self.cfg.allow_tf32  # process-wide, as the run is
        torch.backends.cudnn.allow_tf32 = self.cfg.allow_tf32
        super().configure()
        for r, t in self.geometry.levels.items():
            self.register_buffer(f"ema_{level_key(r)}", t.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        if self.guidance_is_trained:  # e.g. VSD's LoRA: its parameters must exist for the optimizer
            self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance)

    @classmethod
    def check_settings(cls, cfg: "Portrait3DSystem.Config") -> List[str]:
        """Everything ``configure`` checks without building a component or reading a file
        (config_check.py): the nested sections typed, component names, every key, number and loss
        weight, the guidance, prompt processor and exporter settings, sizes and counts. Adapts
        ``cfg.guidance`` / ``cfg.exporter`` to another guidance or exporter; returns the lines to
        show. ``portrait3d batch`` calls it on each prompt's config before anything starts."""
        # threestudio's parse_structured builds Config(**cfg), which leaves nested sections as plain
        # dicts: type them here (defaults filled, unknown keys refused)
        for name, kind in (
            ("refine", RefineConfig),
            ("videos", VideoConfig),
            ("evaluation", EvaluationConfig),
        ):
            setattr(cfg, name, parse_section(kind, getattr(cfg, name), f"system.{name}"))
        check_refine_settings(cfg.refine)
        check_registered_names(cfg, threestudio.__modules__)
        check_finite(OmegaConf.to_container(cfg, resolve=True), "system")
        check_loss_weights(cfg.loss)
        check_optimizer_settings(cfg.optimizer)
        check_component_keys(cfg, threestudio.find)
        notes = cls.check_guidance_config(cfg)
        notes += cls.check_export_config(cfg)
        check_run_settings(cfg)
        return notes

    @classmethod
    def check_launch_settings(
        cls, cfg: "Portrait3DSystem.Config", data: Any, trainer: Dict[str, Any]
    ) -> None:
        """What ``setup`` checks against the data module and Lightning's Trainer, from the config
        alone: ``data`` is the data module's config, ``trainer`` the config's ``trainer`` section
        (Lightning's defaults for what it leaves out). ``portrait3d batch`` calls it after
        :meth:`check_settings` on each prompt's config."""
        renderer = parse_section(threestudio.find(cfg.renderer_type).Config, cfg.renderer, "system.renderer")
        if all(hasattr(renderer, k) for k in ("ray_start", "ray_end", "box_warp")):
            check_camera_window(data, renderer.ray_start, renderer.ray_end, renderer.box_warp)
        check_training_loop(
            trainer.get("max_steps", -1),
            trainer.get("max_epochs"),
            trainer.get("limit_train_batches"),
            trainer.get("val_check_interval"),
            trainer.get("accumulate_grad_batches", 1),
        )

    @staticmethod
    def check_export_config(cfg: "Portrait3DSystem.Config") -> List[str]:
        """A bad export option fails now, not after training; another exporter
        (``system.exporter_type=...``) gets our exporter settings it has (exporter_swap.py)."""
        cfg.exporter, notes = adapt_exporter_config(cfg.exporter_type, cfg.exporter, threestudio.find)
        checked = parse_section(
            threestudio.find(cfg.exporter_type).Config, cfg.exporter, "system.exporter", cfg.exporter_type
        )
        if cfg.exporter_type == OUR_EXPORTER:
            check_exporter_config(checked)
        return notes

    @property
    def guidance_is_trained(self) -> bool:
        return any(str(k).split(".")[0] == "guidance" for k in (self.cfg.optimizer.get("params") or {}))

    # the losses the system adds itself (sds_step), beside the guidance's
    OWN_LOSSES = ("entropy",)

    # keys our configs set from another key (${...}): an error names the key a user sets, and these too
    FOLLOWS = {
        "system.guidance.pretrained_model_name_or_path": "system.prompt_processor.pretrained_model_name_or_path",
        "system.initializer.portrait.text_to_image_model": "system.prompt_processor.pretrained_model_name_or_path",
        "system.initializer.portrait.prompt": "system.prompt_processor.prompt",
        "system.initializer.checkpoint": "system.prior_checkpoint",
        "system.geometry.checkpoint": "system.prior_checkpoint",
    }

    def _value(self, key: str) -> Any:
        return OmegaConf.select(OmegaConf.create({"system": OmegaConf.to_container(self.cfg)}), key)

    def as_set(self, key: str) -> str:
        """``key`` as a user sets it: the key it follows when their values are equal (then both)."""
        source = self.FOLLOWS.get(key)
        if source is None or self._value(source) != self._value(key):
            return key
        return f"{source} (and {key}, which follows it)"

    def named_as_set(self, message: str) -> str:
        """An error line that starts with a following key, starting with the key a user sets instead."""
        for key in self.FOLLOWS:
            if message.startswith(key + ":") or message.startswith(key + " "):
                return self.as_set(key) + message[len(key) :]
        return message

    def check_models(self) -> None:
        """The Stable Diffusion folders or hub ids (cheap: a folder's contents, an id's form), before
        any work; each error names the key a user sets."""
        keys = ["system.prompt_processor.pretrained_model_name_or_path"]
        if self.cfg.guidance_type.startswith("stable-diffusion-"):
            keys.append("system.guidance.pretrained_model_name_or_path")
        if self.cfg.initializer.get("source") == "prompt":
            keys.append("system.initializer.portrait.text_to_image_model")
        models = {key: self._value(key) for key in keys}
        for key, model in models.items():
            if not model or (key != keys[0] and model == models[keys[0]]):
                continue  # (one that follows the prompt processor's is checked with it)
            also = [k for k in keys[1:] if models[k] == model] if key == keys[0] else []
            check_pipeline_source(model, f"{key} (and {', '.join(also)}, which follow it)" if also else key)

    @classmethod
    def check_guidance_config(cls, cfg: "Portrait3DSystem.Config") -> List[str]:
        """A swapped guidance (``system.guidance_type=...``) gets our guidance settings under its own
        names; its loss weights and trained parameters, and the prompt processor's settings, are
        checked now, in one line, not after the initialisation (guidance_swap.py)."""
        cfg.guidance, notes = check_guidance_swap(
            cfg.guidance_type,
            cfg.guidance,
            cfg.loss,
            cfg.optimizer.get("params"),
            cls.OWN_LOSSES,
            threestudio.find,
            lambda kind, section: parse_section(kind, section, "system.guidance", cfg.guidance_type),
        )
        guidance = threestudio.find(cfg.guidance_type)
        check_timestep_range(
            parse_section(guidance.Config, cfg.guidance, "system.guidance", cfg.guidance_type),
            cfg.guidance_type,
        )
        processor = threestudio.find(cfg.prompt_processor_type)
        checked = parse_section(
            processor.Config, cfg.prompt_processor, "system.prompt_processor", cfg.prompt_processor_type
        )
        if hasattr(processor, "check_config"):
            processor.check_config(checked)
        return notes

    def check_prior_levels(self) -> None:
        """The pyramid's levels against the prior's, and every level optimised: a level never
        optimised would fail silently (reads the prior's config)."""
        c = self.cfg
        level_sizes = list(c.geometry.get("level_sizes") or [])
        if level_sizes:
            prior = load_prior(
                c.geometry.get("checkpoint") or c.prior_checkpoint, self.as_set("system.geometry.checkpoint")
            )
            check_level_sizes(level_sizes, prior.cfg.level_sizes, str(c.initializer.get("source", "seed")))
            check_optimizer_levels(c.optimizer.get("params"), level_sizes)

    def set_save_dir(self, save_dir: str) -> None:
        # launch.py calls this once the trial folder is known, before it writes anything there
        if not self.resumed:
            claim_trial(os.path.dirname(os.path.abspath(save_dir)), self.cfg.overwrite)
        super().set_save_dir(save_dir)

    @torch.no_grad()
    def initialize_from_prior(self) -> None:
        """Fresh runs only (on_fit_start, once the trial's save folder is known)."""
        initializer = threestudio.find(self.cfg.initializer_type)(self.cfg.initializer)
        try:
            with torch.enable_grad():  # the inversion optimises a latent
                levels, ws = initializer(save_dir=self._save_dir, device=self.device)
        except ValueError as e:
            raise ValueError(self.named_as_set(str(e))) from None
        self.geometry.set_levels(levels)
        self.material.set_ws(ws)  # the one copy of ws (the background and the stage-2 renders read it)
        for r, t in self.geometry.levels.items():
            getattr(self, f"ema_{level_key(r)}").copy_(t)

    def setup(self, stage: str) -> None:
        """Lightning's settings this system cannot train with, refused in one line before the
        initialisation (the trainer is not known in ``configure``)."""
        super().setup(stage)
        t = self.trainer
        check_trainer(
            t.precision,
            t.num_devices,
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            t.strategy.root_device,
        )
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn
        data, r = getattr(t.datamodule, "cfg", None), getattr(self.renderer, "render_cfg", None)
        if data is not None and r is not None:
            check_camera_window(data, r.ray_start, r.ray_end, r.box_warp)
        if stage == "fit":
            check_training_loop(
                t.max_steps,
                t.max_epochs,
                t.limit_train_batches,
                t.val_check_interval,
                t.accumulate_grad_batches,
            )
        if stage != "fit" and not self.resumed and not self.fitted:
            command = "--export" if stage == "predict" else f"--{stage}"
            raise ValueError(
                f"launch.py {command} shows a trained run, and this one starts from nothing: add "
                "resume=outputs/<name>/<tag>/ckpts/last.ckpt (with --config that trial's configs/parsed.yaml)"
            )

    def on_fit_start(self) -> None:
        self.fitted = True  # a --train run goes on to its test stage, resumed or not
        super().on_fit_start()
        record_status(self.get_save_dir(), "running", "train", self.true_global_step)
        if not self.resumed:
            self.initialize_from_prior()
        if self.refine_targets is None:  # the prompt processor and a frozen guidance serve only the SDS stage
            self.prompt_processor = threestudio.find(self.cfg.prompt_processor_type)(
                self.cfg.prompt_processor
            )
            if not self.guidance_is_trained:
                self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance)
        max_steps = self.trainer.max_steps
        if self.cfg.refine.steps > 0 and 0 <= max_steps <= self.cfg.sds_steps:
            threestudio.warn(
                f"trainer.max_steps={max_steps} <= system.sds_steps={self.cfg.sds_steps}: "
                "the refinement stage will not run"
            )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.cfg.refine.steps > 0 and self.true_global_step == self.cfg.sds_steps:
            self.save_stage_boundary()

    def save_stage_boundary(self) -> None:
        """The SDS result as ``ckpts/epoch=0-step=<sds_steps>.ckpt`` (named as the checkpoint callback
        names its files), whatever ``checkpoint.save_top_k`` keeps: with ``last.ckpt`` it is what a
        run needs, e.g. to refine again with other settings. Lightning calls this after the
        ModelCheckpoint callback's hook, so a file it already wrote for this step is left alone."""
        callback = self.trainer.checkpoint_callback
        if callback is None or callback.dirpath is None:
            return
        name = callback.format_checkpoint_name(
            {"epoch": self.trainer.current_epoch, "step": self.trainer.global_step}
        )
        if not os.path.exists(name):
            self.trainer.save_checkpoint(name)

    @property
    def trained_state(self) -> str:
        """The trial's status once a test or export ends: done when the training reached
        ``trainer.max_steps`` (or has no such bound), else stopped (at this step)."""
        max_steps = self.trainer.max_steps
        return "stopped" if 0 <= max_steps and self.true_global_step < max_steps else "done"

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # a frozen guidance is rebuilt in on_fit_start: keeping it out of the checkpoint keeps files
        # small and lets resume=/--export load strictly (a trained guidance, e.g. VSD's LoRA, stays)
        state = checkpoint["state_dict"]
        for key, value in state.items():  # the guard keeps these finite: a checkpoint never stores NaN
            if (
                key.startswith(("geometry.trigrids_", "ema_", "material."))
                and torch.is_tensor(value)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise NonFiniteStepError(
                    f"{key} holds NaN/Inf at step {self.true_global_step}; not saving a "
                    "checkpoint of it (resume from an earlier one with a lower learning rate)"
                )
        dropped = ("prompt_processor.",) if self.guidance_is_trained else ("guidance.", "prompt_processor.")
        for key in [k for k in state if k.startswith(dropped)]:
            del state[key]
        # config values (e.g. Adan's betas) reach the optimizer state as OmegaConf containers, which
        # torch.load(weights_only=True) — the default since torch 2.6 — refuses on resume
        checkpoint["optimizer_states"] = _plain(checkpoint.get("optimizer_states", []))
        if self.refine_targets is not None:  # so a resume inside the refinement needs no other file
            checkpoint["portrait3d_refine"] = {
                "targets": self.refine_targets.cpu(),
                "labels": self.refine_labels.cpu(),
            }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        refine = checkpoint.get("portrait3d_refine")
        if refine is not None:
            self.refine_targets, self.refine_labels = refine["targets"], refine["labels"]

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.renderer(**batch)

    @property
    def refining(self) -> bool:
        return self.cfg.refine.steps > 0 and self.true_global_step >= self.cfg.sds_steps

    def training_step(self, batch, batch_idx):
        # every draw of the step (guidance timestep and noise, ray jitter) comes from (seed, step):
        # a resumed run repeats the uninterrupted one (bitwise on the CPU; utils/step_seed.py)
        seed_step(self.seed, self.true_global_step)
        # a non-finite loss returns None: Lightning skips the update (see safeguards.NonFiniteGuard)
        return self.guard_loss(self.refine_step() if self.refining else self.sds_step(batch))

    # ------------------------------------------------------------------ stage 1: SDS
    def sds_step(self, batch):
        out = self(batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_processor(), **batch, rgb_as_latents=False)
        # (configure checked the guidances guidance_swap.py knows; this one line covers any other)
        returned = {name[len("loss_") :] for name in guidance_out if name.startswith("loss_")}
        missing, _ = missing_and_unused(self.cfg.loss, returned, self.OWN_LOSSES)
        if missing:
            raise ValueError(loss_message(self.cfg.guidance_type, returned, missing, []))
        loss = 0.0
        for name, value in guidance_out.items():
            if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
                self.log(f"train/{name}", value)  # guidances also return images/latents: not logged
            if name.startswith("loss_"):
                loss = loss + value * self.C(self.cfg.loss["lambda_" + name[len("loss_") :]])
        w = out["weights"].clamp(1e-5, 1 - 1e-5)
        loss_entropy = binary_entropy(w)
        self.log("train/loss_entropy", loss_entropy)
        loss = loss + loss_entropy * self.C(self.cfg.loss.lambda_entropy)
        for name, value in self.cfg.loss.items():
            self.log(f"train_params/{name}", self.C(value))
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        step, sds = self.true_global_step, not self.refining  # Lightning counts the step once this returns
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # NonFiniteGuard's
        # the EMA after every ema_every_n_steps-th SDS step, as the official trainer after each
        # 100-step epoch; here and not in on_train_batch_end, which Lightning runs after the
        # ModelCheckpoint callback's: a checkpoint saved at that step would lack the update, and so
        # would the run resumed from it
        if sds and (step + 1) % self.cfg.ema_every_n_steps == 0:
            self.update_ema()
        # a stage whose every step was skipped stops the run before its checkpoint is written
        if sds and step + 1 == self.cfg.sds_steps:
            self.check_stage_trained("SDS", self.cfg.sds_steps)
        elif step + 1 == self.trainer.max_steps:
            self.check_stage_trained(
                "SDS" if sds else "refinement", step + 1 - (0 if sds else self.cfg.sds_steps)
            )

    @torch.no_grad()
    def update_ema(self) -> None:
        """torch_ema's ``update``: the count is incremented first, then the decay is capped at
        (1 + n) / (10 + n) — 2/11, 3/12, … 21/30 for the official 20 updates."""
        self.ema_updates += 1
        n = int(self.ema_updates)
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for r, t in self.geometry.levels.items():
            shadow = getattr(self, f"ema_{level_key(r)}")
            shadow.sub_((1 - decay) * (shadow - t))

    @torch.no_grad()
    def load_ema(self) -> None:
        """The pyramid ← its EMA (the official ``df.pth``), when there is one."""
        if self.cfg.eval_with_ema and int(self.ema_updates) > 0:
            self.geometry.set_levels({r: getattr(self, f"ema_{level_key(r)}") for r in self.geometry.levels})

    def use_ema(self) -> None:
        """Evaluate the SDS result with its EMA; after refinement, the pyramid itself."""
        if not self.refining:
            self.load_ema()

    # ------------------------------------------------------------------ evaluation
    def _save_views(self, out: Dict[str, Any], filename: str, name: str) -> None:
        self.save_image_grid(
            filename,
            [
                {"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}},
                {
                    "type": "grayscale",
                    "img": out["opacity"][0, :, :, 0],
                    "kwargs": {"cmap": None, "data_range": (0, 1)},
                },
            ],
            name=name,
            step=self.true_global_step,
        )

    def validation_step(self, batch, batch_idx):
        self._save_views(self(batch), f"it{self.true_global_step}-{batch['index'][0]}.png", "validation_step")

    def on_validation_epoch_end(self):
        pass

    def on_test_start(self) -> None:
        super().on_test_start()
        record_status(self.get_save_dir(), "running", "test", self.true_global_step)
        self.use_ema()

    def test_step(self, batch, batch_idx):
        self._save_views(self(batch), f"it{self.true_global_step}-test/{batch['index'][0]}.png", "test_step")

    def on_test_epoch_end(self):
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\d+)\.png",
            save_format="mp4",
            fps=self.cfg.videos.fps,
            name="test",
            step=self.true_global_step,
        )
        self.save_official_videos()
        self.save_metrics()

    def on_test_end(self) -> None:
        super().on_test_end()
        record_status(self.get_save_dir(), self.trained_state, "test", self.true_global_step)
        write_run_report(self.get_save_dir())  # save/index.html (portrait3d.report)

    def on_predict_start(self) -> None:
        self.check_export_folder()
        self.use_ema()
        super().on_predict_start()
        if use_uv_rasterizer_where_stubbed(self.exporter, self.device):
            threestudio.info(
                f"{self.cfg.exporter_type}: nvdiffrast is not installed; rasterizing with our UV rasterizer"
            )
        record_status(self.get_save_dir(), "running", "export", self.true_global_step)

    def on_predict_end(self) -> None:
        super().on_predict_end()
        record_status(self.get_save_dir(), self.trained_state, "export", self.true_global_step)
        write_run_report(self.get_save_dir())  # now with the exported mesh's 3D view
