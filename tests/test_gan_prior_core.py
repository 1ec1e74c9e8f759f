"""Behaviour of the generator pieces: aware3d, plane axes, gradients, determinism, round trips."""

import pytest
import torch

from gan_prior import PortraitGAN, PyramidTriGrid, canonical_label, sample_pyramid, tiny_config
from gan_prior.layers import aware3d


def test_aware3d_hand_computed_2x2():
    p0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    p1 = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    p2 = torch.tensor([[9.0, 10.0], [11.0, 12.0]])
    x = torch.stack([p0, p1, p2])[:, None]  # [B·3 = 3, C = 1, 2, 2]
    out = aware3d(x)
    assert out.shape == (3, 3, 2, 2)
    t = torch.tensor
    # P0 → [P0, mean_W(P1ᵀ), mean_H(P2ᵀ)]
    assert torch.equal(out[0, 0], p0)
    assert torch.equal(out[0, 1], t([[6.0, 6.0], [7.0, 7.0]]))
    assert torch.equal(out[0, 2], t([[9.5, 11.5], [9.5, 11.5]]))
    # P1 → [mean_H(P0ᵀ), P1, mean_W(P2ᵀ)]
    assert torch.equal(out[1, 0], t([[1.5, 3.5], [1.5, 3.5]]))
    assert torch.equal(out[1, 1], p1)
    assert torch.equal(out[1, 2], t([[10.0, 10.0], [11.0, 11.0]]))
    # P2 → [mean_W(P0ᵀ), mean_H(P1ᵀ), P2]
    assert torch.equal(out[2, 0], t([[2.0, 2.0], [3.0, 3.0]]))
    assert torch.equal(out[2, 1], t([[5.5, 7.5], [5.5, 7.5]]))
    assert torch.equal(out[2, 2], p2)


# world coordinate read along each grid axis (W, H, D) of each plane: (x,y,z), (x,z,y), (y,z,x)
EXPECTED_AXES = {0: "xyz", 1: "xzy", 2: "yzx"}


@pytest.mark.parametrize("plane", [0, 1, 2])
@pytest.mark.parametrize("grid_axis", [0, 1, 2])  # W, H, D
def test_plane_axis_convention(plane, grid_axis):
    r, depth = 8, 3
    level = torch.zeros(1, 3, 12 * depth, r, r)
    vol = level.view(1, 3, 12, depth, r, r)
    size = (r, r, depth)[grid_axis]
    ramp = torch.arange(size, dtype=torch.float32)
    shape = [1, 1, 1]
    shape[2 - grid_axis] = size  # volume dims are (D, H, W)
    vol[0, plane, 0] = ramp.reshape(shape).expand(depth, r, r)
    torch.manual_seed(0)
    points = (torch.rand(1, 50, 3) - 0.5) * 0.2  # well inside the box
    feats = sample_pyramid({r: level}, points)  # [1, 3, M, 12]
    world = "xyz".index(EXPECTED_AXES[plane][grid_axis])
    g = points[0, :, world] * (2 / 0.7)
    expected = ((g + 1) * size - 1) / 2  # align_corners=False index of the grid coordinate
    assert torch.allclose(feats[0, plane, :, 0], expected, atol=1e-5)
    others = [p for p in range(3) if p != plane]
    assert feats[0, others].abs().max() == 0


def test_levels_are_averaged_not_summed():
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 36, 8, 8), torch.randn(1, 3, 36, 16, 16)
    pts = (torch.rand(1, 20, 3) - 0.5) * 0.6
    both = sample_pyramid({8: a, 16: b}, pts)
    assert torch.allclose(both, (sample_pyramid({8: a}, pts) + sample_pyramid({16: b}, pts)) / 2, atol=1e-6)


def test_points_outside_the_box_read_zero():
    level = torch.randn(1, 3, 36, 8, 8)
    pts = torch.tensor([[[0.5, 0.5, 0.5], [-0.6, 0.0, 0.0]]])
    assert sample_pyramid({8: level}, pts).abs().max() == 0


@pytest.fixture(scope="module")
def tiny():
    g = PortraitGAN.random(tiny_config(), seed=1)
    z = torch.randn(1, g.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    c = canonical_label(1)
    with torch.no_grad():
        ws = g.mapping(z, c)
        pyramid = g.synthesize_pyramid(ws)
    return g, ws, c, pyramid


def test_shapes_and_level_sizes(tiny):
    g, ws, c, pyramid = tiny
    assert ws.shape == (1, g.num_ws, 64)
    assert sorted(pyramid) == g.cfg.level_sizes == [8, 16, 32]
    for r, t in pyramid.items():
        assert t.shape == (1, 3, 36, r, r)
    out = g.render(pyramid, ws, c, resolution=12, deterministic=True)
    assert out["image"].shape == (1, 3, 12, 12)
    assert out["depth"].shape == out["mask"].shape == (1, 1, 12, 12)
    assert torch.allclose(out["mask"], out["opacity"] * 1.002 - 0.001)


def test_full_size_architecture_levels():
    g = PortraitGAN()  # the released configuration: 14 ws, 7 levels 8…512
    assert g.num_ws == 14
    assert g.cfg.level_sizes == [8, 16, 32, 64, 128, 256, 512]
    assert g.bcg_synthesis.num_ws == 12


def test_deterministic_render_is_repeatable_and_random_is_not(tiny):
    g, ws, c, pyramid = tiny
    a = g.render(pyramid, ws, c, resolution=8, deterministic=True)["image"]
    b = g.render(pyramid, ws, c, resolution=8, deterministic=True)["image"]
    assert torch.equal(a, b)
    torch.manual_seed(3)
    r = g.render(pyramid, ws, c, resolution=8, deterministic=False)["image"]
    assert not torch.equal(a, r)
    assert (a - r).abs().max() < 0.5  # jitter moves samples within one bin, not the picture


def test_chunked_and_patch_renders_match_the_full_render(tiny):
    g, ws, c, pyramid = tiny
    full = g.render(pyramid, ws, c, resolution=16, deterministic=True)
    chunked = g.render(pyramid, ws, c, resolution=16, deterministic=True, chunk=37)
    assert torch.allclose(full["image"], chunked["image"], atol=1e-6)
    patch = g.render(pyramid, ws, c, resolution=16, deterministic=True, patch=(3, 5, 8))
    assert torch.allclose(patch["image"], full["image"][:, :, 3:11, 5:13], atol=1e-5)
    assert torch.allclose(patch["depth"], full["depth"][:, :, 3:11, 5:13], atol=1e-5)


def test_gradients_reach_only_the_pyramid(tiny):
    g, ws, c, pyramid = tiny
    grid = PyramidTriGrid(pyramid)
    out = g.render(grid.as_dict(), ws, c, resolution=8, deterministic=False, background=False)
    out["image"].square().mean().backward()
    for r in grid.sizes:
        grad = grid[r].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, r
    assert all(p.grad is None and not p.requires_grad for p in g.parameters())


def test_render_options_and_errors(tiny):
    g, ws, c, pyramid = tiny
    out = g.render(
        pyramid, ws, c, resolution=8, deterministic=True, depth_resolution=6, depth_resolution_importance=0
    )
    assert torch.isfinite(out["image"]).all()
    with pytest.raises(ValueError, match="unknown render option"):
        g.render(pyramid, ws, c, resolution=8, samples_per_ray=3)
    with pytest.raises(ValueError, match="at least one"):
        g.render({}, ws, c, resolution=8)


def test_truncation_moves_toward_w_avg(tiny):
    g, _, c, _ = tiny
    z = torch.randn(2, g.cfg.z_dim)
    w = g.mapping(z, c.repeat(2, 1))
    w0 = g.mapping(z, c.repeat(2, 1), truncation_psi=0.0)
    assert torch.allclose(w0, g.backbone.mapping.w_avg.expand_as(w0))
    wh = g.mapping(z, c.repeat(2, 1), truncation_psi=0.5)
    assert torch.allclose(wh, (w + w0) / 2, atol=1e-6)
