"""Another threestudio exporter with one override, ``system.exporter_type=...`` (e.g. threestudio's
``mesh-exporter``), checked before any work.

Our configs write ``system.exporter`` for ``portrait3d-exporter``, and a command-line override can add
keys but not remove them: :func:`adapt_exporter_config` leaves out the settings only
``portrait3d-exporter`` has (``mesh_formats``, ``pyramid_formats``, ``view_seed``, …), with one line
naming them, and keeps every other key, so that the chosen exporter's own config refuses a misspelt
one. :func:`use_uv_rasterizer_where_stubbed` gives threestudio's ``mesh-exporter`` the rasterizer
context of ``utils/uv_rasterizer.py`` where nvdiffrast is only the import stand-in of
``portrait3d/cpu_stubs`` (CPU machines, a PyPI torch without nvdiffrast), which would raise at the
first triangle.
"""

import dataclasses
import os
from typing import Any, Callable, List, Mapping, Tuple

from omegaconf import DictConfig, OmegaConf

from portrait3d.stand_ins import STUBS_DIR

OUR_EXPORTER = "portrait3d-exporter"  # the exporter our configs' system.exporter is written for


def adapt_exporter_config(
    exporter_type: str, exporter: Mapping, find: Callable[[str], Any]
) -> Tuple[DictConfig, List[str]]:
    """``system.exporter`` for ``exporter_type`` (``find``: threestudio.find) and the line saying
    which of :data:`OUR_EXPORTER`'s settings were left out (none: no line)."""
    cfg = OmegaConf.to_container(OmegaConf.create(exporter), resolve=True) if exporter else {}
    if exporter_type == OUR_EXPORTER:
        return OmegaConf.create(cfg), []
    fields = lambda name: {f.name for f in dataclasses.fields(find(name).Config)}  # noqa: E731
    ours_only = fields(OUR_EXPORTER) - fields(exporter_type)
    dropped = [key for key in cfg if key in ours_only]
    for key in dropped:
        del cfg[key]
    notes = (
        [
            f"system.exporter: {', '.join(dropped)} left out (settings of {OUR_EXPORTER}, which {exporter_type} does not have)"
        ]
        if dropped
        else []
    )
    return OmegaConf.create(cfg), notes


def nvdiffrast_is_stubbed() -> bool:
    """Whether ``import nvdiffrast`` finds the import-only stand-in (portrait3d/stand_ins.py)."""
    import nvdiffrast

    return os.path.abspath(nvdiffrast.__file__).startswith(os.path.abspath(STUBS_DIR) + os.sep)


def use_uv_rasterizer_where_stubbed(exporter: Any, device) -> bool:
    """Give ``exporter`` (threestudio's ``mesh-exporter``: a ``ctx`` from nvdiffrast) our UV
    rasterizer's context when nvdiffrast is the stand-in; True when it did."""
    from threestudio.utils.rasterize import NVDiffRasterizerContext

    from ..utils.uv_rasterizer import UVRasterizerContext

    if not isinstance(getattr(exporter, "ctx", None), NVDiffRasterizerContext) or not nvdiffrast_is_stubbed():
        return False
    exporter.ctx = UVRasterizerContext(device=device)
    return True
