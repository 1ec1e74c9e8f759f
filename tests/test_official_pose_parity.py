"""Numerical parity of the body pose and the SMPL mesh-guided deformation with the official code.

``tests/fixtures/official_pose_parity.safetensors`` holds the official code's outputs
(``tests/parity/make_official_pose_fixture.py``, see tests/parity/README.md): the generator's pose
branch (``get_pose_params``), the discriminator's ``predict_pose`` in a reduced configuration, and
the official renderer with ``apply_def=True`` on the seeded SMPL-like body of
:mod:`gan_prior.synthetic_smpl` (real smplx 0.1.28, kaolin replaced by an exact brute-force
search). Here our modules get the same seeded weights by the official key names and are compared.
"""

import json
import os

import pytest
import torch
from safetensors import safe_open
from weights import fill_state_dict

from gan_prior import PortraitGAN, PortraitGANConfig, RenderConfig, tiny_config
from gan_prior.generator import load_state_into
from gan_prior.pose import PosePredictor, PosePredictorConfig, left_cameras
from gan_prior.synthetic_smpl import fill_deformation, smpl_like_template

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_pose_parity.safetensors")
RTOL = 1e-4  # relative to the largest official value of each tensor (the bound)


@pytest.fixture(scope="module")
def official():
    with safe_open(FIXTURE, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["config"])


def close(ours, theirs, rtol=RTOL):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} × {scale:.3g}"
    return err / scale


def test_fixture_exercises_both_sides_of_the_mirror(official):
    data, _ = official
    left = left_cameras(data["pose_c"])[:, 0]
    assert left.any() and (~left).any()
    assert data["g_pose"].abs().max() > 0.1 and data["d_pose_b4"].abs().max() > 0.1


def test_generator_pose_branch_matches_get_pose_params(official):
    data, meta = official
    g = PortraitGAN(tiny_config(z_dim=512, pose_branch=True))
    own = {k: v for k, v in g.state_dict().items() if k.startswith("pose_branch.")}
    assert {k: list(v.shape) for k, v in own.items()} == meta["g_pose_shapes"]
    g.pose_branch.load_state_dict({k[len("pose_branch.") :]: v for k, v in fill_state_dict(own).items()})
    with torch.no_grad():
        p = g.pose_params(data["g_pose_z"], data["pose_c"])
    close(p, data["g_pose"])
    # the mirror trick matters: without it the left cameras' poses differ
    with torch.no_grad():
        plain = g.pose_branch(data["g_pose_z"], data["pose_c"], symmetric=False)
    assert (plain - data["g_pose"]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def predictor(official):
    _, meta = official
    kw = meta["d_kwargs"]
    cfg = PosePredictorConfig(
        img_resolution=kw["img_resolution"],
        channels={
            2**i: min(kw["channel_base"] // 2**i, kw["channel_max"])
            for i in range(2, kw["img_resolution"].bit_length())
        },
        conv_clamp=kw["conv_clamp"],
        mbstd_group_size=kw["epilogue_kwargs"]["mbstd_group_size"],
        neural_rendering_resolution=meta["d_raw"],
    )
    d = PosePredictor(cfg)
    own = d.state_dict()
    assert set(own) <= set(meta["d_shapes"]) | {k for k in own if k.endswith("resample_filter")}
    for k, v in own.items():
        assert list(v.shape) == meta["d_shapes"][k], k
    d.load_state_dict(fill_state_dict(own))
    return d.eval()


@pytest.mark.parametrize("batch", [4, 2, 1])
def test_pose_predictor_matches_predict_pose(official, predictor, batch):
    data, _ = official
    with torch.no_grad():
        p = predictor(
            data["d_image"][:batch],
            data["d_image_raw"][:batch],
            data["d_image_mask"][:batch],
            data["pose_c"][:batch],
        )
    close(p, data[f"d_pose_b{batch}"])


# ---------------------------------------------------------------------------- the deformation
@pytest.fixture(scope="module")
def posed_model(official):
    data, meta = official
    body = meta["deformation"]
    samples = body["samples"]
    cfg = PortraitGANConfig(
        synthesis_resolution=16,
        smpl_vertices=body["body_args"][2],
        smpl_faces=body["faces"],
        render=RenderConfig(depth_resolution=samples, depth_resolution_importance=samples),
    )
    g = PortraitGAN(cfg)
    state = {k: v for k, v in g.state_dict().items() if not k.startswith("renderer.")}
    filled = fill_state_dict(state, seed=meta["seed"])
    template = smpl_like_template(meta["seed"], *body["body_args"])
    for k in ("v_template", "posedirs", "J_regressor", "lbs_weights"):  # the seeded body has not drifted
        assert template[k].double().sum().float().item() == pytest.approx(
            data[f"smpl_{k}_sum"].item(), rel=1e-6
        )
    fill_deformation(g.renderer, template, cfg.render.box_warp)
    load_state_into(
        g, {**filled, **{k: v for k, v in g.state_dict().items() if k.startswith("renderer.")}}, "parity"
    )
    return g.eval()


def test_smpl_buffers_are_the_official_renderers(official, posed_model):
    data, _ = official
    r = posed_model.renderer
    close(r.shaped_smpl[0], data["smpl_shaped"], 1e-6)
    close(r.align_points[0], data["smpl_align_points"], 1e-6)
    assert torch.equal(r.face_mask.float(), data["smpl_face_mask"])
    assert 0 < int(r.face_mask.sum()) < r.face_mask.numel()  # the box crops the body


def test_posed_vertices_match_generate_posed_smpl(official, posed_model):
    data, _ = official
    with torch.no_grad():
        posed = posed_model.renderer.posed_vertices(data["deform_pose"])
    close(posed[:, ::5], data["posed_vertices"])
    close(posed.double().sum((1, 2)).float(), data["posed_vertices_sum"])


def test_deformed_points_match_get_deformed_coordinate(official, posed_model):
    data, _ = official
    with torch.no_grad():
        out = posed_model.renderer.warp_for(data["deform_pose"])(data["deform_points"])
    moved = (data["deformed_points"] - data["deform_points"]).norm(dim=-1)
    assert (moved > 1e-3).float().mean() > 0.3 and (moved == 0).any()  # near points move, far ones stay
    close(out, data["deformed_points"])


@pytest.mark.parametrize("tag", ["bg", "nobg"])
def test_posed_render_matches_apply_def(official, posed_model, tag):
    data, meta = official
    g = posed_model
    with torch.no_grad():
        ws = g.mapping(data["deform_z"], data["deform_c"])
        pyramid = g.synthesize_pyramid(ws)
        out = g.render(
            pyramid, ws, data["deform_c"], resolution=meta["nrr"], deterministic=True,
            background=tag == "bg", pose=data["deform_pose"],
        )  # fmt: skip
    close(out["image"], data[f"posed_image_{tag}"])
    close(out["mask"], data[f"posed_mask_{tag}"])
    close(out["depth"], data[f"posed_depth_{tag}"])
    # the pose changes the image (a canonical render is far from the posed one)
    assert (data[f"posed_image_{tag}"] - data["canonical_image_nobg"]).abs().max() > 0.05
