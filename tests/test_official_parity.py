"""Numerical parity with the official 3DPortraitGAN▲ code.

The fixture holds the official code's outputs for a reduced configuration of the same
architecture (2D branch at 16 → pyramid levels 8, 16, 32; real mapping, decoder, ToRGB and
background), the full-size superresolution module, and official camera labels, with every weight
set by ``tests/parity/weights.py`` (realistic magnitudes: ws std ≈ 1, renders mostly opaque). It
was made by ``tests/parity/make_official_fixture.py`` (see tests/parity/README.md); no official
code is in this repository. Here we fill *our* model with the same weights, by the same official
key names, and compare every stage.
"""

import json
import os

import pytest
import torch
from safetensors import safe_open
from weights import fill_state_dict, sr_inputs

from gan_prior import PortraitGAN, PortraitGANConfig, RenderConfig, sample_pyramid
from gan_prior.camera import SDS_FOCAL, camera_label, lookat_pose
from gan_prior.generator import load_state_into

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_parity.safetensors")
# Relative to the largest official value of each tensor. Measured float32 differences: ≤ 1.7e-6
# (background synthesis), ≤ 1.4e-6 (pyramid levels), ≤ 6e-7 (renders), ≤ 7e-7 (superresolution).
RTOL = 1e-5


@pytest.fixture(scope="module")
def official():
    with safe_open(FIXTURE, "pt") as f:
        data = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["config"])
    return data, meta


@pytest.fixture(scope="module")
def model(official):
    _, meta = official
    rk = meta["rendering_kwargs"]
    cfg = PortraitGANConfig(
        synthesis_resolution=meta["backbone_kwargs"]["img_resolution"],
        render=RenderConfig(
            ray_start=rk["ray_start"],
            ray_end=rk["ray_end"],
            depth_resolution=rk["depth_resolution"],
            depth_resolution_importance=rk["depth_resolution_importance"],
            box_warp=rk["box_warp"],
        ),
    )
    g = PortraitGAN(cfg)  # with the full-size superresolution (128 → 512), as model_512
    load_state_into(g, fill_state_dict(g.state_dict(), seed=meta["seed"]), "parity weights")
    return g.eval()


def close(ours, theirs, rtol=RTOL):
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} × {scale:.3g}"


def test_fixture_has_realistic_magnitudes(official):
    """Guards the fixture itself: tiny ws or transparent renders would let mistakes through."""
    data, _ = official
    assert 0.5 < data["ws"].std() < 2 and data["ws"].abs().max() > 2
    for tag in ("bg", "nobg"):
        assert data[f"mask_{tag}"].mean() > 0.8 and data[f"mask_{tag}"].min() > 0.5
        assert data[f"image_{tag}"].std() > 0.3


def test_state_dict_keys_are_the_official_ones(model, official):
    _, meta = official
    official = dict(meta["official_state_dict_shapes"], **meta["superresolution"]["state_dict_shapes"])
    assert set(model.state_dict()) == set(official)
    for k, shape in official.items():
        assert list(model.state_dict()[k].shape) == list(shape), k


def test_mapping(model, official):
    data, _ = official
    with torch.no_grad():
        close(model.mapping(data["z"], data["c"]), data["ws"])
        close(model.mapping(data["z"], data["c"], truncation_psi=0.7), data["ws_trunc"])


def test_pyramid_levels(model, official):
    data, _ = official
    with torch.no_grad():
        pyramid = model.synthesize_pyramid(data["ws"])
        mixed = model.synthesize_pyramid(data["ws_mix"])  # a different w at each index: checks routing
    assert sorted(pyramid) == [8, 16, 32]
    for r in (8, 16, 32):
        close(pyramid[r], data[f"trigrids_{r}"])
        close(mixed[r], data[f"mix_trigrids_{r}"])


def test_sampled_features_and_decoder(model, official):
    data, _ = official
    levels = {r: data[f"trigrids_{r}"] for r in (8, 16, 32)}
    feats = sample_pyramid(levels, data["points"])
    close(feats, data["features"], 1e-6)
    sigma, rgb = model.decoder(data["features"])
    close(sigma, data["sigma"], 1e-5)
    close(rgb, data["rgb"], 1e-5)


