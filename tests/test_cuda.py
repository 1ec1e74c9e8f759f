"""The core paths on CUDA against the CPU (skipped without a GPU; run by bench/gpu_check.sh).

Each test runs the same computation, with the same weights and inputs, on the CPU and on the GPU,
and compares values and gradients: a device bug (a tensor left on the CPU, a kernel that differs)
shows up here as a failure. Jitter is off (``deterministic=True``) so both sides sample the same
points; the tolerances cover float32 reduction-order differences between the two devices.

TF32 is off here (both flags, :func:`full_float32`): these are float32 parity tests. A training run
uses TF32 (``system.allow_tf32``, on by default), whose 10-bit mantissa these tolerances do not
cover (emulated on the CPU: generator level 16 off by 0.0103 against a tolerance of 0.0099).
"""

import os

import pytest
import torch
from helpers import NEEDS_CUDA, requires_threestudio

from gan_prior import PortraitGAN, canonical_label, tiny_config
from gan_prior.inversion import InversionConfig, inversion_step
from gan_prior.refinement import RefineFitConfig, patch_loss, refinement_labels

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_float32():
    """cuDNN convolutions (on by default) and matmuls in full float32 during each test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def close(a, b, rtol=1e-3, atol=1e-4):
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol + rtol * b.abs().max().item(), f"max abs difference {err}"


@pytest.fixture(scope="module")
def models():
    g = PortraitGAN.random(tiny_config(), seed=0)
    return g, PortraitGAN.random(tiny_config(), seed=0).to(CUDA)


def test_generator_on_cuda_matches_cpu(models):
    cpu, gpu = models
    z = torch.randn(2, cpu.cfg.z_dim, generator=torch.Generator().manual_seed(0))
    c = canonical_label(2)
    ws = cpu.mapping(z, c)
    ws_g = gpu.mapping(z.to(CUDA), c.to(CUDA))
    close(ws_g, ws)
    pyr, pyr_g = cpu.synthesize_pyramid(ws), gpu.synthesize_pyramid(ws_g)
    for r in pyr:
        assert pyr_g[r].device.type == "cuda"
        close(pyr_g[r], pyr[r])


def test_renderer_values_and_gradients_on_cuda_match_cpu(models):
    cpu, gpu = models
    ws = cpu.mapping(
        torch.randn(1, cpu.cfg.z_dim, generator=torch.Generator().manual_seed(1)), canonical_label(1)
    )
    with torch.no_grad():
        pyr = cpu.synthesize_pyramid(ws)
    labels = refinement_labels(0)[:2]
    results = []
    for g, dev in ((cpu, "cpu"), (gpu, CUDA)):
        levels = {r: t.to(dev).requires_grad_(True) for r, t in pyr.items()}
        out = g.render(
            levels, ws.to(dev).expand(2, -1, -1), labels.to(dev), resolution=24, deterministic=True
        )
        out["image"].square().mean().backward()
        results.append((out, {r: t.grad for r, t in levels.items()}))
    (o_c, g_c), (o_g, g_g) = results
    for k in ("image", "depth", "mask"):
        close(o_g[k], o_c[k])
    for r in g_c:
        close(g_g[r], g_c[r])


def test_inversion_step_on_cuda_matches_cpu(models):
    cpu, gpu = models
    cfg = InversionConfig(resolution=16, deterministic=True, initial_noise_factor=0.0)
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    w0 = cpu.mapping(
        torch.randn(1, cpu.cfg.z_dim, generator=torch.Generator().manual_seed(3)), canonical_label(1)
    )
    grads = []
    for g, dev in ((cpu, "cpu"), (gpu, CUDA)):
        w = w0.detach().to(dev).requires_grad_(True)
        dist, loss = inversion_step(
            g,
            w,
            [],
            target.to(dev),
            canonical_label(1).to(dev),
            lambda a, b: (a - b).square().mean((1, 2, 3)),
            cfg,
            t=0.5,
            w_std=1.0,
        )
        loss.backward()
        grads.append((dist, w.grad))
    close(grads[1][0], grads[0][0])
    close(grads[1][1], grads[0][1], rtol=1e-2)


def test_nearest_faces_and_posed_render_on_cuda_match_cpu():
    """The deformation's exact nearest-face search (the same code on both devices) picks the same
    faces, and a posed render (SMPL deformation) and its pose gradient agree."""
    from gan_prior.mesh_distance import nearest_triangles
    from gan_prior.synthetic_smpl import fill_deformation, smpl_like_template

    t = smpl_like_template(0, 36, 34)
    tris = t["v_template"].float()[t["faces"]]
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(5)) * 0.8 - 0.4
    d2, index = nearest_triangles(points, tris, 0.25)
    d2_g, index_g = nearest_triangles(points.to(CUDA), tris.to(CUDA), 0.25)
    assert torch.equal(index_g.cpu(), index)
    near = torch.isfinite(d2)
    assert torch.equal(torch.isfinite(d2_g).cpu(), near) and near.any()
    close(d2_g[near.to(CUDA)], d2[near])

    cfg = tiny_config(pose_branch=True, smpl_vertices=36 * 34 + 2, smpl_faces=2 * 36 * 34)
    cpu = PortraitGAN.random(cfg, seed=4)
    fill_deformation(cpu.renderer, t, cfg.render.box_warp)
    gpu = PortraitGAN.random(cfg, seed=4)
    fill_deformation(gpu.renderer, t, cfg.render.box_warp)
    gpu = gpu.to(CUDA)
    c, pose = canonical_label(1), torch.tensor([[0.3, 0.2, -0.2, 0.3, -0.3, 0.2]])
    ws = cpu.mapping(torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(6)), c)
    with torch.no_grad():
        pyr = cpu.synthesize_pyramid(ws)
    results = []
    for g, dev in ((cpu, "cpu"), (gpu, CUDA)):
        p = pose.to(dev).requires_grad_(True)
        levels = {r: x.to(dev) for r, x in pyr.items()}
        out = g.render(levels, ws.to(dev), c.to(dev), resolution=24, deterministic=True, pose=p)
        out["image"].square().mean().backward()
        results.append((out, p.grad))
    (o_c, g_c), (o_g, g_g) = results
    for k in ("image", "depth", "mask"):
        close(o_g[k], o_c[k])
    close(g_g, g_c, rtol=1e-2)


def test_refinement_fit_step_on_cuda_matches_cpu(models):
    cpu, gpu = models
    cfg = RefineFitConfig(
        resolution=32, patch_resolution=16, depth_resolution=12, depth_resolution_importance=12
    )
    ws = cpu.mapping(
        torch.randn(1, cpu.cfg.z_dim, generator=torch.Generator().manual_seed(4)), canonical_label(1)
    )
    with torch.no_grad():
        pyr = cpu.synthesize_pyramid(ws)
    label = refinement_labels(0)[5:6]
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    out = []
    for g, dev in ((cpu, "cpu"), (gpu, CUDA)):
        levels = {r: t.to(dev).requires_grad_(True) for r, t in pyr.items()}
        loss = patch_loss(g, levels, ws.to(dev), label.to(dev), target.to(dev), 8, 4, cfg, deterministic=True)
        loss.backward()
        out.append((loss, levels[16].grad))
    close(out[1][0], out[0][0])
    close(out[1][1], out[0][1], rtol=1e-2)


def test_sdedit_on_cuda_matches_cpu(tmp_path):
    from diffusers import StableDiffusionPipeline

    from gan_prior.diffusion import SDEditConfig, sdedit
    from gan_prior.tiny_models import build_tiny_stable_diffusion

    build_tiny_stable_diffusion(str(tmp_path / "sd"))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    outs = []
    for dev in ("cpu", "cuda"):
        pipe = StableDiffusionPipeline.from_pretrained(
            str(tmp_path / "sd"), safety_checker=None, requires_safety_checker=False
        ).to(dev)
        outs.append(sdedit(pipe, images.to(dev), "a portrait", SDEditConfig(steps=10), progress=False))
    assert outs[1].device.type == "cuda"
    close(outs[1], outs[0], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("config", [pytest.param("configs/portrait3d-tiny.yaml", marks=requires_threestudio)])
def test_tiny_launch_train_on_cuda(tmp_path, config):
    """threestudio's launch.py --train with the tiny config, on the GPU: the whole pipeline runs and
    writes the refinement views and the videos."""
    from threestudio_env import launch, make_worktree

    tree = make_worktree(str(tmp_path / "ts"))
    proc = launch(
        tree,
        str(tmp_path / "cache"),
        "--config",
        config,
        "--train",
        "--gpu",
        "0",
        "use_timestamp=false",
        "tag=cuda",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    save = os.path.join(tree, "outputs", "portrait3d-tiny")
    found = {f for _, _, files in os.walk(save) for f in files}
    assert any(f.endswith("large_pose.mp4") for f in found), sorted(found)[:20]
    assert any(f.startswith("refined_") for f in found), sorted(found)[:20]
