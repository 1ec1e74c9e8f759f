"""gan_prior: the 3DPortraitGAN▲ prior of Portrait3D in pure PyTorch.

Public entry points::

    from gan_prior import PortraitGAN
    G = PortraitGAN.from_checkpoint("model_512.pkl")
    ws = G.mapping(z, c)                  # [B, 14, 512]
    pyramid = G.synthesize_pyramid(ws)    # {8: [B,3,36,8,8], …, 512: […]}
    out = G.render(pyramid, ws, c, resolution=64, deterministic=True)

Names are imported on first use (PEP 562), so ``import gan_prior`` itself does not load torch; it
arms the CPU torchvision import hook (:mod:`gan_prior.torchvision_compat`).

Layers: a module imports only modules of its own layer or of the layers above it (no cycle;
tests/test_layering.py reads this list and checks it):

    base          files, checks, checkpoint, camera, torchvision_compat, trilinear_cpu
    model         layers, mapping, synthesis, superresolution, pyramid_trigrid, decoder, renderer,
                  generator_config, pose, smpl, mesh_distance, deformation, synthetic_smpl, generator
    files         pyramid_files, media, tiny_models
    stages        diffusion, alignment, perceptual, inversion, portrait_init, refinement, evaluation,
                  mesh, rasterize, texture, mesh_fidelity, mesh_export, mesh_files
    command line  cli, __main__

``files`` (base) writes atomically and ``checkpoint`` reads safely, knowing no model; the ``files``
layer holds the project's file formats (pyramids, images and videos, the tiny models' files).
"""

import importlib

from . import torchvision_compat

torchvision_compat.install_hook()

# public name -> the module that defines it
_EXPORTS = {
    "BOX_WARP": "pyramid_trigrid",
    "LEVEL_SIZES": "pyramid_trigrid",
    "PyramidTriGrid": "pyramid_trigrid",
    "sample_pyramid": "pyramid_trigrid",
    "CANONICAL_RADIUS": "camera",
    "GAN_FOCAL": "camera",
    "LOOKAT_PIVOT": "camera",
    "SDS_FOCAL": "camera",
    "camera_label": "camera",
    "canonical_label": "camera",
    "label_to_threestudio": "camera",
    "lookat_pose": "camera",
    "threestudio_c2w_to_label": "camera",
    "CheckpointError": "checkpoint",
    "load_pyramid": "pyramid_files",
    "save_pyramid": "pyramid_files",
    "PortraitGAN": "generator",
    "PosePredictor": "pose",
    "PortraitGANConfig": "generator",
    "tiny_config": "generator",
    "RenderConfig": "renderer",
    "render_rays": "renderer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gan_prior' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
