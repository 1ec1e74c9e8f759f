"""``portrait3d-exporter``: what ``launch.py --export`` writes for a portrait.

- a mesh: marching cubes on the raw density σ (``system.geometry.isosurface_threshold``, official
  level 15, and ``isosurface_resolution``), vertex colours from the frozen ToRGB, written as
  ``.obj`` and ``.glb`` (trimesh). Vertices are in the GAN's world, which is glTF's convention:
  +y up, the face looking down +z, units of the tri-grid box (side 0.7) centred at the origin —
  the frame of the official ``shape.mrc`` — so viewers show the bust upright and facing you;
- the pyramid tri-grid and its ``ws``, in our safetensors format (``pyramid.safetensors``) and in
  the official gallery / ``epoch_*.pth`` format (``pyramid_trigrid.pth``), readable by
  ``gan_prior.load_pyramid`` and by the official visualiser.
The system saves them (``save_trimesh`` / ``save_pyramid``) under ``save/it{step}-export/``.
"""

from dataclasses import dataclass, field

import threestudio
import torch
from threestudio.models.exporters.base import Exporter, ExporterOutput
from threestudio.utils.typing import *

from gan_prior.camera import threestudio_to_gan_points

MESH_FORMATS = ("obj", "glb", "ply")
PYRAMID_FILES = {"ours": "pyramid.safetensors", "official": "pyramid_trigrid.pth"}


@threestudio.register("portrait3d-exporter")
class Portrait3DExporter(Exporter):
    @dataclass
    class Config(Exporter.Config):
        save_name: str = "portrait"
        mesh_formats: List[str] = field(default_factory=lambda: ["obj", "glb"])
        pyramid_formats: List[str] = field(default_factory=lambda: ["ours", "official"])

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        for fmt in self.cfg.mesh_formats:
            if fmt not in MESH_FORMATS:
                raise ValueError(
                    f"system.exporter.mesh_formats: unknown format {fmt!r}; use {list(MESH_FORMATS)}"
                )
        for fmt in self.cfg.pyramid_formats:
            if fmt not in PYRAMID_FILES:
                raise ValueError(
                    f"system.exporter.pyramid_formats: unknown format {fmt!r}; use {list(PYRAMID_FILES)}"
                )

    @torch.no_grad()
    def __call__(self) -> List[ExporterOutput]:
        outputs = []
        if self.cfg.mesh_formats:
            mesh = self.geometry.isosurface()
            colors = self.material.export(**self.geometry.export(mesh.v_pos))["albedo"]
            params = {
                "vertices": threestudio_to_gan_points(mesh.v_pos).cpu().numpy(),
                "faces": mesh.t_pos_idx.cpu().numpy(),
                "colors": (colors.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(),
            }
            threestudio.info(f"Mesh: {len(params['vertices'])} vertices, {len(params['faces'])} faces")
            outputs += [
                ExporterOutput(f"{self.cfg.save_name}.{fmt}", "trimesh", params)
                for fmt in self.cfg.mesh_formats
            ]
        levels = {r: t.detach() for r, t in self.geometry.levels.items()}
        for fmt in self.cfg.pyramid_formats:
            outputs.append(
                ExporterOutput(
                    PYRAMID_FILES[fmt],
                    "pyramid",
                    {
                        "levels": levels,
                        "ws": self.material.ws,
                        "fmt": fmt,
                        "metadata": {"source": "portrait3d-system export"},
                    },
                )
            )
        return outputs
