"""The refinement stage's library part: the 21 official views, the fit schedule and the masked
patch-L2 fit (gan_prior.refinement)."""

import math

import pytest
import torch
from helpers import requires_threestudio

from gan_prior import PortraitGAN, canonical_label, tiny_config
from gan_prior.camera import SDS_FOCAL, gan_to_threestudio_points
from gan_prior.refinement import (
    NUM_VIEWS,
    RefineFitConfig,
    fit_schedule,
    patch_loss,
    refinement_angles,
    refinement_hv,
    refinement_labels,
)


def test_21_views_at_the_official_angles():
    h, v = refinement_hv(seed=3)
    assert h.shape == v.shape == (21,)
    # azimuth-major order: h = linspace(0, 2π, 8)[:7], each with v bands 60, 90, 120 (± 5°)
    for k in range(7):
        assert torch.allclose(h[3 * k : 3 * k + 3], torch.full((3,), 2 * math.pi * k / 7))
        for j, band in enumerate((60.0, 90.0, 120.0)):
            assert abs(math.degrees(v[3 * k + j]) - band) <= 5.0
    elev, azim = refinement_angles(seed=3)
    # the official 21 views: true elevations +16.1…+22.9, −3.2…+3.2, −22.9…−16.1; azimuths −90 + 51.43 k
    bands = [(16.1, 22.9), (-3.2, 3.2), (-22.9, -16.1)]
    for i in range(21):
        lo, hi = bands[i % 3]
        assert lo - 0.05 <= elev[i] <= hi + 0.05, (i, float(elev[i]))
        assert azim[i] == pytest.approx(-90 + 360 / 7 * (i // 3), abs=1e-4)
    # the jitter is real (not all at the band centres) and reproducible per seed
    assert (torch.rad2deg(v) - torch.tensor([60.0, 90.0, 120.0]).repeat(7)).abs().max() > 0.5
    assert torch.equal(refinement_hv(3)[1], v) and not torch.equal(refinement_hv(4)[1], v)


def test_view_cameras_sit_on_the_radius_2_7_sphere_looking_at_the_pivot():
    labels = refinement_labels(seed=0)
    assert labels.shape == (21, 25)
    c2w = labels[:, :16].reshape(21, 4, 4)
    pos_t = gan_to_threestudio_points(c2w[:, :3, 3])
    elev, azim = (torch.deg2rad(x) for x in refinement_angles(seed=0))
    expected = 2.7 * torch.stack([elev.cos() * azim.cos(), elev.cos() * azim.sin(), elev.sin()], -1)
    assert torch.allclose(pos_t, expected, atol=1e-5)
    # OpenCV camera: +z looks forward, at the pivot (0, 0.0649, 0) of the GAN world
    to_pivot = torch.nn.functional.normalize(torch.tensor([0.0, 0.0649, 0.0]) - c2w[:, :3, 3], dim=-1)
    assert torch.allclose(c2w[:, :3, 2], to_pivot, atol=1e-5)
    assert torch.allclose(labels[:, 16], torch.full((21,), SDS_FOCAL))  # FOV_to_intrinsics(12.447863)


def test_fit_schedule_visits_every_view_once_per_epoch_with_patches_inside():
    cfg = RefineFitConfig(resolution=64, patch_resolution=32)
    for epoch in range(3):
        steps = [fit_schedule(epoch * NUM_VIEWS + i, seed=1, cfg=cfg) for i in range(NUM_VIEWS)]
        assert sorted(s[0] for s in steps) == list(range(NUM_VIEWS))
        assert all(0 <= t <= 32 and 0 <= left <= 32 for _, t, left in steps)
    orders = [
        [fit_schedule(e * NUM_VIEWS + i, seed=1, cfg=cfg)[0] for i in range(NUM_VIEWS)] for e in range(2)
    ]
    assert orders[0] != orders[1]  # shuffled anew each epoch
    assert fit_schedule(50, seed=1, cfg=cfg) == fit_schedule(
        50, seed=1, cfg=cfg
    )  # resumable: a function of step
    corners = {fit_schedule(s, seed=1, cfg=cfg)[1:] for s in range(40)}
    assert len(corners) > 20


def _adan(params):
    from threestudio_env import import_extension

    import_extension()
    from threestudio.systems.optimizers import Adan

    return Adan(params, lr=1.0, eps=1e-8, weight_decay=2e-5, max_grad_norm=5.0, foreach=False)


# Density offset making the tiny model's renders mostly opaque (mean opacity 0.95), as a trained
# model's heads are; the random tiny model alone renders at 0.25 opacity.
OPAQUE = 6.0


@pytest.mark.parametrize(
    "optimizer,density_offset",
    [
        ("adam", OPAQUE),
        # The official Adan (lr 1.0 on every level) on the transparent tiny model lowers the masked
        # loss 50× by turning the pyramid transparent (opacity 0.25 → 0.015) while the plain error does
        # not fall: the masked loss permits it. Kept as a strict xfail so a change is noticed.
        pytest.param(
            "adan-official",
            0.0,
            marks=[
                *requires_threestudio,
                pytest.mark.xfail(
                    strict=True, reason="official Adan lr 1.0 collapses the tiny transparent model's opacity"
                ),
            ],
        ),
    ],
)
def test_patch_fit_pulls_renders_to_targets_with_the_renderer_frozen(optimizer, density_offset):
    torch.manual_seed(0)
    G = PortraitGAN.random(tiny_config()).eval().requires_grad_(False)
    G.decoder.net[2].bias.data[0] += density_offset  # raw density (official OSGDecoder output 0)
    frozen = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():

        def pyramid(seed):
            z = torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
            ws = G.mapping(z, canonical_label(1), truncation_psi=0.7)
            return G.synthesize_pyramid(ws), ws

        start, ws = pyramid(0)
        goal, _ = pyramid(1)
    samples = dict(depth_resolution=8, depth_resolution_importance=8)
    cfg = RefineFitConfig(resolution=32, patch_resolution=16, **samples)
    whole = RefineFitConfig(resolution=32, patch_resolution=32, **samples)
    labels = refinement_labels(0)
    with torch.no_grad():
        targets = torch.cat(
            [
                G.render(goal, ws, c[None], resolution=32, deterministic=True, background=False, **samples)[
                    "image"
                ]
                for c in labels
            ]
        )
    levels = {r: t.clone().requires_grad_(True) for r, t in start.items()}

    def mean_loss():
        with torch.no_grad():
            return (
                sum(
                    patch_loss(
                        G, levels, ws, labels[i : i + 1], targets[i : i + 1], 0, 0, whole, deterministic=True
                    )
                    for i in range(21)
                ).item()
                / 21
            )

    def unmasked_error_and_opacity(pyr):
        """Plain L2 to the targets over all 21 views, and the mean rendered opacity."""
        with torch.no_grad():
            outs = [
                G.render(pyr, ws, c[None], resolution=32, deterministic=True, background=False, **samples)
                for c in labels
            ]
        images = torch.cat([o["image"] for o in outs])
        return ((images - targets) ** 2).mean().item(), torch.cat([o["opacity"] for o in outs]).mean().item()

    error_before, opacity_before = unmasked_error_and_opacity(levels)
    _, opacity_goal = unmasked_error_and_opacity(goal)

    opt = (
        torch.optim.Adam(list(levels.values()), lr=0.1)
        if optimizer == "adam"
        else _adan(list(levels.values()))
    )
    before = mean_loss()
    for step in range(63):  # 3 epochs
        v, top, left = fit_schedule(step, 0, cfg=cfg)
        loss = patch_loss(G, levels, ws, labels[v : v + 1], targets[v : v + 1], top, left, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mean_loss()
    error_after, opacity_after = unmasked_error_and_opacity(levels)
    assert after < before / 10, (before, after)
    # the masked loss could also fall by turning the pyramid transparent: the plain error must fall
    # too, and the opacity stay near the target's
    assert error_after < error_before / 4, (error_before, error_after)
    assert opacity_after > 0.8 * min(opacity_before, opacity_goal), (
        opacity_before,
        opacity_goal,
        opacity_after,
    )
    assert all(not torch.equal(levels[r], start[r]) for r in levels)
    for k, v in G.state_dict().items():  # decoder, ToRGB, everything else of the GAN untouched
        assert torch.equal(v, frozen[k]), k
    assert all(p.grad is None for p in G.parameters())


def test_patch_loss_is_masked_by_the_rendered_opacity():
    G = PortraitGAN.random(tiny_config()).eval().requires_grad_(False)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.cfg.z_dim), canonical_label(1))
        levels = G.synthesize_pyramid(ws)
    label = refinement_labels(0)[10:11]
    cfg = RefineFitConfig(
        resolution=16, patch_resolution=8, depth_resolution=6, depth_resolution_importance=6
    )
    out = G.render(
        levels,
        ws,
        label,
        resolution=16,
        deterministic=True,
        background=False,
        patch=(4, 2, 8),
        depth_resolution=6,
        depth_resolution_importance=6,
    )
    target = torch.zeros(1, 3, 16, 16)
    target[:, :, 4:12, 2:10] = 0.25
    expected = ((out["image"] - 0.25) ** 2 * out["mask"]).mean() * 1e3
    got = patch_loss(G, levels, ws, label, target, 4, 2, cfg, deterministic=True)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert got > 0
