"""No host–device round trips in the hot paths, counted on the CPU.

On a GPU, reading a value on the host (``.item()``, ``bool(t)``, ``int(t)``) waits for every queued
kernel; a tensor made from Python data (an index list, ``torch.tensor([...])``) is built on the host
and copied to the device on every call; a shape that depends on values (a boolean mask index,
``nonzero``) does both. :class:`HostSyncs` counts the ATen operations behind each of them, so these
tests count on a machine without a GPU what a GPU run would wait for. The renderer runs its CUDA
code path here (``grid_sample``; the compiled CPU kernels are switched off).
"""

import types

import pytest
import torch
from helpers import requires_threestudio
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import gan_prior.pyramid_trigrid as pyramid_trigrid
from gan_prior import PortraitGAN, canonical_label, tiny_config
from gan_prior.camera import gan_to_threestudio_points, threestudio_to_gan_points
from gan_prior.inversion import InversionConfig, invert
from gan_prior.renderer import RenderConfig, rays_from_label, render_rays

READS = {"aten._local_scalar_dense"}  # .item(), bool(t), int(t), float(t)
HOST_TENSORS = {"aten.lift_fresh", "aten.lift_fresh_copy"}  # a tensor from Python data
DATA_DEPENDENT = {"aten.nonzero", "aten.masked_select", "aten.unique_dim", "aten._unique2"}


class HostSyncs(TorchDispatchMode):
    """Counts host reads, host-made tensors, value-dependent shapes and host-to-device copies (each
    a GPU sync; a copy to ``meta`` stands for one to a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads, self.host_tensors, self.data_dependent, self.copies = [], [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        if name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            out = func(*args, **(kwargs or {}))
            if src.device.type == "cpu" and out.device.type != "cpu":
                self.copies.append(tuple(src.shape))
            return out
        if name in READS:
            self.reads.append(name)
        elif name in HOST_TENSORS:
            self.host_tensors.append(name)
        elif name in DATA_DEPENDENT or (
            name in ("aten.index", "aten.index_put", "aten.index_put_")
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        ):
            self.data_dependent.append(name)
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_each_kind_of_sync():
    x = torch.arange(6.0)
    with HostSyncs() as syncs:
        x.sum().item()
        bool(x.any())
        x[..., [0, 2]]
        x[x > 2]
        (x * 2).add_(1)  # none
    assert len(syncs.reads) == 2 and len(syncs.host_tensors) == 1 and len(syncs.data_dependent) == 1


@pytest.fixture()
def cuda_code_path(monkeypatch):
    """The renderer as on a GPU: grid_sample lookups, not the compiled CPU kernels."""
    monkeypatch.setattr(pyramid_trigrid, "_cpu_kernels", lambda: None)


@pytest.mark.parametrize("deterministic, chunk, chunks", [(True, 40, 4), (False, None, 1)])
def test_a_render_reads_one_count_per_pass_and_chunk_and_copies_nothing(
    cuda_code_path, deterministic, chunk, chunks
):
    """Per chunk: the crop skip's kept count for the coarse and the fine pass; per render: one
    safety flag. No index list, no constant made on the host; values and gradients flow."""
    G = PortraitGAN.random(tiny_config(), seed=0)
    c = canonical_label(2)
    ws = G.mapping(torch.randn(2, G.cfg.z_dim, generator=torch.Generator().manual_seed(0)), c)
    with torch.no_grad():
        levels = {r: t.requires_grad_(True) for r, t in G.synthesize_pyramid(ws).items()}
    with HostSyncs() as syncs:
        out = G.render(levels, ws, c, resolution=12, deterministic=deterministic, chunk=chunk)
        out["image"].square().mean().backward()
    assert (len(syncs.reads), syncs.host_tensors, syncs.data_dependent) == (2 * chunks + 1, [], [])
    assert out["image"].shape == (2, 3, 12, 12) and all(t.grad is not None for t in levels.values())


def test_camera_conversions_copy_nothing():
    points, label = torch.randn(5, 3), canonical_label(1)
    with HostSyncs() as syncs:
        back = gan_to_threestudio_points(threestudio_to_gan_points(points))
        origins, dirs = rays_from_label(label, 4)
        render_rays(
            lambda p: (p[..., :1], p), origins, dirs, RenderConfig(depth_resolution_importance=0), True
        )
    assert torch.equal(back, points)
    assert syncs.host_tensors == [] and syncs.data_dependent == []


def test_the_inversion_reads_its_distance_every_few_steps_not_every_step(cuda_code_path, monkeypatch):
    G = PortraitGAN.random(tiny_config(), seed=0)
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    cfg = InversionConfig(steps=12, resolution=8, w_avg_samples=10, optimize_noise=False, mode="raw")
    adam_step = torch.optim.Adam.step

    def uncounted(self, *args, **kwargs):  # Adam reads its step counter, a host tensor on a GPU too
        with _disable_current_modes():
            return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", uncounted)
    with HostSyncs() as syncs:
        result = invert(G, target, canonical_label(1), lambda a, b: (a - b).square().mean((1, 2, 3)), cfg)
    assert len(result["distance"]) == 12 and all(isinstance(d, float) for d in result["distance"])
    renders = 12 + 1  # each step's and the final one: 2 kept counts + 1 safety flag each
    progress = 3  # the bar's distance at steps 0, 10 and 11 (the last)
    assert len(syncs.reads) == 3 * renders + progress + 1, len(syncs.reads)  # + w_std (w_statistics)
    assert syncs.data_dependent == []


def test_the_non_finite_guard_reads_once_per_step_whatever_the_number_of_levels(monkeypatch):
    """The loss and every gradient are checked together on the device: one read per step (it was one
    per pyramid level, plus one for the loss)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "custom", "threestudio-portrait3d", "system")
    spec = importlib.util.spec_from_file_location("p3d_safeguards", os.path.join(path, "safeguards.py"))
    safeguards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(safeguards)
    levels = [torch.nn.Parameter(torch.ones(1, 3, 4, r, r)) for r in (8, 16, 32, 64, 128, 256, 512)]
    opt = torch.optim.SGD(levels, lr=0.1)
    run = type("Run", (safeguards.NonFiniteGuard,), {"true_global_step": 0})()

    def closure():
        opt.zero_grad()
        result = run.guard_loss({"loss": sum(p.square().mean() for p in levels)})
        result["loss"].backward()
        return result["loss"]

    with HostSyncs() as syncs:
        run.optimizer_step(0, 0, opt, closure)
    assert len(syncs.reads) == 1 and not torch.equal(levels[0].detach(), torch.ones(1, 3, 4, 8, 8))


