"""One frozen GAN prior per checkpoint path, shared by the geometry, material, background and
initializer (so ``model_512.pkl`` is read once per process), and the ``${p3d_tiny:NAME}`` resolver."""

import copy
import os
from typing import Dict

import torch
from omegaconf import OmegaConf

from gan_prior import CheckpointError, PortraitGAN
from gan_prior.tiny_models import tiny_model_path

_PRIORS: Dict[str, PortraitGAN] = {}


def load_prior(path: str, option: str = "checkpoint") -> PortraitGAN:
    """The frozen generator at ``path`` (official model_512.pkl, state dict, or saved folder)."""
    if not path:
        raise ValueError(f"{option} is empty: give the path to model_512.pkl (or a PortraitGAN.save folder)")
    key = os.path.abspath(os.path.expanduser(path))
    if key not in _PRIORS:
        if not os.path.exists(key):
            raise ValueError(
                f"{option}: {path} not found; set system.prior_checkpoint=/path/to/model_512.pkl "
                "(or the environment variable PORTRAIT3D_GAN_CHECKPOINT)"
            )
        try:
            _PRIORS[key] = PortraitGAN.from_checkpoint(key)
        except CheckpointError as e:
            raise ValueError(f"{option}: {e}") from None
    return _PRIORS[key]


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A private, frozen copy of a prior's submodule (so it is saved in threestudio checkpoints)."""
    return copy.deepcopy(module).requires_grad_(False)


if not OmegaConf.has_resolver("p3d_tiny"):
    OmegaConf.register_new_resolver("p3d_tiny", tiny_model_path)
