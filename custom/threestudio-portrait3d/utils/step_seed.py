"""The randomness of a training step as a function of (run seed, step, stream).

Lightning saves no random-number state in a checkpoint, and its data fetcher collates one batch
ahead of the step that uses it; a run resumed from a checkpoint would draw other cameras, SDS
timesteps and noise, and other ray jitter than the same run never interrupted. Seeding every
draw from the step index instead makes a resumed run repeat the uninterrupted one exactly — bitwise
on the CPU. On CUDA the renderer's backward (``grid_sampler_3d``'s and ``gather``'s) adds with
atomics, so there the two agree to float rounding, not bitwise (and ``trainer.deterministic=true``,
which would make that backward raise, is refused at start-up).
"""

import contextlib
import hashlib
import os
import random
from typing import Iterator

import numpy as np
import torch

CAMERA = "camera"  # the training camera of a step (portrait3d-camera-datamodule)
STEP = "step"  # everything drawn inside a training step: guidance timesteps and noise, ray jitter


def run_seed() -> int:
    """The run's seed: threestudio's ``launch.py`` calls ``pl.seed_everything(cfg.seed + rank)``,
    which exports it as ``PL_GLOBAL_SEED``; elsewhere, torch's initial seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def step_seed(base: int, step: int, stream: str) -> int:
    """A 63-bit seed for draw ``stream`` of step ``step`` in the run seeded ``base``."""
    digest = hashlib.blake2b(f"{base}:{stream}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_step(base: int, step: int, stream: str = STEP) -> None:
    """Seed torch (every device), numpy and ``random`` for ``stream`` of step ``step``."""
    seed = step_seed(base, step, stream)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def seeded_cpu_draws(base: int, step: int, stream: str) -> Iterator[None]:
    """Inside: torch's CPU generator, numpy and ``random`` seeded for ``stream`` of step ``step``
    (threestudio's camera sampling draws from torch and ``random``); outside, their states as before."""
    seed = step_seed(base, step, stream)
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
