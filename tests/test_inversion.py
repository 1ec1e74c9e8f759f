"""GAN inversion (w+ projector) and the VGG16 perceptual distance, on tiny random models."""

import math

import pytest
import torch
import torch.nn.functional as F

from gan_prior import PortraitGAN, canonical_label, tiny_config
from gan_prior.checkpoint import CheckpointError
from gan_prior.inversion import (
    InversionConfig,
    invert,
    learning_rate,
    noise_regularization,
    synthesize_for_distance,
    w_statistics,
)
from gan_prior.perceptual import VGG16Distance


@pytest.fixture(scope="module")
def setup():
    G = PortraitGAN.random(tiny_config(), seed=2)
    c = canonical_label(1)
    z = torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ws = G.mapping(z, c)
        target = G.render(G.synthesize_pyramid(ws), ws, c, resolution=32, deterministic=True)["image"]
    return G, c, target


def mse(a, b):
    return (a - b).square().mean((1, 2, 3))


@pytest.mark.parametrize("mode", ["official", "raw"])
def test_inversion_recovers_a_known_latent(setup, mode):
    G, c, target = setup
    if mode == "official":  # the GAN's own output: the superresolved image (128² for the tiny model)
        with torch.no_grad():
            ws = G.mapping(torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(9)), c)
            target = G.synthesize(ws, c, deterministic=True)["image"]
        assert target.shape[-1] == 4 * G.cfg.neural_rendering_resolution == 128
    before = {k: v.clone() for k, v in G.state_dict().items()}
    vgg = VGG16Distance.load(None)  # random weights of the real architecture (tests only)
    cfg = InversionConfig(steps=80, resolution=32, deterministic=True, learning_rate=0.05, mode=mode)
    out = invert(G, target, c, vgg, cfg, progress=False)
    w_avg, _ = w_statistics(G)
    target = F.interpolate(target, size=(32, 32), mode="area")
    with torch.no_grad():
        ws0 = w_avg.repeat(1, G.num_ws, 1)
        start = synthesize_for_distance(G, ws0, c, cfg, deterministic=True)
    e0, e1 = mse(start, target).item(), mse(out["image"], target).item()
    assert e1 < e0 / 8, (e0, e1)  # reconstruction error falls by a large factor from w_avg
    assert out["ws"].shape == (1, G.num_ws, G.cfg.w_dim)
    assert out["distance"][-1] < out["distance"][0] / 4
    assert all(torch.equal(v, before[k]) for k, v in G.state_dict().items())  # G untouched


def test_learning_rate_ramps_as_the_official_projector():
    cfg = InversionConfig(learning_rate=0.01)
    assert learning_rate(0.0, cfg) == 0.0
    assert learning_rate(0.025, cfg) == pytest.approx(0.005)  # linear ramp-up over 5 %
    assert learning_rate(0.5, cfg) == pytest.approx(0.01)
    assert learning_rate(0.875, cfg) == pytest.approx(0.01 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))
    assert learning_rate(1.0, cfg) == pytest.approx(0.0)


def test_noise_regularization_penalises_correlated_noise():
    torch.manual_seed(0)
    white = noise_regularization([torch.randn(32, 32)])
    smooth = noise_regularization([torch.ones(32, 32)])
    assert smooth.item() == pytest.approx(2 * 3)  # 32, 16, 8: two unit terms per scale
    assert white.item() < 0.01


def test_w_statistics_are_deterministic(setup):
    G, _, _ = setup
    a, sa = w_statistics(G, n=50)
    b, sb = w_statistics(G, n=50)
    assert a.shape == (1, 1, G.cfg.w_dim) and torch.equal(a, b) and sa == sb > 0


def test_vgg_distance_and_loading(tmp_path):
    vgg = VGG16Distance.load(None, seed=1)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = x.clone().requires_grad_(True)
    assert torch.allclose(vgg(x, x), torch.zeros(2))
    d = vgg(x.flip(-1), y)
    assert (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, path)
    again = VGG16Distance.load(str(path), seed=5)
    assert torch.allclose(again(x.flip(-1), x), vgg(x.flip(-1), x))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match="bad.pth: not a VGG16 .torchvision state dict or the official vgg16.pt"
    ):
        VGG16Distance.load(str(tmp_path / "bad.pth"))


class _ScriptedLPIPSVGG(torch.nn.Module):
    """Stand-in for NVIDIA's vgg16.pt layout: named conv layers (not torchvision's indices), then
    five LPIPS channel weights, saved as a TorchScript archive."""

    def __init__(self, source: VGG16Distance, lin: list):
        super().__init__()
        convs = [m for m in source.features if isinstance(m, torch.nn.Conv2d)]
        for i, conv in enumerate(convs):
            self.add_module(f"conv{i}", conv)
        for i, w in enumerate(lin):
            self.register_buffer(f"lpips_lin{i}", w)

    def forward(self, x):
        for i in range(13):
            x = torch.relu(getattr(self, f"conv{i}")(x))
        return x


