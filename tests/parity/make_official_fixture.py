#!/usr/bin/env python
"""Build the official-side parity fixture for ``gan_prior``.

Usage::

    python tests/parity/make_official_fixture.py \
        --official-root /work/official/3DPortraitGAN_pyramid \
        --out tests/fixtures/official_parity.safetensors

The official 3DPortraitGAN-pyramid modules are *imported* from ``--official-root`` (nothing of
that code lives in this repository). They are built on CPU in a reduced configuration (2-D
backbone resolution 16, so pyramid levels 8/16/32), every float parameter/buffer is overwritten
with ``tests.parity.weights.fill_state_dict(..., seed=0)``, the renderer is made deterministic by
runtime patches, and all intermediate outputs are written to one safetensors file together with a
JSON description (metadata key ``"config"``). See tests/parity/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_BENCH = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "bench")
for _p in (_HERE, _BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from weights import DENSITY_BIAS, fill_state_dict, sr_inputs  # noqa: E402

OFFICIAL_COMMIT = "642aecf"
SEED = 0
BATCH = 2
NUM_POINTS = 500
NRR = 16  # neural rendering resolution of the fixture renders

# The official import, its runtime patches and the model keyword arguments live in
# bench/official.py (the renderer benchmark imports them at run time too).
from official import (  # noqa: E402  (bench/official.py: shared with bench_renderer)
    BACKBONE_KWARGS,
    PATCHES,
    RENDER_GEN_KWARGS,
    RENDERING_KWARGS,
    SYNTHESIS_KWARGS,
    build_models,
    import_official,
)

FOCAL = 6.5104166
PIVOT = (0.0, 0.0649, 0.0)
CAMERAS_HV = [(math.pi / 2, math.pi / 2), (math.pi / 2 + 0.6, math.pi / 2 - 0.3)]
# Camera-label checks: front, sides, back, high / low, and the refinement / video extremes.
CAMERA_GRID_HV = [
    (math.pi / 2, math.pi / 2),
    (0.0, math.pi / 2),
    (math.pi, math.pi / 2),
    (-math.pi / 2, math.pi / 2),
    (math.pi / 2, math.pi / 3),
    (math.pi / 2, 2 * math.pi / 3),
    (1.0, 0.4),
    (2.5, 2.7),
    (2 * math.pi * 3 / 7, math.pi / 2 + 0.05),
    (math.pi / 2 + 0.6, math.pi / 2 - 0.3),
]
SDS_FOV_DEG = 12.447863  # official FOV_to_intrinsics argument (SDS stage, refinement views)
SR_KWARGS = dict(
    channels=32,
    img_resolution=512,
    sr_num_fp16_res=4,
    sr_antialias=True,
    channel_base=18432,
    channel_max=144,
    fused_modconv_default="inference_only",
)
SR_STRIDE = 5  # stored subsample of the 512² SR outputs (odd: covers every upsampling phase)


@contextlib.contextmanager
def capture_interpolate(store: list):
    """Record the outputs of torch.nn.functional.interpolate (the bcg resize) during a call."""
    real = torch.nn.functional.interpolate

    def wrapped(*a, **k):
        out = real(*a, **k)
        store.append((k, out))
        return out

    torch.nn.functional.interpolate = wrapped
    try:
        yield
    finally:
        torch.nn.functional.interpolate = real


# ----------------------------------------------------------------------------------------------


def build_superresolution(mods):
    """The official SR module at full size, filled with ``fill_state_dict`` under the official
    ``superresolution.`` prefix (as it sits in ``G_ema``)."""
    sr_module = importlib.import_module("training.superresolution")  # importable once import_official ran
    sr = sr_module.SuperresolutionHybrid8XDC(**SR_KWARGS).eval().requires_grad_(False)
    sd = sr.state_dict()
    shapes = {f"superresolution.{k}": list(v.shape) for k, v in sd.items()}
    filled = fill_state_dict({f"superresolution.{k}": v for k, v in sd.items()}, seed=SEED)
    sr.load_state_dict({k: filled[f"superresolution.{k}"] for k in sd})
    return sr, shapes


def fill_models(backbone, render):
    """Overwrite every float param/buffer; return {full_key: shape} and the skipped keys."""
    shapes, skipped = {}, []
    for prefix, module in (("backbone.", backbone), ("", render)):
        sd = module.state_dict()
        own = {}
        for k, v in sd.items():
            if not v.is_floating_point():
                skipped.append(f"{prefix}{k} ({v.dtype})")
                continue
            own[k] = v
        filled = fill_state_dict({prefix + k: v for k, v in own.items()}, seed=SEED)
        for k, v in own.items():
            shapes[prefix + k] = list(v.shape)
        missing, unexpected = module.load_state_dict({k: filled[prefix + k] for k in own}, strict=False)
        assert not unexpected and set(missing) <= {k for k in sd if k not in own}, (missing, unexpected)
    return shapes, skipped


def make_inputs(mods):
    g = torch.Generator().manual_seed(SEED)
    z = torch.randn(BATCH, 512, generator=g)
    points = torch.rand(BATCH, NUM_POINTS, 3, generator=g) * 0.9 - 0.45
    ws_mix_noise = torch.randn(1, 6, 512, generator=g)
    ws14_mix_noise = torch.randn(1, 14, 512, generator=g)
    pivot = torch.tensor(PIVOT)
    intr = torch.tensor([[FOCAL, 0, 0.5], [0, FOCAL, 0.5], [0, 0, 1]], dtype=torch.float32)
    cams = []
    for h, v in CAMERAS_HV:
        c2w = mods.cam.LookAtPoseSampler.sample(h, v, pivot, radius=2.7)
        cams.append(torch.cat([c2w.reshape(1, 16), intr.reshape(1, 9)], 1))
    c = torch.cat(cams, 0).float()
    return z, c, points, ws_mix_noise, ws14_mix_noise


def to5d(feature_maps, batch):
    """Official layout: {r: [B*3, 36, 2r, 2r]} -> {r: [B, 3, 36, 2r, 2r]} (as in gen_planes)."""
    return {k: v.view(batch, 3, v.shape[-3], v.shape[-2], v.shape[-1]) for k, v in feature_maps.items()}


def render(render_mod, ws, planes, c, render_bg, capture=None):
    planes = dict(planes)  # render_planes rewrites the dict entries
    torgb_in = []
    hook = render_mod.torgb.register_forward_pre_hook(lambda m, args: torgb_in.append(args[0].clone()))
    bcg_out = []
    hook2 = render_mod.bcg_synthesis.register_forward_hook(lambda m, a, out: bcg_out.append(out.clone()))
    interp = []
    try:
        with capture_interpolate(interp):
            out = render_mod.render_planes(
                ws=ws,
                planes=planes,
                c=c,
                neural_rendering_resolution=NRR,
                render_bg=render_bg,
                noise_mode="const",
            )
    finally:
        hook.remove()
        hook2.remove()
    extra = {"feature_image": torgb_in[0]}
    if render_bg:
        extra["bcg_feature"] = bcg_out[0]
        assert len(interp) == 1
        extra["bcg_resized"] = interp[0][1]
    return out, extra


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-bytes", type=int, default=3584 * 1024)
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_grad_enabled(False)
    mods = import_official(args.official_root)
    backbone, render_mod = build_models(mods)
    shapes, skipped = fill_models(backbone, render_mod)
    t_build = time.time() - t0

    z, c, points, ws_mix_noise, ws14_mix_noise = make_inputs(mods)
    T: dict[str, torch.Tensor] = {"z": z, "c": c, "points": points}
    B = BATCH

    # --- mapping -------------------------------------------------------------------------------
    c31 = torch.cat([c, torch.zeros(B, 6)], 1) * RENDERING_KWARGS["c_scale"]
    ws = backbone.mapping(z, c31, truncation_psi=1)
    T["ws"] = ws
    T["ws_trunc"] = backbone.mapping(z, c31, truncation_psi=0.7)

    # --- backbone synthesis -> pyramid -------------------------------------------------------------
    fmap = backbone.synthesis(ws, noise_mode="const")
    planes = to5d(fmap, B)  # keys are the 2-D block resolutions 4, 8, 16
    level_of_key = {}
    for k, v in planes.items():
        R = v.shape[-1]
        level_of_key[str(k)] = R
        T[f"trigrids_{R}"] = v

    # --- per-point features / decoder --------------------------------------------------------------
    plane_axes = mods.rend.generate_planes()
    feats = mods.rend.sample_from_planes(
        plane_axes,
        dict(planes),
        points,
        padding_mode="zeros",
        box_warp=RENDERING_KWARGS["box_warp"],
        triplane_depth=RENDERING_KWARGS["triplane_depth"],
    )
    T["features"] = feats
    dirs = torch.zeros_like(points)
    dirs[..., -1] = -1
    dec = render_mod.sample_trigrid(points, dirs, dict(planes))  # renderer.run_model -> OSGDecoder
    T["sigma"], T["rgb"] = dec["sigma"], dec["rgb"]
    dec2 = render_mod.decoder(feats, dirs)
    assert torch.equal(dec2["sigma"], dec["sigma"]) and torch.equal(dec2["rgb"], dec["rgb"])

    # --- renders -----------------------------------------------------------------------------
    t1 = time.time()
    out_bg, ex_bg = render(render_mod, ws, planes, c, render_bg=True)
    t_bg = time.time() - t1
    T["image_bg"], T["depth_bg"], T["mask_bg"] = (
        out_bg["image_raw"],
        out_bg["image_depth"],
        out_bg["image_mask"],
    )
    T["feature_image_bg"] = ex_bg["feature_image"]
    T["bcg_resized"] = ex_bg["bcg_resized"]
    bcg = ex_bg["bcg_feature"]
    T["bcg_feature_sub4"] = bcg[0:1, :, ::4, ::4].contiguous()  # [1,32,32,32], rows/cols 0,4,..,124
    T["bcg_feature_crop"] = bcg[0:1, :, 48:80, 48:80].contiguous()  # [1,32,32,32], centre crop
    T["bcg_feature_sum"] = bcg.sum(dim=(2, 3))  # [2,32] per-channel sums

    out_nobg, ex_nobg = render(render_mod, ws, planes, c, render_bg=False)
    T["image_nobg"], T["depth_nobg"], T["mask_nobg"] = (
        out_nobg["image_raw"],
        out_nobg["image_depth"],
        out_nobg["image_mask"],
    )
    T["feature_image_nobg"] = ex_nobg["feature_image"]

    # determinism check: a second identical render must be bit-identical
    out_nobg2, _ = render(render_mod, ws, planes, c, render_bg=False)
    assert torch.equal(out_nobg2["image_raw"], out_nobg["image_raw"]), "renderer is not deterministic"

    # partial pyramid (official sample_from_planes averages over whatever levels the dict holds)
    partial_keys = [k for k in planes if planes[k].shape[-1] in (8, 16)]
    out_p, ex_p = render(render_mod, ws, {k: planes[k] for k in partial_keys}, c, render_bg=False)
    T["image_l8_16"], T["depth_l8_16"], T["mask_l8_16"] = (
        out_p["image_raw"],
        out_p["image_depth"],
        out_p["image_mask"],
    )

    # --- w-routing checks with distinct per-index ws (mapping broadcasts one w to all indices,
    #     so the outputs above cannot detect a wrong w index) --------------------------------------
    ws_mix = ws[0:1] + 0.5 * ws_mix_noise  # [1, 6, 512]
    T["ws_mix"] = ws_mix
    fmap_mix = to5d(backbone.synthesis(ws_mix, noise_mode="const"), 1)
    for k, v in fmap_mix.items():
        T[f"mix_trigrids_{v.shape[-1]}"] = v
    ws14_mix = ws[0:1, :1].repeat(1, 14, 1) + 0.5 * ws14_mix_noise  # [1, 14, 512]
    T["ws14_mix"] = ws14_mix
    planes0 = {k: v[0:1] for k, v in planes.items()}
    out_m, ex_m = render(render_mod, ws14_mix, planes0, c[0:1], render_bg=True)
    T["mix_image_bg"], T["mix_depth_bg"], T["mix_mask_bg"] = (
        out_m["image_raw"],
        out_m["image_depth"],
        out_m["image_mask"],
    )
    T["mix_feature_image_bg"] = ex_m["feature_image"]
    T["mix_bcg_resized"] = ex_m["bcg_resized"]

    # --- camera labels (official LookAtPoseSampler / FOV_to_intrinsics) -------------------------
    pivot = torch.tensor(PIVOT)
    T["cameras_hv"] = torch.tensor(CAMERA_GRID_HV, dtype=torch.float32)
    T["cameras_c2w"] = torch.cat(
        [mods.cam.LookAtPoseSampler.sample(h, v, pivot, radius=2.7).reshape(1, 16) for h, v in CAMERA_GRID_HV]
    )
    T["sds_intrinsics"] = mods.cam.FOV_to_intrinsics(SDS_FOV_DEG).reshape(9)

    # --- superresolution (full size) ---------------------------------------------------------
    t2 = time.time()
    sr, sr_shapes = build_superresolution(mods)
    sr_in = sr_inputs(SEED)
    T["sr_ws"] = sr_in["ws"]
    for r in (128, 256):
        T[f"sr_rgb{r}_head"] = sr_in[f"rgb{r}"][:, :, 0, :8].contiguous()  # detects input drift
        T[f"sr_features{r}_head"] = sr_in[f"features{r}"][:, :, 0, :8].contiguous()
        out = sr(sr_in[f"rgb{r}"], sr_in[f"features{r}"], sr_in["ws"], noise_mode="none")
        assert out.shape == (1, 3, 512, 512), out.shape
        T[f"sr{r}_sub"] = out[:, :, ::SR_STRIDE, ::SR_STRIDE].contiguous()
        T[f"sr{r}_crop"] = out[:, :, 229:293, 229:293].contiguous()
        T[f"sr{r}_sum"] = out.double().sum(dim=(2, 3)).float()
    t_sr = time.time() - t2

    t_total = time.time() - t0

    T = {k: v.detach().to(torch.float32).contiguous() for k, v in T.items()}
    meta = {
        "official_repo": "oneThousand1000/Portrait3D (3DPortraitGAN_pyramid)",
        "official_commit": OFFICIAL_COMMIT,
        "torch_version": torch.__version__,
        "seed": SEED,
        "weight_fill": "tests/parity/weights.py fill_state_dict(shapes, seed=0) keyed by full names",
        "backbone_class": "training.networks_stylegan2.Hierarchy3DAwareGenerator",
        "backbone_kwargs": BACKBONE_KWARGS,
        "synthesis_kwargs": SYNTHESIS_KWARGS,
        "render_class": "training.neural_renderer.TriPlaneGenerator",
        "render_kwargs": RENDER_GEN_KWARGS,
        "rendering_kwargs": RENDERING_KWARGS,
        "num_ws": int(backbone.num_ws),
        "bcg_num_ws": int(render_mod.bcg_synthesis.num_ws),
        "modules_mode": "eval() (fused_modconv 'inference_only' -> fused=True; render_planes' torgb uses fused_modconv=False)",
        "neural_rendering_resolution": NRR,
        "noise_mode": "const",
        "inputs": {
            "z": "torch.Generator().manual_seed(0): randn(2,512), then points = rand(2,500,3)*0.9-0.45, "
            "then ws_mix_noise randn(1,6,512), then ws14_mix_noise randn(1,14,512)",
            "c": "LookAtPoseSampler.sample(h, v, (0,0.0649,0), radius=2.7) for (h,v) in "
            f"{CAMERAS_HV}, + intrinsics [[{FOCAL},0,0.5],[0,{FOCAL},0.5],[0,0,1]] row-major",
            "mapping_c": "cat(c, zeros(2,6)) * c_scale(1)",
        },
        "pyramid_dict_keys_to_size": level_of_key,
        "outputs": {
            "ws": "backbone.mapping(z, cat(c, zeros(2,6)), truncation_psi=1)  [2,num_ws,512]",
            "ws_trunc": "same with truncation_psi=0.7 (cutoff None)",
            "trigrids_R": "backbone.synthesis(ws, noise_mode='const')[r] viewed [B,3,36,2r,2r] (r=4,8,16)",
            "features": "renderer.sample_from_planes(generate_planes(), pyramid, points, box_warp=0.7, "
            "triplane_depth=3): mean over levels, before plane mean  [2,3,500,12]",
            "sigma/rgb": "TriPlaneGenerator.sample_trigrid(points, dirs=(0,0,-1), pyramid) -> run_model -> OSGDecoder",
            "image/depth/mask_bg": "render_planes(ws, pyramid, c, neural_rendering_resolution=16, render_bg=True, noise_mode='const'): image_raw/image_depth/image_mask",
            "image/depth/mask_nobg": "same with render_bg=False",
            "feature_image_bg/nobg": "input of render_mod.torgb (feature image after bcg compositing) [2,32,16,16]",
            "bcg_feature_sub4": "bcg_synthesis output (before resize) sample 0, [:, ::4, ::4] -> [1,32,32,32]",
            "bcg_feature_crop": "bcg_synthesis output sample 0, [:, 48:80, 48:80] -> [1,32,32,32]",
            "bcg_feature_sum": "bcg_synthesis output summed over H,W, both samples [2,32]",
            "bcg_resized": "output of the F.interpolate(bilinear, antialias=True) of the bcg to 16x16 [2,32,16,16]",
            "image/depth/mask_l8_16": "render_planes with only pyramid levels of size 8 and 16 (keys 4, 8), render_bg=False",
            "ws_mix": "ws[0:1] + 0.5*ws_mix_noise (distinct w per index)  [1,num_ws,512]",
            "mix_trigrids_R": "backbone.synthesis(ws_mix, noise_mode='const') [1,3,36,R,R]",
            "ws14_mix": "ws[0:1,0] repeated 14 + 0.5*ws14_mix_noise  [1,14,512]",
            "mix_*_bg": "render_planes(ws14_mix, pyramid sample 0, c[0:1], render_bg=True) (torgb uses ws14_mix[:,13], bcg ws14_mix[:,:12])",
        },
        "bcg_feature_note": "full bcg feature is [2,32,128,128] fp32 = 4 MiB; stored as subsample + crop + sums of sample 0 to keep the file < 3 MiB",
        "patches": PATCHES,
        "skipped_state": skipped
        + [
            "renderer.shaped_smpl / renderer.align_points (float, SMPL) and renderer.face_mask / "
            "renderer.head_face_mask (bool): not constructed (SMPL stubbed)"
        ],
        "official_state_dict_shapes": shapes,
        "superresolution": {
            "class": "training.superresolution.SuperresolutionHybrid8XDC",
            "kwargs": SR_KWARGS,
            "state_dict_shapes": sr_shapes,
            "call": "sr(rgb, features, ws, noise_mode='none') (official superresolution_noise_mode), eval()",
            "inputs": "tests/parity/weights.py sr_inputs(seed=0), regenerated by the test; *_head = [:, :, 0, :8]",
            "outputs": f"sr{{R}}_sub = out[:, :, ::{SR_STRIDE}, ::{SR_STRIDE}], sr{{R}}_crop = out[:, :, 229:293, 229:293], "
            "sr{R}_sum = per-channel sums, for inputs at R = 128 and 256",
        },
        "cameras": {
            "cameras_hv": "(h, v) radians",
            "cameras_c2w": "LookAtPoseSampler.sample(h, v, (0, 0.0649, 0), radius=2.7).reshape(16)",
            "sds_intrinsics": f"FOV_to_intrinsics({SDS_FOV_DEG}).reshape(9)",
        },
        "density_bias": DENSITY_BIAS,
        "timing_s": {
            "build_and_fill": round(t_build, 2),
            "render_bg": round(t_bg, 2),
            "superresolution": round(t_sr, 2),
            "total": round(t_total, 2),
        },
    }
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(T, args.out, metadata={"config": json.dumps(meta)})
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(T)} tensors, {size / 1024:.1f} KiB, total {t_total:.1f}s")
    for k, v in T.items():
        print(f"  {k:24s} {tuple(v.shape)}  absmax={v.abs().max().item():.4g}")
    if size > args.max_bytes:
        print(f"WARNING: fixture is {size} bytes > {args.max_bytes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
