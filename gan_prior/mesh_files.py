"""The mesh files of an export, written atomically (:func:`gan_prior.files.atomic_path`):

- ``<name>.glb``: binary glTF 2.0 — positions, normals, UVs and the texture embedded as PNG in a
  ``baseColorTexture`` (metallic 0, roughness 1: a plain base colour, the same lit or unlit);
  without a texture, vertex colours (``COLOR_0``). glTF reads a base-colour texture as sRGB but
  ``COLOR_0`` as linear: the colours (sRGB, as rendered) are converted for it, or viewers would
  show them brighter and paler than the texture; their material is matte too (glTF's default
  material is fully metallic);
- ``<name>.obj`` + ``<name>.mtl`` + ``<name>_albedo.png`` (``map_Kd``, ``Kd 1 1 1`` so that
  importers that multiply the two keep the texture's colours); without a texture, the vertex
  colours after each ``v`` line (read by Blender, MeshLab and trimesh);
- ``<name>.ply``: the vertex colours.

Coordinates are the GAN world's, which is glTF's: +y up, the face looking down +z, units of the
tri-grid box (side 0.7, centred at the origin). glTF UVs have v down, OBJ's v up: trimesh, which
writes both, takes OpenGL's (v up), so UVs are handed to it flipped.
"""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np

from .files import atomic_path
from .mesh_export import ExportedMesh

FORMATS = ("glb", "obj", "ply")


def srgb_to_linear(colours: np.ndarray) -> np.ndarray:
    """uint8 sRGB → uint8 linear (the sRGB transfer function, IEC 61966-2-1)."""
    c = colours.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.round(linear * 255.0).astype(np.uint8)


def _trimesh(mesh: ExportedMesh, name: str, textured: bool, linear: bool = False):
    import trimesh
    from PIL import Image

    if textured and mesh.texture is not None:
        vmap = mesh.uv_vertex_map
        material = trimesh.visual.material.PBRMaterial(
            name=f"{name}_albedo",
            baseColorTexture=Image.fromarray(mesh.texture),
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        uv = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], -1)  # trimesh takes v up
        return trimesh.Trimesh(
            mesh.vertices[vmap],
            mesh.uv_faces,
            vertex_normals=mesh.normals[vmap],
            visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
            process=False,
        )
    rgb = srgb_to_linear(mesh.colours) if linear else mesh.colours
    colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(
        mesh.vertices, mesh.faces, vertex_normals=mesh.normals, vertex_colors=colours, process=False
    )


def _matte_vertex_colours(glb: bytes) -> bytes:
    """Give the primitives without a material a plain matte one (metallic 0, roughness 1): glTF's
    default material is fully metallic, which most viewers draw dark."""
    length = struct.unpack("<I", glb[12:16])[0]
    gltf = json.loads(glb[20 : 20 + length])
    primitives = [p for m in gltf.get("meshes", []) for p in m["primitives"] if "material" not in p]
    if not primitives:
        return glb
    materials = gltf.setdefault("materials", [])
    materials.append(
        {"name": "vertex_colours", "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}}
    )
    for p in primitives:
        p["material"] = len(materials) - 1
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned, JSON padded with spaces
    rest = glb[20 + length :]
    total = 12 + 8 + len(text) + len(rest)
    return struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text + rest


def _write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path, os.path.splitext(path)[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def mtl_text(name: str) -> str:
    return (
        "# portrait3d: a plain base colour (glTF: metallic 0, roughness 1)\n"
        f"newmtl {name}_albedo\n"
        "Ka 0.000000 0.000000 0.000000\nKd 1.000000 1.000000 1.000000\nKs 0.000000 0.000000 0.000000\n"
        f"Ns 0.000000\nillum 1\nmap_Kd {name}_albedo.png\n"
    )


def write_mesh(folder: str, name: str, mesh: ExportedMesh, formats=("glb", "obj")) -> list[str]:
    """Write ``formats`` of ``mesh`` into ``folder`` as ``name.*``; returns the paths written."""
    import trimesh

    written = []
    textured = mesh.texture is not None
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown mesh format {fmt!r}; use {list(FORMATS)}")
        path = os.path.join(folder, f"{name}.{fmt}")
        if fmt == "glb":
            glb = _trimesh(mesh, name, textured, linear=True).export(file_type="glb", include_normals=True)
            _write_bytes(path, glb if textured else _matte_vertex_colours(glb))
        elif fmt == "ply":
            _write_bytes(path, _trimesh(mesh, name, False).export(file_type="ply"))
        elif textured:
            text = trimesh.exchange.obj.export_obj(
                _trimesh(mesh, name, True),
                include_normals=True,
                include_texture=True,
                mtl_name=f"{name}.mtl",
                return_texture=True,
            )[0]
            png = io.BytesIO()
            from PIL import Image

            Image.fromarray(mesh.texture).save(png, format="png")
            _write_bytes(os.path.join(folder, f"{name}_albedo.png"), png.getvalue())
            _write_bytes(os.path.join(folder, f"{name}.mtl"), mtl_text(name).encode())
            written += [os.path.join(folder, f"{name}_albedo.png"), os.path.join(folder, f"{name}.mtl")]
            _write_bytes(path, text.encode())
        else:
            text = trimesh.exchange.obj.export_obj(
                _trimesh(mesh, name, False), include_normals=True, include_color=True
            )
            _write_bytes(path, text.encode())
        written.append(path)
    return written