def test_vgg_distance_reads_a_torchscript_archive_without_running_it(tmp_path, monkeypatch):
    vgg = VGG16Distance.load(None, seed=2)
    lin = [torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    scripted = torch.jit.trace(_ScriptedLPIPSVGG(vgg, lin), torch.zeros(1, 3, 8, 8))
    path = str(tmp_path / "vgg16.pt")
    torch.jit.save(scripted, path)

    def refuse(*args, **kwargs):
        raise AssertionError("the archive's code must not be loaded")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = VGG16Distance.load(path, seed=9)
    for (k, v), w in zip(loaded.features.state_dict().items(), vgg.features.state_dict().values()):
        assert torch.equal(v, w), k
    for i, w in enumerate(lin):
        assert torch.equal(getattr(loaded, f"lin{i}"), w)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    expected = sum(
        ((fa - fb).square() * w).sum(1).mean((1, 2)) for fa, fb, w in zip(vgg.taps(x), vgg.taps(y), lin)
    )
    assert torch.allclose(loaded(x, y), expected)
    assert not torch.allclose(loaded(x, y), vgg(x, y))  # the channel weights are used
    # an archive that is not a VGG16 says so in one line
    small = torch.jit.trace(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8))
    torch.jit.save(small, str(tmp_path / "other.pt"))
    with pytest.raises(
        CheckpointError, match="other.pt: a TorchScript archive without the VGG16 conv layer 64x3x3x3"
    ):
        VGG16Distance.load(str(tmp_path / "other.pt"))


def test_target_shape_is_checked(setup):
    G, c, _ = setup
    with pytest.raises(ValueError, match=r"target must be \[1, 3, H, W\]"):
        invert(G, torch.zeros(3, 32, 32), c, mse, InversionConfig(steps=1), progress=False)


def test_official_mode_compares_the_area_resized_superresolved_image(setup):
    G, c, _ = setup
    ws = G.mapping(torch.randn(1, G.cfg.z_dim), c)
    cfg = InversionConfig(resolution=64, deterministic=True)
    samples = {  # official sampling_multiplier 2.0: twice the generator's samples
        "depth_resolution": 2 * G.cfg.render.depth_resolution,
        "depth_resolution_importance": 2 * G.cfg.render.depth_resolution_importance,
    }
    with torch.no_grad():
        full = G.synthesize(ws, c, deterministic=True, **samples)
        seen = synthesize_for_distance(G, ws, c, cfg)
        raw = synthesize_for_distance(
            G, ws, c, InversionConfig(resolution=64, deterministic=True, mode="raw")
        )
    assert full["image_raw"].shape[-1] == 32 and full["image"].shape[-1] == 128
    assert torch.allclose(seen, F.interpolate(full["image"], size=(64, 64), mode="area"))
    assert raw.shape == seen.shape and not torch.allclose(raw, seen, atol=1e-2)


def test_official_mode_needs_superresolution_weights(setup):
    G, c, target = setup
    no_sr = PortraitGAN.random(tiny_config(superresolution=False), seed=2)
    with pytest.raises(ValueError, match="needs the generator's superresolution weights.*mode='raw'"):
        invert(
            no_sr, target, c, lambda a, b: (a - b).square().mean(), InversionConfig(steps=1), progress=False
        )
    with pytest.raises(ValueError, match="inversion.mode: 'sr' must be 'official' or 'raw'"):
        invert(
            G,
            target,
            c,
            lambda a, b: (a - b).square().mean(),
            InversionConfig(steps=1, mode="sr"),
            progress=False,
        )


# ---------------------------------------------------------------------------- body pose, camera
@pytest.fixture(scope="module")
def posable():
    """A tiny generator with the pose branch and a small SMPL-like body (the released file has both)."""
    from gan_prior.synthetic_smpl import fill_deformation, smpl_like_template

    cfg = tiny_config(pose_branch=True, smpl_vertices=8 * 10 + 2, smpl_faces=2 * 8 * 10)
    G = PortraitGAN.random(cfg, seed=4)
    fill_deformation(G.renderer, smpl_like_template(0, 8, 10), cfg.render.box_warp)
    return G


