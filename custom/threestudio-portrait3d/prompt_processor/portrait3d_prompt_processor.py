"""``portrait3d-prompt-processor``: the official SDS stage's view-dependent text embeddings.

The official SDS (``stable-dreamfusion-3DPortrait/nerf/utils.py``: ``prepare_embeddings`` and the
non-perp-neg branch of ``train_step``) encodes "front view {prompt}", "side view {prompt}" and
"back view {prompt}" and *interpolates the embeddings linearly by azimuth* (degrees, 0 = front):

* |azimuth| ≤ 90: ``r = 1 − |az|/90``, embedding ``r·front + (1 − r)·side``;
* otherwise:      ``r = 2 − |az|/90``, embedding ``r·side + (1 − r)·back``.

The unconditional embedding is the negative prompt's (official ``--negative`` default ""), the
same at every view. There is no overhead view and no Perp-Neg (``--perpneg`` is off in
``portrait3d_main.py``). threestudio's own processors pick one of four discrete prompts instead;
they stay usable through ``system.prompt_processor_type``.

Azimuths are threestudio's (degrees, 0 = the face: the GAN's +z is threestudio's +x), which equal
the official SDS azimuths up to the sign (the official SDS renders are mirrored, see
``gan_prior.camera``); the interpolation depends on |azimuth| only.
"""

from dataclasses import dataclass

import threestudio
import torch
from threestudio.models.prompt_processors.base import (
    DirectionConfig,
    PromptProcessorOutput,
    shift_azimuth_deg,
)
from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import (
    StableDiffusionPromptProcessor,
)
from threestudio.utils.typing import Float, Tensor

from portrait3d.launch_errors import EMPTY_PROMPT
from portrait3d.text_embeddings import save_text_embeddings

VIEWS = ("front", "side", "back")  # order of the rows of ``view_weights`` and ``text_embeddings_vd``


def view_weights(azimuth_deg: Float[Tensor, "B"]) -> Float[Tensor, "B 3"]:
    """Weights of the (front, side, back) embeddings at each azimuth (official ``train_step``)."""
    a = shift_azimuth_deg(azimuth_deg.float()).abs()  # [0, 180]
    r_fs = (1 - a / 90).clamp(0, 1)  # front share, |a| <= 90
    r_sb = (2 - a / 90).clamp(0, 1)  # side share, |a| > 90
    front = torch.where(a <= 90, r_fs, torch.zeros_like(a))
    back = torch.where(a <= 90, torch.zeros_like(a), 1 - r_sb)
    return torch.stack([front, 1 - front - back, back], -1)


@dataclass
class Portrait3DPromptProcessorOutput(PromptProcessorOutput):
    def get_text_embeddings(
        self,
        elevation: Float[Tensor, "B"],
        azimuth: Float[Tensor, "B"],
        camera_distances: Float[Tensor, "B"],
        view_dependent_prompting: bool = True,
    ) -> Float[Tensor, "BB N Nf"]:
        """``[2B, 77, C]``: the interpolated conditional embeddings, then the unconditional ones."""
        batch = elevation.shape[0]
        uncond = self.uncond_text_embeddings.expand(batch, -1, -1)
        if not view_dependent_prompting:
            return torch.cat([self.text_embeddings.expand(batch, -1, -1), uncond], 0)
        vd = self.text_embeddings_vd[[self.direction2idx[v] for v in VIEWS]]  # [3, 77, C]
        w = view_weights(azimuth).to(vd)
        return torch.cat([torch.einsum("bv,vnc->bnc", w, vd), uncond], 0)


@threestudio.register("portrait3d-prompt-processor")
class Portrait3DPromptProcessor(StableDiffusionPromptProcessor):
    """threestudio's Stable Diffusion text encoding with the official view prompts
    ("{view} view {prompt}") interpolated by azimuth (see the module docstring)."""

    @dataclass
    class Config(StableDiffusionPromptProcessor.Config):
        pass

    cfg: Config

    # the embeddings moved into threestudio's cache whole: concurrent runs share it (portrait3d batch)
    spawn_func = staticmethod(save_text_embeddings)

    @staticmethod
    def check_config(cfg) -> None:
        """An empty prompt, and settings of threestudio's processor the official scheme does not have
        (the system calls this in its configure, before any work)."""
        if not str(cfg.prompt or "").strip():
            raise ValueError(EMPTY_PROMPT)
        if cfg.use_perp_neg:
            raise ValueError(
                "system.prompt_processor.use_perp_neg: the official Portrait3D SDS has no Perp-Neg; "
                "set it to false, or use prompt_processor_type=stable-diffusion-prompt-processor"
            )
        if cfg.use_prompt_debiasing or cfg.view_dependent_prompt_front:
            raise ValueError(
                "system.prompt_processor: use_prompt_debiasing / view_dependent_prompt_front belong to "
                "threestudio's discrete scheme; use prompt_processor_type=stable-diffusion-prompt-processor"
            )

    def configure(self) -> None:
        self.check_config(self.cfg)
        super().configure()

    # threestudio's configure() builds its own four directions; ours are the official three.
    # The condition is only used by threestudio's discrete lookup, which we replace.
    @property
    def directions(self):
        return self._official_directions

    @directions.setter
    def directions(self, _value) -> None:
        self._official_directions = [
            DirectionConfig(
                v,
                lambda s, v=v: f"{v} view {s}",
                lambda s: s,
                lambda ele, azi, dis: torch.zeros_like(ele, dtype=torch.bool),
            )
            for v in VIEWS
        ]

    def __call__(self) -> Portrait3DPromptProcessorOutput:
        out = super().__call__()
        return Portrait3DPromptProcessorOutput(**vars(out))
