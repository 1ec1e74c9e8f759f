"""``portrait3d-camera-datamodule``: threestudio's random cameras, aimed at the GAN's pivot.

The official cameras sit on a radius-2.7 sphere about the origin and look at the pivot
(0, 0.0649, 0)_GAN = (0, 0, 0.0649)_threestudio. threestudio's datamodule always looks at the
origin, so this subclass keeps its camera positions and re-aims every camera (c2w, ray
directions, MVP) at ``look_at`` — exact, where shifting the geometry would tilt views by ~1.4°.

The training camera of step ``s`` is drawn from a seed of (run seed, ``s``), with the dataset's
schedule (progressive views, resolution milestones) set for ``s`` itself — not for the step
before, as Lightning's one-batch-ahead fetching leaves it — so a resumed run sees the cameras of
the uninterrupted one (:mod:`..utils.step_seed`).
"""

from dataclasses import dataclass

import threestudio
import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from threestudio.data.uncond import RandomCameraDataModule, RandomCameraDataModuleConfig
from threestudio.utils.ops import get_mvp_matrix
from threestudio.utils.typing import *

from gan_prior.camera import CANONICAL_RADIUS, SDS_FOVY_DEG, threestudio_pivot
from gan_prior.checks import MAX_FRAMES, MAX_RESOLUTION

from ..system.config_check import parse_section
from ..utils.step_seed import CAMERA, run_seed, seeded_cpu_draws


@dataclass
class Portrait3DCameraConfig(RandomCameraDataModuleConfig):
    look_at: Tuple[float, float, float] = threestudio_pivot()  # (0, 0, 0.0649)
    # the official SDS camera ranges (official ``nerf/provider_3DPortraitGAN.py`` ``rand_poses``)
    elevation_range: Tuple[float, float] = (-15.0, 30.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (CANONICAL_RADIUS, CANONICAL_RADIUS)
    fovy_range: Tuple[float, float] = (SDS_FOVY_DEG, SDS_FOVY_DEG)
    camera_perturb: float = 0.0
    center_perturb: float = 0.0
    up_perturb: float = 0.0
    eval_elevation_deg: float = 0.0
    eval_camera_distance: float = CANONICAL_RADIUS
    eval_fovy_deg: float = SDS_FOVY_DEG


def check_camera_settings(cfg: Portrait3DCameraConfig) -> None:
    """The sizes threestudio's dataset reads without checking (``data/uncond.py``: an assert or a
    ``range`` error at ``setup``): ``height``/``width``/``batch_size`` a whole number ≥ 1 or one per
    stage of ``resolution_milestones``; the eval sizes and view counts whole numbers ≥ 1."""
    lengths = {}
    for name in ("height", "width", "batch_size"):
        value = getattr(cfg, name)
        values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        high = MAX_RESOLUTION if name != "batch_size" else None
        whole = [isinstance(v, int) and not isinstance(v, bool) for v in values]
        if not values or not all(w and v >= 1 and (high is None or v <= high) for w, v in zip(whole, values)):
            raise ValueError(
                f"data.{name}={value!r}: give a whole number ≥ 1{f' (at most {high})' if high else ''}, or a "
                "list of them, one per stage of data.resolution_milestones"
            )
        lengths[name] = len(values)
    counts = set(lengths.values())  # threestudio's dataset asserts that all three have one length
    if len(counts) > 1 or counts - {1, len(cfg.resolution_milestones) + 1}:
        raise ValueError(
            f"data.height, data.width and data.batch_size give {lengths['height']}, {lengths['width']} and "
            f"{lengths['batch_size']} values: give one, or len(data.resolution_milestones) + 1 = "
            f"{len(cfg.resolution_milestones) + 1} each"
        )
    for name, low, high in (  # (degrees; distances from the pivot)
        ("elevation_range", -90.0, 90.0),
        ("azimuth_range", -360.0, 360.0),
        ("camera_distance_range", 0.0, None),
        ("fovy_range", 0.0, 180.0),
    ):
        pair = list(getattr(cfg, name))
        if len(pair) != 2 or pair[0] > pair[1] or pair[0] < low or (high is not None and pair[1] > high):
            where = f"within [{low:g}, {high:g}]" if high is not None else f"low > {low:g}"
            raise ValueError(f"data.{name}={pair}: give [low, high] with low ≤ high, {where}")
    if min(cfg.camera_distance_range) <= 0 or min(cfg.fovy_range) <= 0 or max(cfg.fovy_range) >= 180:
        raise ValueError(
            f"data.camera_distance_range={list(cfg.camera_distance_range)} and data.fovy_range="
            f"{list(cfg.fovy_range)}: distances > 0 and fields of view strictly between 0 and 180 degrees"
        )
    if cfg.eval_camera_distance <= 0 or not 0 < cfg.eval_fovy_deg < 180 or cfg.camera_perturb < 0:
        raise ValueError(
            f"data.eval_camera_distance={cfg.eval_camera_distance}, data.eval_fovy_deg={cfg.eval_fovy_deg}, "
            f"data.camera_perturb={cfg.camera_perturb}: give a distance > 0, a field of view strictly "
            "between 0 and 180 degrees, a perturbation ≥ 0"
        )
    for name in ("eval_height", "eval_width", "eval_batch_size", "n_val_views", "n_test_views"):
        value, high = getattr(cfg, name), MAX_RESOLUTION if name.startswith("eval_") else MAX_FRAMES
        if not 1 <= value <= high:
            raise ValueError(f"data.{name}={value}: give a whole number from 1 to {high}")


def aim_cameras(batch: Dict[str, Any], look_at: Tensor) -> Dict[str, Any]:
    """Re-aim the cameras of a threestudio batch at ``look_at``, keeping positions and pixels."""
    c2w = batch["c2w"]
    pos = c2w[..., :3, 3]
    forward = F.normalize(look_at.to(pos) - pos, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], device=pos.device).expand_as(forward)
    right = F.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, forward, dim=-1), dim=-1)
    new = c2w.clone()
    new[..., :3, :3] = torch.stack([right, up, -forward], -1)
    dirs_cam = torch.einsum("...hwi,...ij->...hwj", batch["rays_d"], c2w[..., :3, :3])
    rays_d = torch.einsum("...hwj,...ij->...hwi", dirs_cam, new[..., :3, :3])
    batch = dict(batch)
    batch["c2w"], batch["rays_d"] = new, F.normalize(rays_d, dim=-1)
    batch["mvp_mtx"] = get_mvp_matrix(new.reshape(-1, 4, 4), batch["proj_mtx"].reshape(-1, 4, 4)).reshape(
        c2w.shape
    )
    return batch


