"""``portrait3d-system``: Portrait3D in threestudio, both optimisation stages in one run.

Stage 1, SDS (steps ``0 … sds_steps − 1``; paper §3.4, official ``main_3DPortraitGAN_cam.py``): the
pyramid tri-grid — filled by ``gan-prior-initializer`` on a fresh run — is optimised with any
threestudio guidance and prompt processor while the GAN decoder, ToRGB and background stay
frozen; a binary-entropy regulariser on the per-sample weights; an EMA of the pyramid (torch_ema
semantics, every ``ema_every_n_steps``), the official ``df.pth``.

Stage 2, refinement (steps ``sds_steps …``; paper §3.5, spec §4.6; ``refine.steps = 0`` turns it
off): the EMA pyramid renders the 21 official views with the GAN background, SDEdit (any diffusers
model) refines them — both written to ``save/refine/`` — and a masked patch-L2 fit with a fresh
Adan at ``refine.lr`` for every level pulls the pyramid toward them (:mod:`gan_prior.refinement`).
The refined targets and their cameras travel in the checkpoints, so a run resumes on either side
of the boundary. Tests and exports use the refined pyramid (the official export reads the last
fit epoch, not an EMA); an SDS-only run uses the EMA.
"""
import difflib
import glob
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import threestudio
from omegaconf import DictConfig, ListConfig, OmegaConf
from threestudio.systems.base import BaseLift3DSystem
from threestudio.utils.config import parse_structured
from threestudio.utils.typing import *

from gan_prior.checkpoint import save_pyramid
from gan_prior.diffusion import (REFINE_NEGATIVE_PROMPT, SDEditConfig, check_pipeline_source, clear_pipeline_cache,
                                 load_pipeline, sdedit)
from gan_prior.evaluation import evaluate
from gan_prior.files import atomic_path, write_json
from gan_prior.media import contact_sheet, render_frames, save_video, to_uint8, turntable_labels
from gan_prior.media import save_image as write_image
from gan_prior.pyramid_trigrid import level_key
from gan_prior.refinement import RefineFitConfig, fit_schedule, patch_loss, refinement_labels

from ..prior import load_prior
from ..utils.report_hook import write_run_report


@dataclass
class RefineConfig:
    steps: int = 399  # 19 epochs x 21 views; 0 = no refinement (trainer.max_steps = sds_steps + steps)
    model: Optional[str] = None  # diffusers model for SDEdit; default: the prompt processor's
    prompt: Optional[str] = None  # default: the prompt processor's prompt, raw (no view prefix)
    negative_prompt: str = REFINE_NEGATIVE_PROMPT
    noise_step: int = 200  # SDEdit: noise to t = 200, then the 50-step DDIM schedule below it
    sdedit_steps: int = 50
    guidance_scale: float = 7.5
    sdedit_seed: int = 42
    view_seed: int = 0  # the official v-jitter is unseeded; seeded here so resumes see the same views
    resolution: int = 512
    patch_resolution: int = 256
    view_samples: Tuple[int, int] = (96, 96)  # stratified + importance samples of the 21 views
    fit_samples: Tuple[int, int] = (48, 48)
    lr: float = 1.0  # Adan, every level (official optimize_trigrid.py)
    loss_weight: float = 1e3
    chunk: int = 16384  # rays per renderer call for the views


@dataclass
class EvaluationConfig:
    """Paper §5.2 after the test stage (gan_prior.evaluation), on the large-pose video's frames."""
    clip_model: Optional[str] = None  # CLIP folder or hub id -> CLIP score against the prompt
    inception: Optional[str] = None  # pt_inception-2015-12-05-6726825d.pth -> FID/KID against `reference`
    reference: Optional[str] = None  # images of the diffusion model; default: the initialisation's candidates


