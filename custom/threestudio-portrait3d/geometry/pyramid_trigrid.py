"""``pyramid-trigrid``: the Portrait3D pyramid tri-grid as a threestudio implicit geometry.

Parameters: one tensor per level, ``trigrids_{R}`` ``[1, 3, 36, R, R]`` (learning rates per level
are plain optimizer config: ``system.optimizer.params.geometry.trigrids_256.lr``). The frozen GAN
decoder maps the level- and plane-averaged features to a raw density σ and a 32-channel feature.
``gan_field()`` is the field over GAN-world points (y up, face +z), as ``portrait3d-renderer`` samples them;
threestudio's own calls (``forward``, the isosurface) pass threestudio-world points (z up), rotated
once into the GAN world.
``density`` is the *raw* σ (the renderer applies ``softplus(σ − 1)``); the isosurface is taken on
raw σ, as the official shape export (level 15 there), with the official x/z crop applied, by
marching cubes over the tri-grid box (:func:`gan_prior.mesh.density_grid`: coarse to fine, at most
``isosurface_chunk`` points per field call, so a 256³ grid fits a small GPU).
"""

import math
from dataclasses import dataclass, field

import numpy as np
import threestudio
import torch
from threestudio.models.geometry.base import BaseImplicitGeometry
from threestudio.models.mesh import Mesh
from threestudio.utils.typing import *

from gan_prior.camera import gan_to_threestudio_points, threestudio_to_gan_points
from gan_prior.checks import MAX_ISOSURFACE_RESOLUTION
from gan_prior.mesh import density_grid, marching_cubes
from gan_prior.pyramid_trigrid import level_key, pyramid_field
from gan_prior.renderer import RenderConfig, crop_mask

from ..prior import frozen_copy, load_prior


