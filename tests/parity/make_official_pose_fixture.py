#!/usr/bin/env python
"""Build the official-side parity fixture of the body pose and the SMPL deformation.

Usage::

    pip install --target /tmp/smplx smplx==0.1.28 --no-deps     # the official environment's smplx
    python tests/parity/make_official_pose_fixture.py \\
        --official-root /work/official/3DPortraitGAN_pyramid --smplx /tmp/smplx \\
        --out tests/fixtures/official_pose_parity.safetensors

Three parts, each run by the official modules imported from ``--official-root`` (nothing of that
code is in this repository), with seeded weights (``tests/parity/weights.py``) and inputs:

1. the generator's pose branch: ``GPoseBranch`` through the official
   ``TriPlaneGenerator.get_pose_params`` (mirror trick);
2. the discriminator's pose path: ``PoseShapeAwareDualDiscriminator.predict_pose`` in a reduced
   configuration (64² images, the released channel rule), batches of 4, 2 and 1;
3. the SMPL mesh-guided deformation: the official ``ImportanceRenderer`` built with its SMPL model
   (real smplx 0.1.28) from the seeded SMPL-like body of ``gan_prior.synthetic_smpl`` written as
   ``SMPL_NEUTRAL.pkl``, kaolin replaced by the exact brute-force stand-in of
   ``bench/official.py``; posed vertices, deformed points, and ``render_planes(...,
   apply_def=True)`` renders of the reduced pyramid of ``make_official_fixture.py``.
See tests/parity/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import tempfile
import time
import types

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_HERE, os.path.join(_ROOT, "bench"), _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from weights import fill_state_dict  # noqa: E402

SEED = 0
FOCAL = 6.5104166
PIVOT = (0.0, 0.0649, 0.0)
# (h, v): two cameras on each side of the mirror line (atan2(c[11], c[3]) = ±π/2), as LookAtPoseSampler
POSE_CAMERAS_HV = [(math.pi / 2 + 0.5, math.pi / 2), (math.pi / 2 - 0.4, math.pi / 2 + 0.2),
                   (math.pi / 2 + 1.2, math.pi / 2 - 0.1), (math.pi / 2 - 1.0, math.pi / 2 - 0.25)]  # fmt: skip
D_RESOLUTION = 64  # reduced discriminator (released: 512)
D_RAW = 16  # image_raw / image_mask side
RENDER_CAMERAS_HV = [(math.pi / 2, math.pi / 2), (math.pi / 2 + 0.6, math.pi / 2 - 0.3)]
NRR = 16
SAMPLES = 24  # depth samples (+ as many importance samples) of the posed renders (released: 48)
# the seeded body: a coarser surface than SMPL's (2448 faces, not 13776, so that the exact float64
# brute-force stand-in and the test stay fast), padded to SMPL's 6890 vertices (smplx's extra joints)
BODY_LAT, BODY_LON, BODY_VERTICES = 36, 34, 6890
DEFORM_POSE = [[0.35, -0.25, 0.15, 0.3, 0.4, -0.2], [-0.3, 0.2, -0.1, -0.25, -0.35, 0.3]]


def cameras(mods, hv):
    intr = torch.tensor([[FOCAL, 0, 0.5], [0, FOCAL, 0.5], [0, 0, 1]], dtype=torch.float32)
    c2w = [mods.cam.LookAtPoseSampler.sample(h, v, torch.tensor(PIVOT), radius=2.7) for h, v in hv]
    return torch.cat([torch.cat([m.reshape(1, 16), intr.reshape(1, 9)], 1) for m in c2w]).float()


def fill(module, prefix=""):
    sd = module.state_dict()
    own = {k: v for k, v in sd.items() if v.is_floating_point()}
    filled = fill_state_dict({prefix + k: v for k, v in own.items()}, seed=SEED)
    module.load_state_dict({k: filled[prefix + k] for k in own}, strict=False)
    return {prefix + k: list(v.shape) for k, v in own.items()}


def write_smpl_dir(root: str, template: dict) -> None:
    """The seeded body as the official code reads SMPL: ``smplx_models/smpl/SMPL_NEUTRAL.pkl`` (smplx's
    layout: posedirs ``[V, 3, 207]``, kintree_table, f, weights) and the 30-joint regressor."""
    v = template["v_template"].numpy()
    os.makedirs(os.path.join(root, "smplx_models", "smpl"))
    os.makedirs(os.path.join(root, "transfer_data"))
    kintree = np.stack([template["parents"].numpy(), np.arange(24)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # as SMPL's file; smplx sets parents[0] = -1
    data = {
        "v_template": v,
        "f": template["faces"].numpy().astype(np.uint32),
        "shapedirs": template["shapedirs"].numpy(),
        "posedirs": template["posedirs"].numpy().T.reshape(v.shape[0], 3, -1),
        "J_regressor": template["J_regressor"].numpy(),
        "weights": template["lbs_weights"].numpy(),
        "kintree_table": kintree,
    }
    with open(os.path.join(root, "smplx_models", "smpl", "SMPL_NEUTRAL.pkl"), "wb") as f:
        pickle.dump(data, f)
    np.save(
        os.path.join(root, "transfer_data", "smpl_joint_regressor.npy"),
        template["smpl_joint_regressor"].numpy(),
    )


def pose_branch_part(mods, T, meta):
    st = __import__("training.smpl_triplane", fromlist=["x"])
    branch = st.GPoseBranch(z_dim=512, c_dim=25).eval()
    meta["g_pose_shapes"] = fill(branch, "pose_branch.")
    gen = torch.Generator().manual_seed(SEED + 1)
    z = torch.randn(4, 512, generator=gen)
    c = cameras(mods, POSE_CAMERAS_HV)
    owner = types.SimpleNamespace(explicitly_symmetry=True, pose_branch=branch)
    owner.flip_yaw = lambda m: st.TriPlaneGenerator.flip_yaw(owner, m)
    T["g_pose_z"], T["pose_c"] = z, c
    T["g_pose"] = st.TriPlaneGenerator.get_pose_params(owner, z, c)


def discriminator_part(mods, T, meta):
    dd = __import__("training.dual_discriminator", fromlist=["x"])
    kwargs = dict(c_dim=25, img_resolution=D_RESOLUTION, img_channels=3, seg_channels=1, channel_base=18432,
                  channel_max=144, num_fp16_res=4, conv_clamp=256, explicitly_symmetry=True,
                  epilogue_kwargs={"mbstd_group_size": 4})  # fmt: skip
    d = dd.PoseShapeAwareDualDiscriminator(**kwargs).eval().requires_grad_(False)
    meta["d_kwargs"] = kwargs
    meta["d_shapes"] = fill(d, "")
    gen = torch.Generator().manual_seed(SEED + 2)
    image = torch.randn(4, 3, D_RESOLUTION, D_RESOLUTION, generator=gen).clamp(-1, 1)
    raw = torch.randn(4, 3, D_RAW, D_RAW, generator=gen).clamp(-1, 1)
    mask = torch.rand(4, 1, D_RAW, D_RAW, generator=gen)
    c = T["pose_c"]
    T["d_image"], T["d_image_raw"], T["d_image_mask"] = image, raw, mask
    for n in (4, 2, 1):
        img = {"image": image[:n], "image_raw": raw[:n], "image_mask": mask[:n]}
        T[f"d_pose_b{n}"] = d.predict_pose(img, c[:n])[0]


def deformation_part(mods, official, T, meta):
    from make_official_fixture import fill_models, to5d

    from gan_prior.synthetic_smpl import smpl_like_template

    template = smpl_like_template(SEED, BODY_LAT, BODY_LON, BODY_VERTICES)
    with tempfile.TemporaryDirectory() as tmp:
        write_smpl_dir(tmp, template)
        renderer = official.build_smpl_renderer(mods, tmp, batch_size=2)
    T["smpl_shaped"] = renderer.shaped_smpl[0].contiguous()
    T["smpl_align_points"] = renderer.align_points[0].contiguous()
    T["smpl_face_mask"] = renderer.face_mask.float()
    for k in ("v_template", "posedirs", "J_regressor", "lbs_weights"):  # drift of the seeded body
        T[f"smpl_{k}_sum"] = template[k].double().sum().float().reshape(1)

    backbone, render_mod = official.build_models(mods)
    fill_models(backbone, render_mod)
    render_mod.rendering_kwargs.update(depth_resolution=SAMPLES, depth_resolution_importance=SAMPLES)
    gen = torch.Generator().manual_seed(SEED + 3)
    z = torch.randn(2, 512, generator=gen)
    c = cameras(mods, RENDER_CAMERAS_HV)
    p = torch.tensor(DEFORM_POSE)
    points = torch.rand(2, 2000, 3, generator=gen) * 0.7 - 0.35
    with torch.no_grad():
        ws = backbone.mapping(z, torch.cat([c, torch.zeros(2, 6)], 1))
        planes = to5d(backbone.synthesis(ws, noise_mode="const"), 2)
        posed = renderer.aligned_SMPL.generate_posed_smpl(
            betas=None, body_pose=p, scale=None, transl=None, align_joint_coordinate=renderer.align_points
        )["vertices"]
        T["deform_z"], T["deform_c"], T["deform_pose"], T["deform_points"] = z, c, p, points
        T["posed_vertices"] = posed.contiguous()[:, ::5].contiguous()
        T["posed_vertices_sum"] = posed.double().sum((1, 2)).float()
        T["deformed_points"] = renderer.get_deformed_coordinate(None, p, points)
        render_mod.renderer = renderer
        for tag, bg in (("bg", True), ("nobg", False)):
            out = render_mod.render_planes(
                ws=ws, planes=dict(planes), c=c, neural_rendering_resolution=NRR, render_bg=bg,
                noise_mode="const", apply_def=True, pose_params=p,
            )  # fmt: skip
            T[f"posed_image_{tag}"], T[f"posed_depth_{tag}"] = out["image_raw"], out["image_depth"]
            T[f"posed_mask_{tag}"] = out["image_mask"]
        canon = render_mod.render_planes(ws=ws, planes=dict(planes), c=c, neural_rendering_resolution=NRR,
                                         render_bg=False, noise_mode="const")  # fmt: skip
        T["canonical_image_nobg"] = canon["image_raw"]
    meta["deformation"] = {
        "body": f"gan_prior.synthetic_smpl.smpl_like_template(0, {BODY_LAT}, {BODY_LON}, {BODY_VERTICES}) "
        "written as SMPL_NEUTRAL.pkl + smpl_joint_regressor.npy",
        "body_args": [BODY_LAT, BODY_LON, BODY_VERTICES],
        "faces": int(template["faces"].shape[0]),
        "samples": SAMPLES,
        "renderer": "ImportanceRenderer(w_dim=512, num_ws=14, batch_size=2, thickness=0.25, box_warp=0.7) with SMPL",
        "pose": DEFORM_POSE,
        "renders": f"render_planes(ws, pyramid, c, neural_rendering_resolution={NRR}, apply_def=True, pose_params=p) "
        f"with depth_resolution = depth_resolution_importance = {SAMPLES}, "
        "pyramid/backbone/decoder/torgb/bcg as make_official_fixture.py (fill_state_dict seed 0), "
        "z = randn(2, 512) of Generator(seed 3), then points = rand(2, 2000, 3)·0.7 − 0.35",
        "posed_vertices": "aligned_SMPL.generate_posed_smpl(body_pose=p, align_joint_coordinate=align_points)[:, ::5]",
        "deformed_points": "renderer.get_deformed_coordinate(None, p, points)",
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-root", required=True)
    ap.add_argument("--smplx", required=True, help="folder holding the smplx 0.1.28 package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-bytes", type=int, default=1024 * 1024)
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.smplx))
    import official  # bench/official.py

    t0 = time.time()
    torch.set_grad_enabled(False)
    mods = official.import_official(args.official_root)
    T: dict[str, torch.Tensor] = {}
    meta: dict = {"official_commit": "642aecf", "torch_version": torch.__version__, "seed": SEED}
    pose_branch_part(mods, T, meta)
    discriminator_part(mods, T, meta)
    deformation_part(mods, official, T, meta)
    meta["patches"] = official.PATCHES
    meta["pose_cameras_hv"], meta["render_cameras_hv"] = POSE_CAMERAS_HV, RENDER_CAMERAS_HV
    meta["nrr"], meta["d_raw"] = NRR, D_RAW
    meta["seconds"] = round(time.time() - t0, 1)

    from safetensors.torch import save_file

    T = {k: v.detach().float().contiguous() for k, v in T.items()}
    save_file(T, args.out, metadata={"config": json.dumps(meta)})
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(T)} tensors, {size / 1024:.1f} KiB, {meta['seconds']} s")
    for k, v in T.items():
        print(f"  {k:24s} {tuple(v.shape)}  absmax={v.abs().max().item():.4g}")
    return 1 if size > args.max_bytes else 0


if __name__ == "__main__":
    sys.exit(main())
