"""The renderer's fast paths give exactly what the plain computation gives.

* cropped samples are not evaluated (their composite weight is exactly 0);
* the trilinear lookup's backward skips the unused grid gradient;
* on the CPU the levels are sampled channels-last;
* on the CPU the levels are looked up and scattered by compiled kernels (gan_prior.trilinear_cpu),
  split over threads.
Each is compared bit for bit (values and gradients) with the plain path."""

import pytest
import torch
import torch.nn.functional as F

import gan_prior.pyramid_trigrid as pyramid_trigrid
import gan_prior.renderer as renderer
import gan_prior.trilinear_cpu as trilinear_cpu
from gan_prior import PortraitGAN, RenderConfig, canonical_label, tiny_config
from gan_prior.pyramid_trigrid import pyramid_volumes, sample_volumes, trilinear_sample
from gan_prior.refinement import refinement_labels


def _render(G, pyramid, ws, c, deterministic, background):
    levels = {r: t.clone().requires_grad_(True) for r, t in pyramid.items()}
    torch.manual_seed(7)
    out = G.render(levels, ws, c, resolution=16, deterministic=deterministic, background=background)
    out["image"].square().mean().backward()
    return [out["image"], out["depth"], out["opacity"]] + [levels[r].grad for r in sorted(levels)]


@pytest.mark.parametrize("deterministic,background", [(False, False), (True, True)])
def test_skipping_cropped_samples_changes_nothing(monkeypatch, deterministic, background):
    G = PortraitGAN.random(tiny_config(), seed=0)
    c = torch.cat([canonical_label(1), refinement_labels(0)[3:4]])
    ws = G.mapping(torch.randn(2, G.cfg.z_dim, generator=torch.Generator().manual_seed(1)), c)
    with torch.no_grad():
        pyramid = G.synthesize_pyramid(ws)
    fast = _render(G, pyramid, ws, c, deterministic, background)
    calls = []
    monkeypatch.setattr(
        renderer,
        "_evaluate_uncropped",
        lambda field, points, cropped, density, unsafe=None: calls.append(1) or field(points),
    )
    plain = _render(G, pyramid, ws, c, deterministic, background)
    assert calls, "the plain path was not taken"
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


def test_cropped_samples_are_skipped_unless_a_density_is_huge():
    cfg = RenderConfig(depth_resolution=8, depth_resolution_importance=0)
    origins = torch.tensor([[[0.0, 0.0, 2.7]]])
    dirs = torch.tensor([[[0.0, 0.0, -1.0]]])
    seen = []

    def field(sigma):
        def f(points):
            seen.append(points.shape[1])
            return torch.full_like(points[..., :1], sigma), points.new_ones(points.shape[:2] + (4,))

        return f

    renderer.render_rays(field(5.0), origins, dirs, cfg, deterministic=True)
    cropped = int(
        renderer.crop_mask(origins + torch.linspace(2.35, 3.12, 8)[None, :, None] * dirs, cfg).sum()
    )
    assert cropped > 0 and seen == [8 - cropped]  # only the kept samples reach the field
    seen.clear()
    renderer.render_rays(field(750.0), origins, dirs, cfg, deterministic=True)
    assert seen == [8 - cropped, 8]  # σ ≥ 700 next to a crop: every sample is evaluated


def test_trilinear_backward_and_channels_last_are_exact():
    g = torch.Generator().manual_seed(3)
    level = torch.randn(1, 3, 36, 16, 16, generator=g)
    grid = torch.rand(3, 1, 1, 200, 3, generator=g) * 2.4 - 1.2  # some points outside the box
    grad_out = torch.randn(3, 12, 1, 1, 200, generator=g)
    results = []
    for fast in (False, True):
        lv = level.clone().requires_grad_(True)
        if fast:
            (volume,) = pyramid_volumes({16: lv}, 1)
            assert volume.is_contiguous(memory_format=torch.channels_last_3d)
            out = trilinear_sample(volume, grid)
        else:
            out = F.grid_sample(
                lv.reshape(3, 12, 3, 16, 16), grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        out.backward(grad_out)
        results.append((out.detach(), lv.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def _lookups(levels, points, batch):
    lv = {r: t.clone().requires_grad_(True) for r, t in levels.items()}
    out = sample_volumes(pyramid_volumes(lv, batch), points)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return [out.detach()] + [lv[r].grad for r in sorted(lv)]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_cpu_lookups_equal_grid_sample_bit_for_bit(monkeypatch, threads):
    g = torch.Generator().manual_seed(5)
    levels = {r: torch.randn(1, 3, 36, r, r, generator=g) for r in (8, 16, 32)}  # one pyramid, batch 2
    points = torch.rand(2, 3001, 3, generator=g) * 0.9 - 0.45  # some outside the ±0.35 box
    points[0, :4] = torch.tensor([[0.35, 0.35, 0.35], [-0.35, 0.0, 0.1], [0.0, 0.0, 0.0], [0.1, -0.35, 0.35]])
    monkeypatch.setattr(trilinear_cpu, "POINTS_PER_TASK", 700)  # several slices per plane, uneven
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = []
        real = trilinear_cpu.sample_levels
        monkeypatch.setattr(trilinear_cpu, "sample_levels", lambda *a: calls.append(1) or real(*a))
        fast = _lookups(levels, points, 2)
        assert calls, "the compiled kernels were not used"
        monkeypatch.setattr(pyramid_trigrid, "_cpu_kernels", lambda: None)
        plain = _lookups(levels, points, 2)
    finally:
        torch.set_num_threads(old)
    assert fast[0].shape == (2, 3, 3001, 12)
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


def test_points_that_need_a_gradient_take_grid_sample():
    g = torch.Generator().manual_seed(6)
    level = torch.randn(1, 3, 36, 8, 8, generator=g, requires_grad=True)
    points = (torch.rand(1, 50, 3, generator=g) * 0.6 - 0.3).requires_grad_(True)
    volumes = pyramid_volumes({8: level}, 1)
    assert not trilinear_cpu.supports(volumes, points)
    sample_volumes(volumes, points).sum().backward()
    assert points.grad is not None and points.grad.abs().sum() > 0 and level.grad.abs().sum() > 0