@dataclass
class VideoConfig:
    """The official export videos (spec §4.7), written by the test stage next to threestudio's."""
    large_frames: int = 240  # 360° at the horizon; 0 = skip
    small_frames: int = 120  # the small-pose wobble; 0 = skip
    resolution: int = 512
    samples: Tuple[int, int] = (96, 96)
    background: bool = True  # the GAN background, as the official videos
    sheet_views: int = 8  # frames of the large turntable in views.png
    fps: int = 30
    chunk: int = 16384


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
class Portrait3DSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        prior_checkpoint: str = ""  # the GAN prior; components refer to it as ${system.prior_checkpoint}
        initializer_type: str = "gan-prior-initializer"
        initializer: dict = field(default_factory=dict)
        ema_decay: float = 0.95
        ema_every_n_steps: int = 100
        eval_with_ema: bool = True
        sds_steps: int = 2000
        refine: dict = field(default_factory=dict)  # RefineConfig
        videos: dict = field(default_factory=dict)  # VideoConfig
        evaluation: dict = field(default_factory=dict)  # EvaluationConfig

    cfg: Config

    # ------------------------------------------------------------------ setup
    def configure(self) -> None:
        self.check_registered_names()
        self.refine_cfg = parse_structured(RefineConfig, self.cfg.refine)
        self.video_cfg = parse_structured(VideoConfig, self.cfg.videos)
        self.eval_cfg = parse_structured(EvaluationConfig, self.cfg.evaluation)
        self.check_refine_config()
        c = self.refine_cfg
        self.fit_cfg = RefineFitConfig(resolution=c.resolution, patch_resolution=c.patch_resolution,
                                       depth_resolution=c.fit_samples[0], depth_resolution_importance=c.fit_samples[1],
                                       loss_weight=c.loss_weight)
        self.check_evaluation_config()
        self.refine_targets: Optional[Tensor] = None  # uint8 [21, 3, R, R], once the views are refined
        self.refine_labels: Optional[Tensor] = None  # [21, 25]
        super().configure()
        for r, t in self.geometry.levels.items():
            self.register_buffer(f"ema_{level_key(r)}", t.detach().clone())
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        if self.guidance_is_trained:  # e.g. VSD's LoRA: its parameters must exist for the optimizer
            self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance)

    def check_refine_config(self) -> None:
        """Fail at start-up, not after the SDS stage, on settings the refinement cannot use."""
        c = self.refine_cfg
        if c.steps <= 0:
            return
        if c.resolution % 8:
            raise ValueError(f"system.refine.resolution={c.resolution}: SDEdit needs a multiple of 8 (the VAE's "
                             "downsampling); the official value is 512")
        if not 0 < c.patch_resolution <= c.resolution:
            raise ValueError(f"system.refine.patch_resolution={c.patch_resolution} must be in 1..system.refine."
                             f"resolution ({c.resolution}); the official value is 256")
        if not 0 <= c.noise_step < 1000:
            raise ValueError(f"system.refine.noise_step={c.noise_step} must be a diffusion timestep in 0..999; "
                             "the official value is 200")
        model = c.model or self.cfg.prompt_processor.get("pretrained_model_name_or_path")
        check_pipeline_source(model, "system.refine.model" if c.model else
                              "system.prompt_processor.pretrained_model_name_or_path")

    def check_evaluation_config(self) -> None:
        c = self.eval_cfg
        if c.inception is not None and not os.path.isfile(c.inception):
            raise ValueError(f"system.evaluation.inception: {c.inception} not found; give "
                             "pt_inception-2015-12-05-6726825d.pth (the FID Inception weights) or null")
        if c.clip_model and c.clip_model.startswith(("/", ".", "~")) and not os.path.isdir(
                os.path.expanduser(c.clip_model)):
            raise ValueError(f"system.evaluation.clip_model: folder {c.clip_model} not found; give a CLIP folder, "
                             "a hub id or null")

    @property
    def guidance_is_trained(self) -> bool:
        return any(str(k).split(".")[0] == "guidance" for k in (self.cfg.optimizer.get("params") or {}))

    def check_registered_names(self) -> None:
        """One clear line for a misspelt or unavailable component name (threestudio: KeyError)."""
        for option in ("geometry_type", "material_type", "background_type", "renderer_type", "guidance_type",
                       "prompt_processor_type", "exporter_type", "initializer_type"):
            name = getattr(self.cfg, option)
            if name not in threestudio.__modules__:
                close = difflib.get_close_matches(name, list(threestudio.__modules__), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else "; is its extension in custom/?"
                raise ValueError(f"system.{option}: {name!r} is not a registered threestudio component{hint}")

    @torch.no_grad()
    def initialize_from_prior(self) -> None:
        """Fresh runs only (on_fit_start, once the trial's save folder is known)."""
        initializer = threestudio.find(self.cfg.initializer_type)(self.cfg.initializer)
        with torch.enable_grad():  # the inversion optimises a latent
            levels, ws = initializer(save_dir=self._save_dir, device=self.device)
        self.geometry.set_levels(levels)
        for part in (self.material, self.background):
            if hasattr(part, "set_ws"):
                part.set_ws(ws)
        for r, t in self.geometry.levels.items():
            getattr(self, f"ema_{level_key(r)}").copy_(t)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.resumed:
            self.initialize_from_prior()
        if self.refine_targets is None:  # the prompt processor and a frozen guidance serve only the SDS stage
            self.prompt_processor = threestudio.find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
            if not self.guidance_is_trained:
                self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance)
        max_steps = self.trainer.max_steps
        if self.refine_cfg.steps > 0 and 0 <= max_steps <= self.cfg.sds_steps:
            threestudio.warn(f"trainer.max_steps={max_steps} <= system.sds_steps={self.cfg.sds_steps}: "
                             "the refinement stage will not run")

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # a frozen guidance is rebuilt in on_fit_start: keeping it out of the checkpoint keeps files
        # small and lets resume=/--export load strictly (a trained guidance, e.g. VSD's LoRA, stays)
        state = checkpoint["state_dict"]
        dropped = ("prompt_processor.",) if self.guidance_is_trained else ("guidance.", "prompt_processor.")
        for key in [k for k in state if k.startswith(dropped)]:
            del state[key]
        # config values (e.g. Adan's betas) reach the optimizer state as OmegaConf containers, which
        # torch.load(weights_only=True) — the default since torch 2.6 — refuses on resume
        checkpoint["optimizer_states"] = _plain(checkpoint.get("optimizer_states", []))
        if self.refine_targets is not None:  # so a resume inside the refinement needs no other file
            checkpoint["portrait3d_refine"] = {"targets": self.refine_targets.cpu(),
                                               "labels": self.refine_labels.cpu()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        refine = checkpoint.get("portrait3d_refine")
        if refine is not None:
            self.refine_targets, self.refine_labels = refine["targets"], refine["labels"]

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.renderer(**batch)

    @property
    def refining(self) -> bool:
        return self.refine_cfg.steps > 0 and self.true_global_step >= self.cfg.sds_steps

    def training_step(self, batch, batch_idx):
        if self.refining:
            return self.refine_step()
        return self.sds_step(batch)

    # ------------------------------------------------------------------ stage 1: SDS
    def sds_step(self, batch):
        out = self(batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_processor(), **batch, rgb_as_latents=False)
        loss = 0.0
        for name, value in guidance_out.items():
            if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
                self.log(f"train/{name}", value)  # guidances also return images/latents: not logged
            if name.startswith("loss_"):
                lambda_name = "lambda_" + name[len("loss_"):]
                if lambda_name not in self.cfg.loss:
                    raise ValueError(f"the guidance returns {name}; add system.loss.{lambda_name} to the config")
                loss = loss + value * self.C(self.cfg.loss[lambda_name])
        w = out["weights"].clamp(1e-5, 1 - 1e-5)
        loss_entropy = (-w * torch.log(w) - (1 - w) * torch.log(1 - w)).mean()
        self.log("train/loss_entropy", loss_entropy)
        loss = loss + loss_entropy * self.C(self.cfg.loss.lambda_entropy)
        for name, value in self.cfg.loss.items():
            self.log(f"train_params/{name}", self.C(value))
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if not self.refining and (self.true_global_step + 1) % self.cfg.ema_every_n_steps == 0:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """torch_ema: decay capped at (1 + n) / (10 + n) for the n-th update."""
        n = int(self.ema_updates)
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for r, t in self.geometry.levels.items():
            shadow = getattr(self, f"ema_{level_key(r)}")
            shadow.sub_((1 - decay) * (shadow - t))
        self.ema_updates += 1

    @torch.no_grad()
    def load_ema(self) -> None:
        """The pyramid ← its EMA (the official ``df.pth``), when there is one."""
        if self.cfg.eval_with_ema and int(self.ema_updates) > 0:
            self.geometry.set_levels({r: getattr(self, f"ema_{level_key(r)}") for r in self.geometry.levels})

    def use_ema(self) -> None:
        """Evaluate the SDS result with its EMA; after refinement, the pyramid itself."""
        if not self.refining:
            self.load_ema()

    # ------------------------------------------------------------------ stage 2: refinement
    def prior(self):  # a method, not a property: threestudio's do_update_step getattr()s every attribute
        """The frozen GAN (for the views, the fit and the videos), on this system's device."""
        gan = load_prior(self.cfg.prior_checkpoint, "system.prior_checkpoint")
        return gan if next(gan.parameters()).device == self.device else gan.to(self.device)

    @torch.no_grad()
    def prepare_refinement(self) -> None:
        """Start of stage 2: EMA → pyramid, 21 views, SDEdit, fresh optimizer state at ``refine.lr``."""
        c = self.refine_cfg
        self.load_ema()  # the official fit starts from df.pth, the EMA of the SDS stage
        if not self.guidance_is_trained:
            self.guidance = None  # free the SDS model before SDEdit loads its own
        labels = refinement_labels(c.view_seed).to(self.device)
        views = torch.cat([self.prior().render(self.geometry.levels, self.material.ws, label[None],
                                             resolution=c.resolution, deterministic=True, chunk=c.chunk,
                                             depth_resolution=c.view_samples[0],
                                             depth_resolution_importance=c.view_samples[1])["image"]
                           for label in labels])
        pp = self.cfg.prompt_processor
        model = c.model or pp.get("pretrained_model_name_or_path")
        prompt = c.prompt or pp.get("prompt")
        threestudio.info(f"Refinement: SDEdit of the 21 views with {model} (t = {c.noise_step})")
        pipe = load_pipeline(model, device=self.device, option="system.refine.model")
        refined = sdedit(pipe, views, prompt, SDEditConfig(strength_t=c.noise_step, steps=c.sdedit_steps,
                                                           guidance_scale=c.guidance_scale,
                                                           negative_prompt=c.negative_prompt, seed=c.sdedit_seed))
        del pipe
        clear_pipeline_cache()  # the fit needs only the GAN
        # targets go through uint8 exactly as the official PNG round trip (x·127.5 + 128, then /127.5 − 1)
        self.refine_targets = torch.stack([torch.from_numpy(to_uint8(x)).permute(2, 0, 1) for x in refined])
        self.refine_labels = labels.cpu()
        self.save_refinement_views(views, c.model or model, prompt)
        for opt in self.trainer.optimizers:  # the official fit builds a new Adan: fresh state, one lr
            for group in opt.param_groups:  # the pyramid's groups (a trained guidance's LoRA keeps its own)
                if str(group.get("name", "geometry")).startswith("geometry"):
                    group["lr"] = c.lr
                    group.pop("step", None)
                    for p in group["params"]:
                        opt.state.pop(p, None)

    def save_refinement_views(self, views: Tensor, model: str, prompt: str) -> None:
        rendered = [to_uint8(v) for v in views]
        refined = [t.permute(1, 2, 0).numpy() for t in self.refine_targets]
        for i, (a, b) in enumerate(zip(rendered, refined)):
            write_image(self.get_save_path(f"refine/view_{i:02d}.png"), a)
            write_image(self.get_save_path(f"refine/refined_{i:02d}.png"), b)
        write_image(self.get_save_path("refine/comparison.png"),  # rows: render over refined, 7 per row
                    np.concatenate([contact_sheet(rendered[k:k + 7] + refined[k:k + 7], 7)
                                    for k in range(0, len(rendered), 7)], 0))
        write_json(self.get_save_path("refine/cameras.json"), {
            "model": model, "prompt": prompt,
            "labels": {f"view_{i:02d}.png": c.tolist() for i, c in enumerate(self.refine_labels)}})

    def refine_step(self):
        if self.refine_targets is None:
            self.prepare_refinement()
        step = self.true_global_step - self.cfg.sds_steps
        view, top, left = fit_schedule(step, self.refine_cfg.view_seed, len(self.refine_targets), self.fit_cfg)
        target = self.refine_targets[view:view + 1].to(self.device).float() / 127.5 - 1
        label = self.refine_labels[view:view + 1].to(self.device)
        loss = patch_loss(self.prior(), self.geometry.levels, self.material.ws, label, target, top, left, self.fit_cfg)
        self.log("train/loss_refine", loss)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    # ------------------------------------------------------------------ evaluation
    def _save_views(self, out: Dict[str, Any], filename: str, name: str) -> None:
        self.save_image_grid(
            filename,
            [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}},
             {"type": "grayscale", "img": out["opacity"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}}],
            name=name, step=self.true_global_step)

    def validation_step(self, batch, batch_idx):
        self._save_views(self(batch), f"it{self.true_global_step}-{batch['index'][0]}.png", "validation_step")

    def on_validation_epoch_end(self):
        pass

    def on_test_start(self) -> None:
        super().on_test_start()
        self.use_ema()

    def test_step(self, batch, batch_idx):
        self._save_views(self(batch), f"it{self.true_global_step}-test/{batch['index'][0]}.png", "test_step")

    def on_test_epoch_end(self):
        self.save_img_sequence(f"it{self.true_global_step}-test", f"it{self.true_global_step}-test", r"(\d+)\.png",
                               save_format="mp4", fps=30, name="test", step=self.true_global_step)
        self.save_official_videos()
        self.save_metrics()

    def save_metrics(self) -> None:
        """``it{N}-eval/metrics.json`` + contact sheet, when ``system.evaluation`` asks for metrics."""
        c = self.eval_cfg
        video = self.get_save_path(f"it{self.true_global_step}-large_pose.mp4")
        if c.clip_model is None and c.inception is None:
            return
        if not os.path.isfile(video):
            threestudio.warn("system.evaluation needs the large-pose video (system.videos.large_frames > 0); skipped")
            return
        reference = c.reference
        if c.inception is not None and reference is None:
            found = sorted(glob.glob(os.path.join(self.get_save_dir(), "init", "*", "candidates")))
            if not found:
                raise ValueError("system.evaluation.inception is set but there are no diffusion images to compare "
                                 "with: set system.evaluation.reference to a folder of them")
            reference = found[-1]
        result = evaluate(video, self.cfg.prompt_processor.get("prompt", ""), self.get_save_path(
            f"it{self.true_global_step}-eval"), clip_model=c.clip_model, reference=reference,
            inception_weights=c.inception)
        threestudio.info(f"Evaluation: CLIP score {result['clip_score']}, FID {result['fid']}, KID {result['kid_mean']}")

    @torch.no_grad()
    def save_official_videos(self) -> None:
        """``large_pose.mp4`` (360°), ``small_pose.mp4`` (wobble) and ``views.png``, as the official export."""
        c = self.video_cfg
        prefix = f"it{self.true_global_step}"

        def frames(kind: str, n: int):
            return render_frames(self.prior(), self.geometry.levels, self.material.ws,
                                 turntable_labels(n, kind).to(self.device), c.resolution, c.chunk, f"{kind} pose",
                                 background=c.background, depth_resolution=c.samples[0],
                                 depth_resolution_importance=c.samples[1])

        if c.large_frames > 0:
            large = list(frames("large", c.large_frames))
            save_video(self.get_save_path(f"{prefix}-large_pose.mp4"), large, fps=c.fps)
            step = max(1, len(large) // max(1, c.sheet_views))
            write_image(self.get_save_path(f"{prefix}-views.png"), contact_sheet(large[::step][:c.sheet_views],
                                                                                 min(c.sheet_views, len(large))))
        if c.small_frames > 0:
            save_video(self.get_save_path(f"{prefix}-small_pose.mp4"), frames("small", c.small_frames), fps=c.fps)

    def on_test_end(self) -> None:
        super().on_test_end()
        write_run_report(self.get_save_dir())  # save/index.html (portrait3d.report)

    def on_predict_start(self) -> None:
        self.use_ema()
        super().on_predict_start()

    def on_predict_end(self) -> None:
        super().on_predict_end()
        write_run_report(self.get_save_dir())  # now with the exported mesh's 3D view

    # ------------------------------------------------------------------ export save functions
    def save_trimesh(self, filename: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> str:
        """A vertex-coloured mesh; the format (.obj, .glb, .ply) comes from the file name."""
        import trimesh

        path = self.get_save_path(filename)
        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
        suffix = os.path.splitext(path)[1]
        with atomic_path(path, suffix) as tmp:
            mesh.export(tmp, file_type=suffix[1:])
        return path

    def save_pyramid(self, filename: str, levels: Dict[int, Tensor], ws: Tensor, fmt: str, metadata: dict) -> str:
        path = self.get_save_path(filename)
        save_pyramid(path, levels, ws, fmt=fmt, metadata=metadata if fmt == "ours" else None)
        return path
