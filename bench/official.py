"""Import the official 3DPortraitGAN_pyramid renderer at run time, on any device.

Used by ``bench/bench_renderer.py`` (timing against the official renderer), ``bench/gpu_check.py``
and the parity harness ``tests/parity/make_official_fixture.py``. Nothing of the official code is
in this repository: ``import_official(root)`` imports it from a checkout of
``oneThousand1000/Portrait3D``'s ``3DPortraitGAN_pyramid`` folder, stubbing only the SMPL / mesh
dependencies that the render path never calls, makes its custom CUDA ops (``bias_act``,
``upfirdn2d``, ``filtered_lrelu``) take their reference PyTorch implementation (the plugins would be
compiled at first use, with nvcc and ninja, which a GPU machine may lack; the reference is what
they compute), and patches the renderer so that it can be made deterministic (``PATCHES`` lists
every change). :func:`make_deterministic` and :func:`restore` switch between the patched samplers
and the official ones (stratified jitter, random inverse CDF: the training behaviour).
``build_models`` builds the reduced backbone and the render-only ``TriPlaneGenerator`` with the
official training keyword arguments.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Optional

import torch

# Keyword arguments the official training passes to the generator's synthesis networks
# (train.py: fused_modconv_default='inference_only', g_num_fp16_res=0 -> conv_clamp=None,
# --cbase 18432 --cmax 144, which the Hierarchy3DAware backbone ignores).
SYNTHESIS_KWARGS = dict(
    channel_base=18432,
    channel_max=144,
    fused_modconv_default="inference_only",
    num_fp16_res=0,
    conv_clamp=None,
)
BACKBONE_KWARGS = dict(
    z_dim=512,
    c_dim=31,
    w_dim=512,
    img_resolution=16,
    img_channels=108,
    mapping_kwargs={"num_layers": 2},
    roll_out=None,
)
RENDERING_KWARGS = dict(
    box_warp=0.7,
    ray_start=2.35,
    ray_end=3.12,
    depth_resolution=48,
    depth_resolution_importance=48,
    clamp_mode="softplus",
    disparity_space_sampling=False,
    white_back=False,
    density_noise=0.0,
    triplane_depth=3,
    decoder_activation="none",
    use_torgb_raw=True,
    use_background=True,
    sr_antialias=True,
    c_gen_conditioning_zero=False,
    c_scale=1.0,
    avg_camera_radius=2.7,
    avg_camera_pivot=[0, 0.0649, 0],
    # not read by the render-only generator, recorded for completeness (train.py values)
    decoder_lr_mul=1,
    superresolution_module="training.superresolution.SuperresolutionHybrid8XDC",
    image_resolution=512,
)
RENDER_GEN_KWARGS = dict(
    z_dim=512,
    c_dim=25,
    w_dim=512,
    img_resolution=512,
    img_channels=3,
    sr_num_fp16_res=4,
    mapping_kwargs={"num_layers": 2},
    sr_kwargs={"channel_base": 18432, "channel_max": 144, "fused_modconv_default": "inference_only"},
    batch_size=1,
    explicitly_symmetry=True,
    thickness=0.25,
)
PATCHES: list[str] = []
# ImportanceRenderer's samplers: {"official": (sample_stratified, sample_pdf), "deterministic": (...)}
_SAMPLERS: dict[str, tuple] = {}
_IMPORTED: dict[str, types.SimpleNamespace] = {}


DEFAULT_ROOT = "/work/official/3DPortraitGAN_pyramid"  # where this project's machines keep it


def find_root(explicit: Optional[str] = None) -> Optional[str]:
    """The 3DPortraitGAN_pyramid folder to import: ``explicit`` (an error if it is not one), else
    ``$PORTRAIT3D_OFFICIAL_ROOT``, else :data:`DEFAULT_ROOT` if it exists, else None."""
    root = explicit or os.environ.get("PORTRAIT3D_OFFICIAL_ROOT")
    if root:
        if not os.path.isfile(os.path.join(root, "training", "neural_renderer.py")):
            raise SystemExit(f"--official-root {root}: not a 3DPortraitGAN_pyramid checkout")
        return os.path.abspath(root)
    if os.path.isfile(os.path.join(DEFAULT_ROOT, "training", "neural_renderer.py")):
        return DEFAULT_ROOT
    return None


# ----------------------------------------------------------------------------------------------
# Importing the official code on a CPU-only machine


def _stub_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__file__ = f"<parity stub {name}>"
    sys.modules[name] = mod
    return mod


def _unavailable(*_a, **_k):
    raise RuntimeError("SMPL / kaolin functionality is stubbed out in the parity harness")


def import_official(root: str):
    """Import the official modules, stubbing only the SMPL / mesh dependencies (once per process:
    a second call returns the same modules, patched once)."""
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "training", "neural_renderer.py")):
        raise SystemExit(f"{root} does not look like 3DPortraitGAN_pyramid")
    if root in _IMPORTED:
        return _IMPORTED[root]
    sys.path.insert(0, root)

    # renderer.py imports these at module scope; they are only used by the SMPL deformation path
    # (apply_def=True), which the fixture never takes.
    for name in ("smplx", "trimesh"):
        if importlib.util.find_spec(name) is None:
            _stub_module(name, create=_unavailable)
            PATCHES.append(f"stub module '{name}' (not installed; only used for SMPL)")
    if importlib.util.find_spec("kaolin") is None:
        _stub_module("kaolin")
        _stub_module("kaolin.ops")
        _stub_module("kaolin.ops.mesh", index_vertices_by_faces=_unavailable)
        _stub_module("kaolin.metrics")
        _stub_module("kaolin.metrics.trianglemesh", point_to_mesh_distance=_unavailable)
        PATCHES.append("stub module 'kaolin' (+ops.mesh, metrics.trianglemesh; only SMPL deformation)")
    importlib.import_module("training")
    # training/aligned_smpl.py needs pyrender, the SMPL model files and CUDA.
    _stub_module("training.aligned_smpl", AlignedSMPL=_unavailable)
    PATCHES.append("stub module 'training.aligned_smpl' (pyrender + SMPL files + CUDA)")

    _reference_ops()
    mods = types.SimpleNamespace(
        ns2=importlib.import_module("training.networks_stylegan2"),
        nr=importlib.import_module("training.neural_renderer"),
        rend=importlib.import_module("training.volumetric_rendering.renderer"),
        cam=importlib.import_module("camera_utils"),
    )
    _patch_renderer(mods.rend)
    _IMPORTED[root] = mods
    return mods


def _reference_ops() -> None:
    """The official custom ops choose their CUDA plugin when ``_init()`` builds it; with ``_init``
    returning False they run their reference implementation (``impl='ref'``) on every device."""
    for name in ("bias_act", "upfirdn2d", "filtered_lrelu"):
        module = importlib.import_module(f"torch_utils.ops.{name}")
        module._init = lambda: False
        PATCHES.append(
            f"torch_utils.ops.{name}._init -> False: the reference implementation, no CUDA plugin build"
        )


def _patch_renderer(rend) -> None:
    IR = rend.ImportanceRenderer
    IR.official_init = IR.__init__  # kept for build_smpl_renderer (apply_def=True)

    # 1. Constructor without SMPL: keep every attribute the rendering path reads, drop the SMPL
    #    model and its buffers (shaped_smpl, align_points, face_mask, head_face_mask).
    def init_without_smpl(self, w_dim, num_ws, batch_size, thickness, box_warp):
        torch.nn.Module.__init__(self)
        self.ray_marcher = rend.MipRayMarcher2()
        self.plane_axes = rend.generate_planes()
        self.batch_size = batch_size
        self.num_betas = 10
        self.thickness = thickness
        self.back_head_depth = None

    IR.__init__ = init_without_smpl
    PATCHES.append(
        "ImportanceRenderer.__init__ replaced: builds ray_marcher (MipRayMarcher2) and plane_axes "
        "(generate_planes) only; SMPL model + buffers shaped_smpl/align_points/face_mask/"
        "head_face_mask are not created (only used with apply_def=True)"
    )

    # 2. No jitter on the stratified depths: run the official sample_stratified with
    #    torch.rand_like temporarily returning zeros -> depths == linspace(ray_start, ray_end, N).
    orig_stratified = IR.sample_stratified

    def sample_stratified_nojitter(self, *args, **kwargs):
        real_rand_like = torch.rand_like
        torch.rand_like = torch.zeros_like
        try:
            return orig_stratified(self, *args, **kwargs)
        finally:
            torch.rand_like = real_rand_like

    IR.sample_stratified = sample_stratified_nojitter
    PATCHES.append(
        "ImportanceRenderer.sample_stratified wrapped: torch.rand_like -> torch.zeros_like during "
        "the call, so coarse depths are exactly linspace(ray_start, ray_end, depth_resolution)"
    )

    # 3. Deterministic inverse-CDF importance sampling: force the official det=True branch
    #    (u = linspace(0, 1, N_importance)).
    orig_pdf = IR.sample_pdf

    def sample_pdf_det(self, bins, weights, N_importance, det=False, eps=1e-5):
        return orig_pdf(self, bins, weights, N_importance, det=True, eps=eps)

    IR.sample_pdf = sample_pdf_det
    PATCHES.append("ImportanceRenderer.sample_pdf wrapped: det=True forced (u = linspace(0, 1, N))")
    _SAMPLERS["official"] = (orig_stratified, orig_pdf)
    _SAMPLERS["deterministic"] = (IR.sample_stratified, IR.sample_pdf)


def restore(mods) -> None:
    """The official samplers back: stratified jitter and random inverse-CDF samples, as in training."""
    ir = mods.rend.ImportanceRenderer
    ir.sample_stratified, ir.sample_pdf = _SAMPLERS["official"]


def make_deterministic(mods) -> None:
    """The patched samplers (linspace depths, ``det=True``), as after :func:`import_official`."""
    ir = mods.rend.ImportanceRenderer
    ir.sample_stratified, ir.sample_pdf = _SAMPLERS["deterministic"]


@contextlib.contextmanager
def cuda_is_identity():
    """``.cuda()`` on tensors and modules is the identity: neural_renderer.TriPlaneGenerator.__init__
    calls it on avg_c, the official SMPL set-up on its buffers and model; keep them on the CPU."""
    real_t, real_m = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = real_t, real_m


def build_models(mods):
    backbone = mods.ns2.Hierarchy3DAwareGenerator(**BACKBONE_KWARGS, **SYNTHESIS_KWARGS)
    with cuda_is_identity():
        render = mods.nr.TriPlaneGenerator(
            **RENDER_GEN_KWARGS, rendering_kwargs=dict(RENDERING_KWARGS), **SYNTHESIS_KWARGS
        )
    PATCHES.append(
        "torch.Tensor.cuda -> identity while constructing neural_renderer.TriPlaneGenerator (avg_c)"
    )
    backbone.eval().requires_grad_(False)
    render.eval().requires_grad_(False)
    return backbone, render


# ----------------------------------------------------------------------------------------------
# The SMPL mesh-guided deformation (apply_def=True) on a CPU, without kaolin and the SMPL files


TIE_RTOL, TIE_ATOL = (
    1e-5,
    1e-12,
)  # as gan_prior.mesh_distance (restated: the stand-in imports nothing of ours)


def brute_force_point_to_mesh_distance(pointclouds, face_vertices, chunk=256):
    """Exact stand-in for ``kaolin.metrics.trianglemesh.point_to_mesh_distance``: for points
    ``[B, P, 3]`` and triangles ``[B, F, 3, 3]``, ``(squared distance [B, P], face index [B, P],
    distance type [B, P])`` over every face, in float64. Where the point's projection on the
    triangle's plane falls inside the triangle (barycentric coordinates ≥ 0), the distance to the
    plane; else the smallest distance to its three edges (segments). Every dot product with a face
    quantity is one matrix product. The nearest face: the smallest index among those within a
    relative ``TIE_RTOL`` of the smallest distance; the type is not used by the official code (0)."""
    dists, index = [], []
    for b in range(pointclouds.shape[0]):
        tri = face_vertices[b].double()
        v0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        n = torch.linalg.cross(e1, e2, dim=-1)
        a11, a12, a22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
        det = (a11 * a22 - a12 * a12).clamp_min(1e-300)
        nn2 = (n * n).sum(-1).clamp_min(1e-300)
        edges = [(tri[:, 0], tri[:, 1]), (tri[:, 1], tri[:, 2]), (tri[:, 2], tri[:, 0])]
        out_d, out_i = [], []
        for i in range(0, pointclouds.shape[1], chunk):
            p = pointclouds[b, i : i + chunk].double()
            pp = (p * p).sum(-1, keepdim=True)
            r1 = p @ e1.T - (v0 * e1).sum(-1)  # (p − v0)·e1
            r2 = p @ e2.T - (v0 * e2).sum(-1)
            u = (a22 * r1 - a12 * r2) / det  # barycentric coordinates of the projection
            v = (a11 * r2 - a12 * r1) / det
            inside = (u >= 0) & (v >= 0) & (u + v <= 1)
            plane = (p @ n.T - (v0 * n).sum(-1)).square() / nn2
            best_edge = None
            for a, c in edges:
                d = c - a
                dd = (d * d).sum(-1).clamp_min(1e-300)
                pa = pp - 2 * p @ a.T + (a * a).sum(-1)  # |p − a|²
                proj = p @ d.T - (a * d).sum(-1)  # (p − a)·d
                t = (proj / dd).clamp(0, 1)
                e = (pa - 2 * t * proj + t * t * dd).clamp_min(0)
                best_edge = e if best_edge is None else torch.minimum(best_edge, e)
            d2 = torch.where(inside, plane, best_edge)
            best = d2.min(1).values
            # ties (a nearest vertex or edge shared by faces): the smallest index within a relative
            # TIE_RTOL, the rule gan_prior.mesh_distance states (kaolin's own pick has no exact meaning)
            tied = d2 <= best[:, None] * (1 + TIE_RTOL) + TIE_ATOL
            faces = torch.arange(d2.shape[1]).expand_as(d2)
            out_d.append(best)
            out_i.append(torch.where(tied, faces, d2.shape[1]).min(1).values)
        dists.append(torch.cat(out_d))
        index.append(torch.cat(out_i))
    d = torch.stack(dists).to(pointclouds.dtype)
    return d, torch.stack(index), torch.zeros_like(torch.stack(index), dtype=torch.int32)


def index_vertices_by_faces(vertices_features, faces):
    """``kaolin.ops.mesh.index_vertices_by_faces``: ``[B, V, D]`` by ``[F, 3]`` → ``[B, F, 3, D]``."""
    return vertices_features[:, faces]


def build_smpl_renderer(mods, smpl_dir: str, batch_size: int, thickness: float = 0.25, box_warp: float = 0.7):
    """The official ``ImportanceRenderer`` with its SMPL model (``apply_def=True`` works), on the CPU.

    Needs the real ``smplx`` package (0.1.28, as the official environment pins: ``pip install
    --target DIR smplx==0.1.28 --no-deps`` and DIR on ``sys.path`` before :func:`import_official`).
    ``smpl_dir`` holds ``smplx_models/smpl/SMPL_NEUTRAL.pkl`` and
    ``transfer_data/smpl_joint_regressor.npy`` (the official code reads both relative to the
    working directory). kaolin's two functions are replaced by :func:`index_vertices_by_faces` and
    the exact :func:`brute_force_point_to_mesh_distance`; pyrender (mesh previews only) is stubbed.
    """
    rend = mods.rend
    if getattr(rend.smplx, "__file__", "").startswith("<parity stub"):
        raise SystemExit(
            "build_smpl_renderer needs the smplx package (pip install --target DIR smplx==0.1.28)"
        )
    if "pyrender" not in sys.modules and importlib.util.find_spec("pyrender") is None:
        _stub_module("pyrender")
    sys.modules.pop("training.aligned_smpl", None)
    aligned = importlib.import_module("training.aligned_smpl")
    rend.AlignedSMPL = aligned.AlignedSMPL
    rend.index_vertices_by_faces = index_vertices_by_faces
    rend.point_to_mesh_distance = brute_force_point_to_mesh_distance
    PATCHES.append(
        "deformation: the real training.aligned_smpl (pyrender stubbed) and smplx; kaolin's "
        "index_vertices_by_faces / point_to_mesh_distance replaced by exact brute-force stand-ins "
        "(bench/official.py); .cuda() is the identity during construction"
    )
    cwd = os.getcwd()
    os.chdir(smpl_dir)
    try:
        with cuda_is_identity():
            renderer = rend.ImportanceRenderer.__new__(rend.ImportanceRenderer)
            rend.ImportanceRenderer.official_init(renderer, 512, 14, batch_size, thickness, box_warp)
    finally:
        os.chdir(cwd)
    return renderer.eval()