def test_inversion_optimises_the_body_pose_with_the_deformation(posable):
    G, c = posable, canonical_label(1)
    truth = torch.tensor([[0.3, 0.2, -0.2, 0.3, -0.3, 0.2]])
    z = torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ws = G.mapping(z, c, truth)
        target = G.synthesize(ws, c, deterministic=True, pose=truth)["image"]
        canonical = G.synthesize(ws, c, deterministic=True)["image"]
    assert (target - canonical).abs().max() > 0.05  # the pose shows in the image
    cfg = InversionConfig(steps=6, resolution=32, deterministic=True)
    start = torch.zeros(1, 6)
    out = invert(G, target, c, mse, cfg, progress=False, pose=start)
    assert out["pose"].shape == (1, 6) and (out["pose"] - start).abs().max() > 1e-4  # p was optimised
    fixed = invert(
        G, target, c, mse, InversionConfig(steps=2, resolution=32, optimize_pose=False), False, pose=start
    )
    assert torch.equal(fixed["pose"], start)  # rendered posed, p not optimised
    plain = invert(G, target, c, mse, InversionConfig(steps=2, resolution=32), progress=False)
    assert plain["pose"] is None  # no starting pose: canonical renders, as before


def test_the_pose_gradient_of_a_posed_render_is_its_finite_difference(posable):
    """The inversion moves p along this gradient: it flows only through the posed face frames (the
    face choice carries none, as in the official code), so check it against central differences."""
    G, c = posable, canonical_label(1)
    truth = torch.tensor([[0.3, 0.2, -0.2, 0.3, -0.3, 0.2]])
    z = torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ws = G.mapping(z, c, truth)
        pyramid = G.synthesize_pyramid(ws)
        target = G.render(pyramid, ws, c, resolution=32, deterministic=True, pose=truth)["image"]

    def loss(p):
        return mse(G.render(pyramid, ws, c, resolution=32, deterministic=True, pose=p)["image"], target).sum()

    p = torch.zeros(1, 6, requires_grad=True)
    loss(p).backward()
    eps = 1e-3
    with torch.no_grad():
        fd = torch.stack([(loss(e) - loss(-e)) / (2 * eps) for e in torch.eye(6)[:, None] * eps])
    assert p.grad.abs().max() > 1e-3  # the pose moves the image
    assert F.cosine_similarity(p.grad[0], fd, 0) > 0.999  # measured 0.9999995
    assert (p.grad[0] - fd).norm() < 0.05 * fd.norm()  # measured 0.6 %


def test_w_statistics_are_mapped_with_the_starting_pose(posable):
    a, _ = w_statistics(posable, n=20)
    b, _ = w_statistics(posable, n=20, pose=torch.full((1, 6), 0.3))
    assert not torch.allclose(a, b)


def test_generator_without_smpl_buffers_cannot_render_posed(setup):
    G, c, _ = setup
    ws = G.mapping(torch.randn(1, G.cfg.z_dim), c)
    with pytest.raises(ValueError, match="no SMPL buffers.*pass pose=None"):
        G.render(G.synthesize_pyramid(ws), ws, c, resolution=8, pose=torch.zeros(1, 6))


def test_camera_estimate_is_refined_off_the_grid(setup):
    """The average portrait seen from an off-grid camera: the grid is off by up to half its step, the
    continuous refinement lands within a degree."""
    from gan_prior.camera import GAN_FOCAL, camera_label, elevation_azimuth_to_hv, lookat_pose
    from gan_prior.inversion import estimate_camera

    G, _, _ = setup
    w_avg, _ = w_statistics(G)
    ws = w_avg.repeat(1, G.num_ws, 1)
    h, v = elevation_azimuth_to_hv(torch.tensor([4.0]), torch.tensor([-8.0]))
    with torch.no_grad():
        target = G.render(G.synthesize_pyramid(ws), ws, camera_label(lookat_pose(h, v), GAN_FOCAL), 32, True)[
            "image"
        ]
    grid = estimate_camera(G, target, mse, resolution=32, refine_to_deg=0)
    fine = estimate_camera(G, target, mse, resolution=32)
    assert (grid["yaw"], grid["elevation"]) != (-8.0, 4.0)
    assert abs(fine["yaw"] + 8.0) <= 1.0 and abs(fine["elevation"] - 4.0) <= 1.0, fine