@pytest.mark.parametrize("marks", [pytest.param(None, marks=requires_threestudio)])
def test_a_refinement_fit_step_copies_its_target_to_the_device_once(marks):
    """The 21 refined targets travel in the checkpoints on the CPU; the fit reads them from one copy
    on the run's device (it copied a target and a label every step)."""
    from threestudio_env import import_extension

    from gan_prior.refinement import RefineFitConfig

    system = import_extension().find("portrait3d-system")
    stage = next(c for c in system.__mro__ if c.__name__ == "RefinementStage")
    meta = torch.device("meta")

    def render_labels(label, resolution, patch, **kwargs):
        assert label.device == meta
        return {"image": torch.zeros(1, 3, 8, 8, device=meta), "mask": torch.ones(1, 1, 8, 8, device=meta)}

    class Fit(stage):
        device = meta
        cfg = types.SimpleNamespace(sds_steps=10, refine=types.SimpleNamespace(view_seed=0))
        fit_cfg = RefineFitConfig(resolution=16, patch_resolution=8)
        refine_targets = torch.zeros(21, 3, 16, 16, dtype=torch.uint8)
        refine_labels = torch.zeros(21, 25)
        renderer = types.SimpleNamespace(render_labels=render_labels)

        def log(self, *args, **kwargs):
            pass

    fit = Fit()
    with HostSyncs() as syncs:
        for step in range(10, 14):
            fit.true_global_step = step
            assert fit.refine_step()["loss"].device == meta
    assert syncs.copies == [(21, 3, 16, 16), (21, 25)]  # (the schedule draws on a host generator)