@pytest.mark.parametrize("background", [True, False])
def test_deterministic_render(model, official, background):
    data, _ = official
    levels = {r: data[f"trigrids_{r}"] for r in (8, 16, 32)}
    tag = "bg" if background else "nobg"
    with torch.no_grad():
        out = model.render(
            levels, data["ws"], data["c"], resolution=16, deterministic=True, background=background
        )
    close(out["features"], data[f"feature_image_{tag}"])
    close(out["image"], data[f"image_{tag}"])
    close(out["depth"], data[f"depth_{tag}"])
    close(out["mask"], data[f"mask_{tag}"])


def test_render_subset_of_levels(model, official):
    data, _ = official
    levels = {r: data[f"trigrids_{r}"] for r in (8, 16)}
    with torch.no_grad():
        out = model.render(levels, data["ws"], data["c"], resolution=16, deterministic=True, background=False)
    close(out["image"], data["image_l8_16"])
    close(out["depth"], data["depth_l8_16"])
    close(out["mask"], data["mask_l8_16"])


def test_background_and_torgb_routing(model, official):
    """14 different ws: ToRGB must use ws[:, 13] and the background ws[:, :12]."""
    data, _ = official
    levels = {r: data[f"trigrids_{r}"][:1] for r in (8, 16, 32)}
    with torch.no_grad():
        close(model.background_features(data["ws14_mix"], 16), data["mix_bcg_resized"])
        out = model.render(levels, data["ws14_mix"], data["c"][:1], resolution=16, deterministic=True)
    close(out["features"], data["mix_feature_image_bg"])
    close(out["image"], data["mix_image_bg"])
    with torch.no_grad():
        bcg = model.bcg_synthesis(data["ws"])
    close(bcg[:1, :, ::4, ::4], data["bcg_feature_sub4"])
    close(bcg[:1, :, 48:80, 48:80], data["bcg_feature_crop"])


def test_camera_labels(official):
    """Our look-at cameras and intrinsics equal the official LookAtPoseSampler / FOV_to_intrinsics."""
    data, _ = official
    hv = data["cameras_hv"]
    ours = lookat_pose(hv[:, 0], hv[:, 1]).reshape(-1, 16)
    assert (ours - data["cameras_c2w"]).abs().max() < 1e-6
    assert (camera_label(torch.eye(4)[None], SDS_FOCAL)[0, 16:] - data["sds_intrinsics"]).abs().max() < 1e-6
    first_two = camera_label(lookat_pose(hv[[0, 9], 0], hv[[0, 9], 1]))  # the render cameras
    assert (first_two - data["c"]).abs().max() < 1e-6


@pytest.fixture(scope="module")
def sr_inputs_checked(official):
    """The seeded SR inputs, checked against the heads stored by the official-side script."""
    data, _ = official
    inputs = sr_inputs(seed=0)
    assert torch.equal(inputs["ws"], data["sr_ws"])
    for r in (128, 256):
        assert torch.equal(inputs[f"rgb{r}"][:, :, 0, :8], data[f"sr_rgb{r}_head"])
        assert torch.equal(inputs[f"features{r}"][:, :, 0, :8], data[f"sr_features{r}_head"])
    return inputs


@pytest.mark.parametrize("size", [128, 256])
def test_superresolution(model, official, sr_inputs_checked, size):
    """Full-size official SuperresolutionHybrid8XDC: 128² input as is, 256² antialias-resized to 128²
    first; ws with a different w at every index (the SR must use the last)."""
    data, _ = official
    x = sr_inputs_checked
    with torch.no_grad():
        out = model.superresolution(x[f"rgb{size}"], x[f"features{size}"], x["ws"])
    assert out.shape == (1, 3, 512, 512)
    close(out[:, :, ::5, ::5], data[f"sr{size}_sub"])
    close(out[:, :, 229:293, 229:293], data[f"sr{size}_crop"])
    close(out.double().sum(dim=(2, 3)).float(), data[f"sr{size}_sum"])