@threestudio.register("pyramid-trigrid")
class PyramidTriGridGeometry(BaseImplicitGeometry):
    @dataclass
    class Config(BaseImplicitGeometry.Config):
        checkpoint: str = ""  # the GAN prior whose frozen decoder reads the grid
        level_sizes: List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512])
        radius: float = RenderConfig.box_warp / 2  # the tri-grid cube
        isosurface_method: str = "mc-cpu"
        isosurface_resolution: int = 256
        isosurface_threshold: Any = 15.0  # raw σ, official marching-cubes level; or "auto"
        isosurface_chunk: int = 1 << 18  # grid points per field call (≈ 140 MB of activations)

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.isosurface_method != "mc-cpu" or self.cfg.isosurface_chunk <= 0:
            raise ValueError(
                f"system.geometry: isosurface_method={self.cfg.isosurface_method!r}, isosurface_chunk="
                f"{self.cfg.isosurface_chunk}: pyramid-trigrid meshes by marching cubes ('mc-cpu') with a "
                "chunk > 0 grid points per field call"
            )
        level = self.cfg.isosurface_threshold
        if level != "auto" and not (
            isinstance(level, (int, float)) and not isinstance(level, bool) and math.isfinite(level)
        ):
            raise ValueError(
                f"system.geometry.isosurface_threshold={level!r}: give the density level of the exported "
                "mesh (a number; the official 15) or auto"
            )
        size = self.cfg.isosurface_resolution
        if isinstance(size, bool) or not 2 <= size <= MAX_ISOSURFACE_RESOLUTION:
            raise ValueError(  # 0 ended in an IndexError, 100000 out of memory, both at --export
                f"system.geometry.isosurface_resolution={size!r}: give the marching-cubes grid size, 2 to "
                f"{MAX_ISOSURFACE_RESOLUTION} (256 by default; the official shape export uses 512)"
            )
        prior = load_prior(self.cfg.checkpoint, "system.geometry.checkpoint")
        self.box_warp = prior.cfg.render.box_warp
        self.depth = prior.cfg.trigrid_depth
        self.crop = RenderConfig(box_warp=self.box_warp)
        channels = prior.cfg.plane_channels
        for r in sorted(self.cfg.level_sizes):
            self.register_parameter(level_key(r), torch.nn.Parameter(torch.zeros(1, 3, channels, r, r)))
        self.decoder = frozen_copy(prior.decoder)

    @property
    def levels(self) -> Dict[int, Float[Tensor, "1 3 C R R"]]:
        return {r: getattr(self, level_key(r)) for r in sorted(self.cfg.level_sizes)}

    @torch.no_grad()
    def set_levels(self, levels: Dict[int, Tensor]) -> None:
        """Fill the grid; ``levels`` must hold exactly the configured sizes."""
        if sorted(levels) != sorted(self.cfg.level_sizes):
            raise ValueError(
                f"pyramid levels {sorted(levels)} do not match system.geometry.level_sizes "
                f"{sorted(self.cfg.level_sizes)}; set level_sizes to the file's levels"
            )
        for r, t in levels.items():
            getattr(self, level_key(r)).copy_(t[:1].to(self.decoder.net[0].weight))

    def gan_field(self) -> Callable[[Tensor], Tuple[Tensor, Tensor]]:
        """The field of the current levels over GAN-world points ``[*N, 3]`` → (raw σ ``[*N, 1]``,
        32-channel features ``[*N, 32]``): the decoder on the sampled pyramid. The levels are laid
        out once per field (:func:`gan_prior.pyramid_trigrid.pyramid_field`): one per render."""
        evaluate = pyramid_field(self.levels, self.decoder, self.box_warp, self.depth)

        def gan_points_field(
            points_e: Float[Tensor, "*N 3"],
        ) -> Tuple[Float[Tensor, "*N 1"], Float[Tensor, "*N Nf"]]:
            shape = points_e.shape[:-1]
            sigma, feats = evaluate(points_e.reshape(1, -1, 3))
            return sigma.reshape(*shape, 1), feats.reshape(*shape, -1)

        return gan_points_field

    def _field(self, points: Float[Tensor, "*N 3"]) -> Tuple[Float[Tensor, "*N 1"], Float[Tensor, "*N Nf"]]:
        return self.gan_field()(threestudio_to_gan_points(points))

    def forward(
        self, points: Float[Tensor, "*N Di"], output_normal: bool = False
    ) -> Dict[str, Float[Tensor, "..."]]:
        if output_normal:
            raise ValueError("pyramid-trigrid has no normals; use a material with requires_normal = False")
        sigma, feats = self._field(points)
        return {"density": sigma, "features": feats}

    def forward_density(self, points: Float[Tensor, "*N Di"]) -> Float[Tensor, "*N 1"]:
        return self._field(points)[0]

    def forward_field(
        self, points: Float[Tensor, "*N Di"]
    ) -> Tuple[Float[Tensor, "*N 1"], Optional[Float[Tensor, "*N 3"]]]:
        sigma = self._field(points)[0]
        cropped = crop_mask(threestudio_to_gan_points(points), self.crop)
        return torch.where(cropped, torch.full_like(sigma, self.crop.crop_density), sigma), None

    def forward_level(self, field: Float[Tensor, "*N 1"], threshold: float) -> Float[Tensor, "*N 1"]:
        return -(field - threshold)

    def export(self, points: Float[Tensor, "*N Di"], **kwargs) -> Dict[str, Any]:
        return {"features": self._field(points)[1]}

    @torch.no_grad()
    def gan_isosurface(self) -> Tuple[np.ndarray, np.ndarray]:
        """Marching cubes on raw σ (crop applied) over the tri-grid box: vertices ``[V, 3]`` (GAN
        world) and faces ``[F, 3]``; one line naming ``isosurface_threshold`` when it is empty."""
        field = self.gan_field()
        device = self.decoder.net[0].weight.device

        def density(points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
            points = points.to(device)
            sigma = field(points)[0][:, 0]
            return torch.where(crop_mask(points, self.crop)[:, 0], self.crop.crop_density, sigma)

        grid = density_grid(
            density,
            self.cfg.isosurface_resolution,
            self.cfg.isosurface_threshold,
            -self.box_warp / 2,
            self.box_warp / 2,
            chunk=self.cfg.isosurface_chunk,
            floor=self.crop.crop_density,
            option="system.geometry.isosurface_threshold",
        )
        threestudio.info(
            f"Isosurface at σ = {grid.level:g} (σ from {grid.sigma_range[0]:.3g} to {grid.sigma_range[1]:.3g}); "
            f"{grid.evaluated} of {self.cfg.isosurface_resolution**3} grid points evaluated"
        )
        return marching_cubes(grid)

    def isosurface(self) -> Mesh:
        """threestudio's contract (its ``mesh-exporter`` calls it): the mesh in threestudio's world."""
        v, f = self.gan_isosurface()
        device = self.decoder.net[0].weight.device
        mesh = Mesh(
            v_pos=gan_to_threestudio_points(torch.from_numpy(v)).to(device),
            t_pos_idx=torch.from_numpy(f).to(device),
        )
        if self.cfg.isosurface_remove_outliers:
            mesh = mesh.remove_outlier(self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh
