"""Stage 2 of ``portrait3d-system``, the refinement (paper §3.5; official
``3DPortraitGAN_pyramid/gen_quality_improve_data_from_triplane.py`` and ``optimize_trigrid.py``).

The EMA pyramid renders the 21 official views with the GAN background, SDEdit (any diffusers
model) refines them — both written to ``save/refine/`` — and a masked patch-L2 fit with a fresh
Adan at ``refine.lr`` for every level pulls the pyramid toward them (:mod:`gan_prior.refinement`).
"""

from dataclasses import dataclass

import numpy as np
import threestudio
import torch
from threestudio.utils.typing import *

from gan_prior.diffusion import (
    REFINE_NEGATIVE_PROMPT,
    SDEditConfig,
    check_pipeline_source,
    clear_pipeline_cache,
    load_pipeline,
    sdedit,
)
from gan_prior.files import write_json
from gan_prior.media import contact_sheet, from_uint8, png_round_trip, to_uint8
from gan_prior.media import save_image as write_image
from gan_prior.refinement import fit_schedule, masked_patch_l2, refinement_labels

from ..utils.step_seed import step_seed

VIEWS = "refine-views"  # the random stream of the 21 views' sampler jitter


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


def check_refine_settings(c: RefineConfig) -> None:
    """``system.refine`` settings the refinement cannot use, without reading a file (``check_settings``,
    so the batch's pre-flight too): they fail at start-up, not after the SDS stage."""
    if c.steps <= 0:
        return
    if c.resolution % 8:
        raise ValueError(
            f"system.refine.resolution={c.resolution}: SDEdit needs a multiple of 8 (the VAE's "
            "downsampling); the official value is 512"
        )
    if not 0 < c.patch_resolution <= c.resolution:
        raise ValueError(
            f"system.refine.patch_resolution={c.patch_resolution} must be in 1..system.refine."
            f"resolution ({c.resolution}); the official value is 256"
        )
    if not 0 <= c.noise_step < 1000:
        raise ValueError(
            f"system.refine.noise_step={c.noise_step} must be a diffusion timestep in 0..999; "
            "the official value is 200"
        )
    if not 1 <= c.sdedit_steps <= 1000:  # 0 failed after the SDS stage, in diffusers' DDIM scheduler
        raise ValueError(
            f"system.refine.sdedit_steps={c.sdedit_steps} must be in 1..1000 (the DDIM schedule's length); "
            "the official value is 50"
        )
    for name, official in (("guidance_scale", 7.5), ("lr", 1.0), ("loss_weight", 1e3)):
        if getattr(c, name) < 0:  # a negative rate or weight climbs away from the refined views
            raise ValueError(
                f"system.refine.{name}={getattr(c, name)} must be ≥ 0; the official value is {official:g}"
            )


