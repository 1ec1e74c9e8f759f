"""Device-correct code: with every input on a non-CPU device, the core paths make no CPU tensor.

The inputs and the model live on PyTorch's ``meta`` device (shapes only, no data), which refuses
any operation that mixes it with a CPU tensor. On top of that, :class:`NoCPUTensors` watches every
ATen operation and fails on the first one that returns a CPU tensor with at least one dimension:
``torch.zeros(...)`` without ``device=``, a CPU ``linspace`` moved with ``.to(device)`` afterwards
(a host→device copy on every GPU step), a module constant created on the fly. A new allocation of
that kind inside the generator, the renderer, the camera helpers, the refinement fit or the
inversion step makes these tests fail, on a machine without a GPU.
"""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gan_prior import PortraitGAN, tiny_config
from gan_prior.camera import (
    camera_label,
    elevation_azimuth_to_hv,
    focal_to_fovy,
    fovy_to_focal,
    hv_to_elevation_azimuth,
    label_to_threestudio,
    lookat_pose,
    threestudio_c2w_to_label,
)
from gan_prior.inversion import InversionConfig, inversion_step
from gan_prior.pyramid_trigrid import sample_pyramid
from gan_prior.refinement import RefineFitConfig, patch_loss
from gan_prior.renderer import RenderConfig, rays_from_label, render_rays

META = torch.device("meta")