def test_the_camera_search_refines_more_than_the_best_grid_camera():
    """Two basins: a broad one whose floor (1.0) lies on the grid camera (-15, -10), and the true
    camera's, deeper (0.2) but narrow, at (9, -4), between grid cameras: its nearest grid camera
    (15, 0) scores only second best (1.76). Refining the best grid camera alone stays in the broad
    basin (what bench_camera's tenth target did); refining the three best finds the true camera."""
    from gan_prior.inversion import search_camera

    calls = []

    def score(yaw: float, elev: float) -> float:
        calls.append((yaw, elev))
        broad = 1.0 + 0.01 * ((yaw + 15) ** 2 + (elev + 10) ** 2)
        narrow = 0.2 + 0.03 * ((yaw - 9) ** 2 + (elev + 4) ** 2)
        return min(broad, narrow)

    grid = dict(yaws_deg=(-30, -15, 0, 15, 30), elevations_deg=(-10, 0, 10))
    assert search_camera(score, **grid, refine_to_deg=0) == (-15.0, -10.0)
    assert search_camera(score, **grid, starts=1) == (-15.0, -10.0)
    yaw, elev = search_camera(score, **grid, starts=3)
    assert abs(yaw - 9) <= 0.5 and abs(elev + 4) <= 0.5, (yaw, elev)
    assert all(-45 <= y <= 45 and -20 <= e <= 20 for y, e in calls)


def test_a_turned_neck_is_not_taken_for_a_camera_change_in_that_pose(posable):
    """The average portrait with its neck and head turned (0.3 and 0.2 rad about the vertical), seen
    from an off-grid camera: compared at pose 0, the turn reads as a camera change (the estimate
    lands on the front); compared in the pose (what the initialisation does once p₀ is predicted),
    the camera is found."""
    from gan_prior.camera import GAN_FOCAL, camera_label, elevation_azimuth_to_hv, lookat_pose
    from gan_prior.inversion import estimate_camera

    G = posable
    turned = torch.tensor([[0.0, 0.3, 0.0, 0.0, 0.2, 0.0]])
    w_avg, _ = w_statistics(G, pose=turned)
    ws = w_avg.repeat(1, G.num_ws, 1)
    h, v = elevation_azimuth_to_hv(torch.tensor([4.0]), torch.tensor([-8.0]))
    with torch.no_grad():
        label = camera_label(lookat_pose(h, v), GAN_FOCAL)
        target = G.render(G.synthesize_pyramid(ws), ws, label, 16, True, pose=turned)["image"]
    fooled = estimate_camera(G, target, mse, resolution=16, refine_to_deg=2)
    found = estimate_camera(G, target, mse, resolution=16, refine_to_deg=2, pose=turned)
    assert abs(fooled["yaw"] + 8.0) > 5.0, fooled  # measured: yaw 0
    assert abs(found["yaw"] + 8.0) <= 2.0 and abs(found["elevation"] - 4.0) <= 2.0, found


def test_camera_refinement_stays_within_a_grid_step_of_the_grid():
    """A target no camera explains (noise) and a random generator: the local search used to walk to
    elevation 67.5° (69 renders); it stays within one grid spacing of the grid."""
    from gan_prior.inversion import estimate_camera

    G = PortraitGAN.random(tiny_config(), seed=0).eval()
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grad_modes = []

    def distance(image, target):  # the renders are compared without autograd (memory, time)
        grad_modes.append(torch.is_grad_enabled() or image.requires_grad)
        return mse(image, target)

    found = estimate_camera(G, target, distance, resolution=16)
    assert grad_modes and not any(grad_modes)
    tried = [tuple(float(a) for a in key.split(",")) for key in found["distances"]]
    assert all(-45 <= y <= 45 and -20 <= e <= 20 for y, e in tried), tried
    assert len(tried) > 15  # it did search beyond the grid
    assert found["distances"][f"{found['yaw']:g},{found['elevation']:g}"] == min(found["distances"].values())


def test_camera_steps_move_the_camera_during_the_first_steps(setup):
    from gan_prior.inversion import camera_angles

    G, c, target = setup
    moved = invert(G, target, c, mse, InversionConfig(steps=3, resolution=32, camera_steps=2), progress=False)
    still = invert(G, target, c, mse, InversionConfig(steps=3, resolution=32), progress=False)
    assert torch.equal(still["camera"], c)
    assert camera_angles(moved["camera"]) != pytest.approx(camera_angles(c), abs=1e-6)


def test_out_of_range_pose_is_clamped_with_a_notice_and_nan_is_an_error():
    from gan_prior.pose import POSE_LIMIT, clamp_pose

    notes = []
    p = clamp_pose(torch.tensor([[2.0, 0.1, -3.0, 0.0, 0.2, 0.3]]), log=notes.append)
    assert p.abs().max().item() == pytest.approx(POSE_LIMIT) and p[0, 1].item() == pytest.approx(0.1)
    assert len(notes) == 1 and "clamped" in notes[0] and "\n" not in notes[0]
    assert (
        clamp_pose(torch.full((1, 6), 0.1), log=notes.append).equal(torch.full((1, 6), 0.1))
        and len(notes) == 1
    )
    with pytest.raises(ValueError, match="predicted body pose holds 1 NaN"):
        clamp_pose(torch.tensor([[float("nan"), 0, 0, 0, 0, 0]]))
