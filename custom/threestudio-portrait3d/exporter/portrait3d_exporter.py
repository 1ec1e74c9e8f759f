"""``portrait3d-exporter``: what ``launch.py --export`` writes for a portrait.

- a textured mesh (:mod:`gan_prior.mesh_export`): marching cubes on the raw density σ
  (``system.geometry.isosurface_threshold``, official level 15, and ``isosurface_resolution``),
  the largest component with outward normals and at most ``max_faces`` faces, a UV atlas
  (xatlas) and a ``texture_size²`` texture of what the neural renderer shows at each surface point,
  checked against neural renders from the 21 refinement cameras (``mesh_fidelity.json``). Written
  as ``portrait.glb`` (glTF 2.0, PNG base colour embedded), ``portrait.obj`` + ``.mtl`` +
  ``portrait_albedo.png``, and ``portrait.ply`` (vertex colours) on request. Vertices are in the
  GAN's world, which is glTF's convention: +y up, the face looking down +z, units of the
  tri-grid box (side 0.7) centred at the origin — the frame of the official ``shape.mrc`` — so
  viewers show the bust upright and facing you. Runs on the CPU or a GPU (no nvdiffrast);
- the pyramid tri-grid and its ``ws``, in our safetensors format (``pyramid.safetensors``) and in
  the official gallery / ``epoch_*.pth`` format (``pyramid_trigrid.pth``), readable by
  ``gan_prior.load_pyramid`` and by the official visualiser.
The system saves them (``save_portrait_mesh`` / ``save_pyramid``) under ``save/it{step}-export/``.
"""

import os
from dataclasses import dataclass, field, fields

import threestudio
import torch
from threestudio.models.exporters.base import Exporter, ExporterOutput
from threestudio.utils.typing import *
from tqdm import tqdm

from gan_prior.mesh_export import MeshExportConfig, check_config, export_mesh
from gan_prior.mesh_files import FORMATS as MESH_FORMATS

PYRAMID_FILES = {"ours": "pyramid.safetensors", "official": "pyramid_trigrid.pth"}


def mesh_config(cfg: "Portrait3DExporter.Config") -> MeshExportConfig:
    """The :class:`MeshExportConfig` part of ``system.exporter``."""
    values = {f.name: getattr(cfg, f.name) for f in fields(MeshExportConfig)}
    for name in ("view_samples", "ray_samples"):
        values[name] = tuple(values[name])
    return MeshExportConfig(**values)


def check_exporter_config(cfg: "Portrait3DExporter.Config") -> None:
    """One line for a bad ``system.exporter`` option (also checked when a training run starts)."""
    name = cfg.save_name
    if name in ("", ".", "..") or os.path.basename(name) != name or "\\" in name or not name.isprintable():
        raise ValueError(
            f"system.exporter.save_name={name!r}: give a file name without folders (the export's files "
            "go to the trial's save/it<step>-export/)"
        )
    if not cfg.mesh_formats and not cfg.pyramid_formats:
        raise ValueError(
            "system.exporter.mesh_formats and system.exporter.pyramid_formats are both empty: nothing "
            "would be exported; give e.g. mesh_formats=[glb]"
        )
    for fmt in cfg.mesh_formats:
        if fmt not in MESH_FORMATS:
            raise ValueError(
                f"system.exporter.mesh_formats: unknown format {fmt!r}; use {list(MESH_FORMATS)}"
            )
    for fmt in cfg.pyramid_formats:
        if fmt not in PYRAMID_FILES:
            raise ValueError(
                f"system.exporter.pyramid_formats: unknown format {fmt!r}; use {list(PYRAMID_FILES)}"
            )
    check_config(mesh_config(cfg))


@threestudio.register("portrait3d-exporter")
class Portrait3DExporter(Exporter):
    @dataclass
    class Config(Exporter.Config, MeshExportConfig):
        save_name: str = "portrait"
        mesh_formats: List[str] = field(default_factory=lambda: ["glb", "obj"])  # and "ply": vertex colours
        pyramid_formats: List[str] = field(default_factory=lambda: ["ours", "official"])

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        check_exporter_config(self.cfg)

    @torch.no_grad()
    def __call__(self) -> List[ExporterOutput]:
        outputs = []
        if self.cfg.mesh_formats:
            vertices, faces = self.geometry.gan_isosurface()
            mesh = export_mesh(
                vertices,
                faces,
                self.geometry.gan_field(),
                lambda feats: self.material(features=feats),
                mesh_config(self.cfg),
                render=self.geometry.crop,
                device=self.geometry.decoder.net[0].weight.device,
                log=threestudio.info,
                warn=threestudio.warn,
                progress=tqdm,
            )
            outputs.append(
                ExporterOutput(
                    self.cfg.save_name,
                    "portrait_mesh",
                    {"mesh": mesh, "formats": list(self.cfg.mesh_formats)},
                )
            )
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