class RefinementStage:
    """The stage-2 methods of :class:`~.portrait3d.Portrait3DSystem` (``system.refine``)."""

    def check_refine_config(self) -> None:
        """The SDEdit model exists (a folder or a hub id), before the SDS stage; the settings are
        :func:`check_refine_settings`'s."""
        c = self.cfg.refine
        if c.steps <= 0:
            return
        model = c.model or self.cfg.prompt_processor.get("pretrained_model_name_or_path")
        check_pipeline_source(
            model,
            "system.refine.model" if c.model else "system.prompt_processor.pretrained_model_name_or_path",
        )

    @torch.no_grad()
    def prepare_refinement(self) -> None:
        """Start of stage 2: EMA → pyramid, 21 views, SDEdit, fresh optimizer state at ``refine.lr``."""
        c = self.cfg.refine
        self.load_ema()  # the official fit starts from df.pth, the EMA of the SDS stage
        if not self.guidance_is_trained:
            self.guidance = None  # free the SDS model before SDEdit loads its own
        labels = refinement_labels(c.view_seed).to(self.device)
        # official gen_quality_improve_data_from_triplane.py renders with the sampler's jitter (seeded
        # here, so a resumed run sees the same views) and saves 8-bit PNGs, which sdedit.py reads
        devices = [self.device] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed(self.seed, c.view_seed, VIEWS))
            views = png_round_trip(self.render_refinement_views(labels))
        model, prompt, refined = self.sdedit_views(views)
        # targets go through uint8 exactly as the official PNG round trip (x·127.5 + 128, then /127.5 − 1)
        self.refine_targets = torch.stack([torch.from_numpy(to_uint8(x)).permute(2, 0, 1) for x in refined])
        self.refine_labels = labels.cpu()
        self.save_refinement_views(views, c.model or model, prompt)
        self.reset_geometry_optimizer(c.lr)

    def render_refinement_views(self, labels: Float[Tensor, "V 25"]) -> Float[Tensor, "V 3 H W"]:
        """The pyramid from the official 21 cameras, with the GAN background (ToRGB range), with the
        renderer's jitter as the official script (``render_planes`` samples at random depths)."""
        c = self.cfg.refine
        return torch.cat(
            [
                self.renderer.render_labels(
                    label[None],
                    c.resolution,
                    deterministic=False,
                    chunk=c.chunk,
                    depth_resolution=c.view_samples[0],
                    depth_resolution_importance=c.view_samples[1],
                )["image"]
                for label in labels
            ]
        )

    def sdedit_views(self, views: Float[Tensor, "V 3 H W"]) -> Tuple[str, str, Float[Tensor, "V 3 H W"]]:
        """``(model, prompt, refined views)``: SDEdit of ``views``; the pipeline is freed afterwards."""
        c = self.cfg.refine
        pp = self.cfg.prompt_processor
        model = c.model or pp.get("pretrained_model_name_or_path")
        prompt = c.prompt or pp.get("prompt")
        threestudio.info(f"Refinement: SDEdit of the 21 views with {model} (t = {c.noise_step})")
        pipe = load_pipeline(model, device=self.device, option="system.refine.model")
        refined = sdedit(
            pipe,
            views,
            prompt,
            SDEditConfig(
                strength_t=c.noise_step,
                steps=c.sdedit_steps,
                guidance_scale=c.guidance_scale,
                negative_prompt=c.negative_prompt,
                seed=c.sdedit_seed,
            ),
        )
        del pipe
        clear_pipeline_cache()  # the fit needs only the GAN
        return model, prompt, refined

    def reset_geometry_optimizer(self, lr: float) -> None:
        """The official fit builds a new Adan: fresh state and one ``lr`` for the pyramid's groups
        (a trained guidance's LoRA keeps its own)."""
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                if str(group.get("name", "geometry")).startswith("geometry"):
                    group["lr"] = lr
                    group.pop("step", None)
                    for p in group["params"]:
                        opt.state.pop(p, None)

    def save_refinement_views(self, views: Tensor, model: str, prompt: str) -> None:
        rendered = [to_uint8(v) for v in views]
        refined = [t.permute(1, 2, 0).numpy() for t in self.refine_targets]
        for i, (a, b) in enumerate(zip(rendered, refined)):
            write_image(self.get_save_path(f"refine/view_{i:02d}.png"), a)
            write_image(self.get_save_path(f"refine/refined_{i:02d}.png"), b)
        write_image(
            self.get_save_path("refine/comparison.png"),  # rows: render over refined, 7 per row
            np.concatenate(
                [
                    contact_sheet(rendered[k : k + 7] + refined[k : k + 7], 7)
                    for k in range(0, len(rendered), 7)
                ],
                0,
            ),
        )
        write_json(
            self.get_save_path("refine/cameras.json"),
            {
                "model": model,
                "prompt": prompt,
                "labels": {f"view_{i:02d}.png": c.tolist() for i, c in enumerate(self.refine_labels)},
            },
        )

    def refinement_on_device(self) -> Tuple[Tensor, Tensor]:
        """The targets (uint8) and their labels on the run's device, copied there once: they are
        kept on the CPU for the checkpoints, and a copy per fit step would wait for the GPU."""
        cached = getattr(self, "_refinement_on_device", None)
        if cached is None or cached[0] is not self.refine_targets or cached[1].device != self.device:
            targets, labels = self.refine_targets.to(self.device), self.refine_labels.to(self.device)
            cached = self._refinement_on_device = (self.refine_targets, targets, labels)
        return cached[1], cached[2]

    def refine_step(self):
        if self.refine_targets is None:
            self.prepare_refinement()
        step = self.true_global_step - self.cfg.sds_steps
        view, top, left = fit_schedule(
            step, self.cfg.refine.view_seed, len(self.refine_targets), self.fit_cfg
        )
        targets, labels = self.refinement_on_device()
        target, label = from_uint8(targets[view : view + 1]), labels[view : view + 1]
        f, p = self.fit_cfg, self.fit_cfg.patch_resolution
        out = self.renderer.render_labels(
            label,
            f.resolution,
            deterministic=False,
            background=False,
            patch=(top, left, p),
            depth_resolution=f.depth_resolution,
            depth_resolution_importance=f.depth_resolution_importance,
        )
        loss = masked_patch_l2(out["image"], out["mask"], target, top, left, f)
        self.log("train/loss_refine", loss)
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}
