"""Import-only stand-in for ``nvdiffrast.torch`` on CPU-only machines.

nvdiffrast is git-only and needs CUDA/OpenGL. threestudio imports it from
``threestudio/utils/rasterize.py`` (pulled in by the mesh exporter) and the
nvdiff rasterizer.  ``MeshExporter.configure()`` always builds a rasterizer
context, so the context classes must be constructible; every actual
rasterization op raises.  ``fmt=obj, save_uv=false`` export works without it.
"""

from typing import Any, NoReturn

__all__ = [
    "RasterizeCudaContext",
    "RasterizeGLContext",
    "rasterize",
    "interpolate",
    "texture",
    "antialias",
]


class _Ctx:
    """Dummy rasterizer context: constructible, does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


RasterizeCudaContext = RasterizeGLContext = _Ctx


def _unavailable(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError("nvdiffrast stub: rasterization is not available on CPU")


rasterize = interpolate = texture = antialias = _unavailable
