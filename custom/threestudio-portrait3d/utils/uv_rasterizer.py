"""A rasterizer context with the interface threestudio's ``mesh-exporter`` uses (``rasterize_one``,
``interpolate_one`` of ``threestudio.utils.rasterize.NVDiffRasterizerContext``), drawn by
:mod:`gan_prior.rasterize` — the UV rasterizer our own exporter bakes with — instead of nvdiffrast.

threestudio builds its exporter's context from nvdiffrast (CUDA or OpenGL). Where nvdiffrast is not
installed, this stand-in lets ``system.exporter_type=mesh-exporter`` bake with our geometry and
material on any device; the tests hand it to threestudio's exporter to check that contract on CPU.
Outputs follow nvdiffrast's layout: ``rast[..., :2]`` the barycentric weights ``(u, v)`` of the
triangle's first two vertices (the third has ``1 − u − v``), ``rast[..., 2]`` depth ``z/w``,
``rast[..., 3]`` the triangle index + 1 (0 = empty); clip-space y = −1 is row 0.
"""

import torch
from threestudio.utils.typing import *

from gan_prior.rasterize import interpolate, rasterize


class UVRasterizerContext:
    def __init__(self, context_type: str = "cpu", device: Optional[torch.device] = None) -> None:
        self.device = device

    def rasterize_one(
        self,
        pos: Float[Tensor, "Nv 4"],
        tri: Integer[Tensor, "Nf 3"],
        resolution: Union[int, Tuple[int, int]],
    ) -> Tuple[Float[Tensor, "H W 4"], None]:
        h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
        ndc = pos[:, :3] / pos[:, 3:4]
        xy = torch.stack([(ndc[:, 0] * 0.5 + 0.5) * w, (ndc[:, 1] * 0.5 + 0.5) * h], -1)
        face, bary = rasterize(xy, tri.long(), h, w)
        depth = interpolate(ndc[:, 2:3], tri.long(), face, bary)[..., 0]
        rast = torch.stack([bary[..., 0], bary[..., 1], depth, (face + 1).float()], -1)
        return rast, None

    def interpolate_one(
        self, attr: Float[Tensor, "Nv C"], rast: Float[Tensor, "B H W 4"], tri: Integer[Tensor, "Nf 3"], *args
    ) -> Tuple[Float[Tensor, "B H W C"], None]:
        face = rast[..., 3].long() - 1
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1 - u - v], -1)
        return interpolate(attr.float(), tri.long(), face, bary), None
