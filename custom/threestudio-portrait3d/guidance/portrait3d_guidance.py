"""``portrait3d-sd-guidance``: threestudio's ``stable-diffusion-guidance`` with the official
classifier-free guidance.

The official SDS stage (stable-dreamfusion ``guidance/sd_utils.py``, ``train_step``) guides with
``ε̂ = ε_u + s·(ε_c − ε_u)`` at s = 100; threestudio's guidance computes ``ε_c + s·(ε_c − ε_u)``,
an effective s + 1. Everything else (the timestep range, w(t) = 1 − ᾱ_t, the VAE encoding, the
loss) is threestudio's, which matches the official stage. With perp-neg prompts threestudio
already uses the ``ε_u + s·(…)`` form, which is left as it is.
"""

import threestudio
from threestudio.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance


@threestudio.register("portrait3d-sd-guidance")
class Portrait3DGuidance(StableDiffusionGuidance):
    def compute_grad_sds(self, latents, image, t, prompt_utils, elevation, azimuth, camera_distances):
        if prompt_utils.use_perp_neg:
            return super().compute_grad_sds(
                latents, image, t, prompt_utils, elevation, azimuth, camera_distances
            )
        scale = self.cfg.guidance_scale
        self.cfg.guidance_scale = scale - 1.0  # ε_c + (s − 1)(ε_c − ε_u) = ε_u + s·(ε_c − ε_u)
        try:
            return super().compute_grad_sds(
                latents, image, t, prompt_utils, elevation, azimuth, camera_distances
            )
        finally:
            self.cfg.guidance_scale = scale
