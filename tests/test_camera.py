"""Camera conventions: the official look-at sampler and exact threestudio conversions, both ways.

threestudio's camera is re-derived here from its documented contract (z up, position
d·(cos e cos a, cos e sin a, sin e), OpenGL c2w [right, up, −forward | pos], pixel-centre rays
with focal 0.5·H/tan(fovy/2)), looking at the pivot (0, 0, 0.0649).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gan_prior.camera import (
    GAN_FOCAL,
    SDS_FOCAL,
    camera_label,
    canonical_label,
    elevation_azimuth_to_hv,
    focal_to_fovy,
    gan_to_threestudio_points,
    hv_to_elevation_azimuth,
    label_to_threestudio,
    lookat_pose,
    threestudio_c2w_to_label,
    threestudio_pivot,
    threestudio_to_gan_points,
)
from gan_prior.renderer import rays_from_label

# the official hard-coded dataset-average camera (avg_c)
OFFICIAL_AVG_C = torch.tensor(
    [
        1.0000e00,
        1.0505e-09,
        4.3685e-08,
        -1.1805e-07,
        0.0,
        -9.9951e-01,
        2.4033e-02,
        -1.1805e-07,
        4.3714e-08,
        -2.4033e-02,
        -9.9951e-01,
        2.6992e00,
        0.0,
        0.0,
        0.0,
        1.0,
    ]
)


def ts_c2w(elev_deg, azim_deg, dist=2.7, center=(0.0, 0.0, 0.0649)):
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    pos = torch.tensor(
        [dist * math.cos(e) * math.cos(a), dist * math.cos(e) * math.sin(a), dist * math.sin(e)]
    )
    forward = F.normalize(torch.tensor(center) - pos, dim=0)
    right = F.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    up = F.normalize(torch.linalg.cross(right, forward), dim=0)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, pos
    return c2w


def ts_rays(c2w, fovy_deg, h):
    focal = 0.5 * h / math.tan(math.radians(fovy_deg) / 2)
    j, i = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(h) + 0.5, indexing="ij")
    dirs = torch.stack([(i - h / 2) / focal, -(j - h / 2) / focal, -torch.ones_like(i)], -1)
    d = F.normalize(dirs @ c2w[:3, :3].T, dim=-1)
    return c2w[:3, 3].expand_as(d).reshape(-1, 3), d.reshape(-1, 3)


def test_canonical_camera_matches_official_average_to_1e3():
    c = canonical_label(1)[0]
    assert torch.allclose(c[:16], OFFICIAL_AVG_C, atol=1e-3)
    assert math.isclose(c[16].item(), 6.5104166, rel_tol=1e-6) and c[18] == 0.5


def test_h_zero_is_the_minus_x_profile_and_v_is_not_polar():
    pos = lookat_pose(0.0, math.pi / 3)[0, :3, 3]
    assert pos[0] < -2.0 and abs(pos[2]) < 1e-5
    elevation = math.degrees(math.asin(pos[1] / 2.7))
    assert elevation == pytest.approx(19.471, abs=1e-3)  # v = 60° is +19.47°, not +30°


@pytest.mark.parametrize(
    "elev,azim", [(0, 0), (19.47, -90), (-15, 135), (30, -180), (7.5, 64.29), (-22.9, 218.57)]
)
@pytest.mark.parametrize("fovy", [8.7834, 8.818])
def test_threestudio_camera_to_gan_label_is_exact(elev, azim, fovy):
    c2w_t = ts_c2w(elev, azim)[None]
    label = threestudio_c2w_to_label(c2w_t, fovy)
    h, v = elevation_azimuth_to_hv(elev, azim)
    expected = camera_label(lookat_pose(h, v), label[0, 16])
    assert torch.allclose(label, expected, atol=2e-6)
    # same rays, same pixel order, after mapping threestudio points into the GAN world
    o_e, d_e = rays_from_label(label, 16)
    o_t, d_t = ts_rays(c2w_t[0], fovy, 16)
    assert torch.allclose(threestudio_to_gan_points(d_t), d_e[0], atol=2e-6)
    assert torch.allclose(threestudio_to_gan_points(o_t), o_e[0], atol=2e-6)


@pytest.mark.parametrize("h,v", [(math.pi / 2, math.pi / 2), (0.3, 1.1), (4.0, 2.0), (2.2, 0.7)])
def test_gan_label_to_threestudio_is_exact(h, v):
    label = camera_label(lookat_pose(h, v), SDS_FOCAL)
    c2w_t, fovy = label_to_threestudio(label)
    e, a = hv_to_elevation_azimuth(h, v)
    assert torch.allclose(c2w_t[0], ts_c2w(e.item(), a.item()), atol=2e-6)
    assert fovy.item() == pytest.approx(8.8180, abs=1e-3)
    assert torch.allclose(threestudio_c2w_to_label(c2w_t, fovy), label, atol=2e-6)


def test_angle_conversions_round_trip_and_known_values():
    e, a = hv_to_elevation_azimuth(torch.tensor([0.0, math.pi / 2]), torch.tensor([math.pi / 3, math.pi / 2]))
    assert torch.allclose(e, torch.tensor([19.4712, 0.0]), atol=1e-3)
    assert torch.allclose(a, torch.tensor([-90.0, 0.0]))
    h, v = elevation_azimuth_to_hv(e, a)
    assert torch.allclose(h, torch.tensor([0.0, math.pi / 2]), atol=1e-6)
    assert torch.allclose(v, torch.tensor([math.pi / 3, math.pi / 2]), atol=1e-6)
    assert focal_to_fovy(GAN_FOCAL).item() == pytest.approx(8.7834, abs=1e-3)


def test_point_mapping_is_a_proper_rotation_and_round_trips():
    p = torch.randn(10, 3)
    assert torch.allclose(gan_to_threestudio_points(threestudio_to_gan_points(p)), p)
    # threestudio x (front) is GAN +z (where the face looks); threestudio z (up) is GAN +y
    assert torch.equal(
        threestudio_to_gan_points(torch.tensor([1.0, 0.0, 0.0])), torch.tensor([0.0, 0.0, 1.0])
    )
    assert torch.equal(
        threestudio_to_gan_points(torch.tensor([0.0, 0.0, 1.0])), torch.tensor([0.0, 1.0, 0.0])
    )
    assert threestudio_pivot() == pytest.approx((0.0, 0.0, 0.0649))