class NoCPUTensors(TorchDispatchMode):
    """Fail on any ATen operation that returns a CPU tensor of one or more dimensions."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0:
                raise AssertionError(f"{func} made a CPU tensor of shape {tuple(t.shape)}")
        return out


def test_the_watch_catches_a_cpu_allocation():
    x = torch.zeros(3, device=META)
    with NoCPUTensors():
        x + torch.zeros(3, device=META)  # fine
        x * 2.0  # python scalars are fine
        with pytest.raises(AssertionError, match="CPU tensor"):
            torch.linspace(0, 1, 3).to(META)
    with pytest.raises(RuntimeError):  # and the meta device itself refuses a mix with CPU
        x + torch.ones(3)


@pytest.fixture(scope="module")
def G():
    return PortraitGAN.random(tiny_config(), seed=0).to(META)


def meta_label(batch=1):
    h = torch.full((batch,), math.pi / 2, device=META)
    return camera_label(lookat_pose(h, h), 6.5)


def test_cameras_follow_their_inputs_device():
    h = torch.rand(4).to(META)
    with NoCPUTensors():
        c2w = lookat_pose(h, h, radius=2.7)
        label = camera_label(c2w, torch.full((4,), 6.5, device=META))
        assert c2w.device == label.device == META and label.shape == (4, 25)
        assert camera_label(c2w, 6.5).device == META
        c2w_t, fovy = label_to_threestudio(label)
        assert threestudio_c2w_to_label(c2w_t, fovy).device == META
        assert fovy_to_focal(focal_to_fovy(label[:, 16])).device == META
        e, a = hv_to_elevation_azimuth(h, h)
        assert elevation_azimuth_to_hv(e, a)[0].device == META
        rays = rays_from_label(label, 8, patch=(0, 0, 4))
        assert rays[0].device == rays[1].device == META and rays[1].shape == (4, 16, 3)


def test_generator_mapping_synthesis_render_and_backward(G):
    c = meta_label(2)
    with NoCPUTensors():
        ws = G.mapping(torch.empty(2, G.cfg.z_dim, device=META), c, truncation_psi=0.7)
        pyramid = G.synthesize_pyramid(ws, noise_mode="random")
        assert all(t.device == META for t in pyramid.values())
        levels = {r: t.detach().requires_grad_(True) for r, t in pyramid.items()}
        for deterministic, background in ((False, True), (True, False)):
            out = G.render(
                levels, ws, c, resolution=8, deterministic=deterministic, background=background, chunk=24
            )
            assert out["image"].shape == (2, 3, 8, 8) and out["image"].device == META
        out["image"].square().mean().backward()
        assert all(t.grad is not None and t.grad.device == META for t in levels.values())


def test_sample_pyramid_and_render_rays_on_meta(G):
    levels = {r: torch.empty(1, 3, 36, r, r, device=META, requires_grad=True) for r in (8, 16)}
    with NoCPUTensors():
        feats = sample_pyramid(levels, torch.empty(1, 50, 3, device=META))
        assert feats.shape == (1, 3, 50, 12)
        feats.sum().backward()
        origins, dirs = rays_from_label(meta_label(), 4)
        out = render_rays(
            G.field(levels), origins, dirs, RenderConfig(depth_resolution=6, depth_resolution_importance=6)
        )
        assert out["features"].device == META and out["weights"].shape == (1, 16, 11, 1)


def test_the_crop_skip_path_of_every_real_render_is_device_checked(G):
    """Real renders skip the samples the tri-grid crop removes (gathered, evaluated, scattered
    back); on ``meta`` there is no count to read, so that path runs with k = n − 1 points."""
    levels = {r: torch.empty(1, 3, 36, r, r, device=META, requires_grad=True) for r in (8, 16)}
    field, seen = G.field(levels), []

    def watched(points):
        seen.append(points.shape[1])
        return field(points)

    with NoCPUTensors():
        origins, dirs = rays_from_label(meta_label(2), 4)
        out = render_rays(
            watched, origins, dirs, RenderConfig(depth_resolution=6, depth_resolution_importance=6), chunk=8
        )
        out["features"].sum().backward()
    assert seen == [8 * 6 - 1] * 4  # 2 chunks × (coarse, fine), each compacted
    assert levels[8].grad.device == META


def test_refinement_fit_step_and_views(G):
    cfg = RefineFitConfig(
        resolution=16, patch_resolution=8, depth_resolution=6, depth_resolution_importance=6
    )
    ws = torch.empty(1, G.num_ws, G.cfg.w_dim, device=META)
    levels = {r: torch.empty(1, 3, 36, r, r, device=META, requires_grad=True) for r in G.cfg.level_sizes}
    labels = meta_label(3)
    with NoCPUTensors():
        views = G.render(
            levels,
            ws.expand(3, -1, -1),
            labels,
            resolution=16,
            deterministic=True,
            depth_resolution=12,
            depth_resolution_importance=12,
        )["image"]
        assert views.shape == (3, 3, 16, 16) and views.device == META
        loss = patch_loss(G, levels, ws, labels[:1], views[:1], 4, 8, cfg)
        loss.backward()
        assert loss.device == META and levels[8].grad.device == META


def test_inversion_step(G):
    cfg = InversionConfig(steps=10, resolution=8)
    w_opt = torch.empty(1, G.num_ws, G.cfg.w_dim, device=META, requires_grad=True)
    noise = [
        b.requires_grad_(True) for n, b in G.backbone.synthesis.named_buffers() if n.endswith("noise_const")
    ]
    target = torch.empty(1, 3, 8, 8, device=META)

    def distance(a, b):
        return (a - b).square().mean((1, 2, 3))

    try:
        with NoCPUTensors():
            dist, loss = inversion_step(
                G, w_opt, noise, target, meta_label(), distance, cfg, t=0.1, w_std=1.0
            )
            loss.backward()
        assert dist.device == META and w_opt.grad.device == META
        assert all(b.grad is not None for b in noise)
    finally:
        for b in noise:
            b.requires_grad_(False)


def test_step_timings_touch_cuda_only_in_a_cuda_run_and_on_its_device(tmp_path, monkeypatch):
    """The initialiser's timings.json: a CPU run on a machine with a GPU opens no CUDA context;
    a run on cuda:1 reads cuda:1's peak (not GPU 0's)."""
    from gan_prior.files import read_json
    from gan_prior.portrait_init import _StepTimer

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: calls.append(device) or 2**21)
    path = str(tmp_path / "timings.json")
    assert _StepTimer(path, "cpu")("inversion", lambda: 7) == 7
    assert calls == [] and "peak_cuda_mib" not in read_json(path)["inversion"]
    _StepTimer(path, "cuda:1")("inversion", lambda: 7)
    assert calls == [torch.device("cuda:1")] * 2 and read_json(path)["inversion"]["peak_cuda_mib"] == 2.0