@threestudio.register("portrait3d-camera-datamodule")
class Portrait3DCameraDataModule(RandomCameraDataModule):
    cfg: Portrait3DCameraConfig

    def __init__(self, cfg: Optional[Union[dict, Any]] = None) -> None:
        super(RandomCameraDataModule, self).__init__()
        self.cfg = parse_section(Portrait3DCameraConfig, cfg, "data")
        check_camera_settings(self.cfg)
        if self.cfg.center_perturb or self.cfg.up_perturb:
            raise ValueError(
                "data.center_perturb and data.up_perturb must be 0 for portrait3d-camera-datamodule "
                "(cameras are aimed at data.look_at)"
            )
        self.look_at = torch.tensor(self.cfg.look_at, dtype=torch.float32)
        self.seed = run_seed()
        self.next_train_step: Optional[int] = None  # the step the next training batch is for

    def setup(self, stage=None) -> None:
        super().setup(stage)
        self.next_train_step = None  # set from the trainer's (restored) step at the first batch
        if hasattr(self, "train_dataset") and not getattr(self.train_dataset, "_p3d_aimed", False):
            dataset, collate = self.train_dataset, self.train_dataset.collate

            def collate_step(batch):
                step = self.take_train_step()
                dataset.update_step(0, step)
                with seeded_cpu_draws(self.seed, step, CAMERA):
                    return aim_cameras(collate(batch), self.look_at)

            dataset.collate = collate_step
            dataset._p3d_aimed = True
        for name in ("val_dataset", "test_dataset"):
            ds = getattr(self, name, None)
            if ds is not None and not getattr(ds, "_p3d_aimed", False):
                aimed = aim_cameras(
                    {"c2w": ds.c2w, "rays_d": ds.rays_d, "proj_mtx": ds.proj_mtx}, self.look_at
                )
                ds.c2w, ds.rays_d, ds.mvp_mtx = aimed["c2w"], aimed["rays_d"], aimed["mvp_mtx"]
                ds._p3d_aimed = True

    def take_train_step(self) -> int:
        """The step of the batch being collated: one batch per step, counted from the trainer's
        global step at the first batch of a fit (0 on a fresh run, the checkpoint's on resume)."""
        if self.next_train_step is None:
            trainer = getattr(self, "trainer", None)
            self.next_train_step = trainer.global_step if trainer is not None else 0
        step, self.next_train_step = self.next_train_step, self.next_train_step + 1
        return step
