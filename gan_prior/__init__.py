"""gan_prior: the 3DPortraitGAN▲ prior of Portrait3D in pure PyTorch.

Public entry points::

    from gan_prior import PortraitGAN
    G = PortraitGAN.from_checkpoint("model_512.pkl")
    ws = G.mapping(z, c)                  # [B, 14, 512]
    pyramid = G.synthesize_pyramid(ws)    # {8: [B,3,36,8,8], …, 512: […]}
    out = G.render(pyramid, ws, c, resolution=64, deterministic=True)
"""
from .camera import (CANONICAL_RADIUS, GAN_FOCAL, LOOKAT_PIVOT, SDS_FOCAL, camera_label, canonical_label,
                     label_to_threestudio, lookat_pose, threestudio_c2w_to_label)
from .checkpoint import CheckpointError
from .generator import PortraitGAN, PortraitGANConfig, tiny_config
from .pyramid_files import load_pyramid, save_pyramid
from .pyramid_trigrid import BOX_WARP, LEVEL_SIZES, PyramidTriGrid, sample_pyramid
from .renderer import RenderConfig, render_rays

__all__ = [
    "BOX_WARP", "CANONICAL_RADIUS", "CheckpointError", "GAN_FOCAL", "LEVEL_SIZES", "LOOKAT_PIVOT",
    "PortraitGAN", "PortraitGANConfig", "PyramidTriGrid", "RenderConfig", "SDS_FOCAL", "camera_label",
    "canonical_label", "label_to_threestudio", "load_pyramid", "lookat_pose", "render_rays",
    "sample_pyramid", "save_pyramid", "threestudio_c2w_to_label", "tiny_config",
]
