"""Import the official 3DPortraitGAN_pyramid renderer at run time, on any device.

Used by ``bench/bench_renderer.py`` (timing against the official renderer), ``bench/gpu_check.py``
and the parity harness ``tests/parity/make_official_fixture.py``. Nothing of the official code is
in this repository: ``import_official(root)`` imports it from a checkout of
``oneThousand1000/Portrait3D``'s ``3DPortraitGAN_pyramid`` folder, stubbing only the SMPL / mesh
dependencies that the render path never calls, and patches the renderer so that it can be made
deterministic (``PATCHES`` lists every change). ``build_models`` builds the reduced backbone and the
render-only ``TriPlaneGenerator`` with the official training keyword arguments.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types

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
    """Import the official modules, stubbing only the SMPL / mesh dependencies."""
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "training", "neural_renderer.py")):
        raise SystemExit(f"{root} does not look like 3DPortraitGAN_pyramid")
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

    mods = types.SimpleNamespace(
        ns2=importlib.import_module("training.networks_stylegan2"),
        nr=importlib.import_module("training.neural_renderer"),
        rend=importlib.import_module("training.volumetric_rendering.renderer"),
        cam=importlib.import_module("camera_utils"),
    )
    _patch_renderer(mods.rend)
    return mods


def _patch_renderer(rend) -> None:
    IR = rend.ImportanceRenderer

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


@contextlib.contextmanager
def cuda_is_identity():
    """neural_renderer.TriPlaneGenerator.__init__ calls .cuda() on avg_c; keep it on CPU."""
    real = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = real


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
