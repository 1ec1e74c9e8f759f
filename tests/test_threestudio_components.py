"""The extension's components in threestudio's contracts, driven in-process.

The key check: rendering the initial pyramid through ``portrait3d-renderer`` with threestudio's
cameras (our pivot-aimed datamodule) gives the same pixels as ``gan_prior``'s own render of the
same pyramid from the equivalent GAN camera label — which proves the camera mapping.
"""

import json
import os
import re

import numpy as np
import pytest
import torch
from helpers import requires_threestudio

from gan_prior import PortraitGAN, save_pyramid, threestudio_c2w_to_label, tiny_config

pytestmark = requires_threestudio


@pytest.fixture(scope="module")
def ts():
    from threestudio_env import import_extension

    return import_extension()


def ts_module(name: str):
    """A module of the loaded extension (``threestudio-portrait3d``), e.g. ``"utils.uv_rasterizer"``."""
    import importlib

    from portrait3d.threestudio_env import EXTENSION

    return importlib.import_module(f"{EXTENSION}.{name}")


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prior") / "gan")
    PortraitGAN.random(tiny_config(), seed=3).save(path)
    return path


def build(ts, prior_path, mode="torgb-bias", **init):
    g = ts.find("pyramid-trigrid")({"checkpoint": prior_path, "level_sizes": [8, 16, 32]})
    m = ts.find("portrait3d-gan-material")({"checkpoint": prior_path})
    bg = ts.find("portrait3d-gan-background")({"checkpoint": prior_path, "mode": mode})
    r = ts.find("portrait3d-renderer")(
        {"depth_resolution": 12, "depth_resolution_importance": 12}, geometry=g, material=m, background=bg
    )
    levels, ws = ts.find("gan-prior-initializer")({"checkpoint": prior_path, "seed": 5, **init})()
    g.set_levels(levels)
    m.set_ws(ws)  # the one copy of ws: the renderer hands it to the background
    return g, m, bg, r.eval(), levels, ws


def eval_batches(ts, n=4, size=16):  # n != 3: threestudio's eval cameras break at 3 views
    dm = ts.find("portrait3d-camera-datamodule")(
        {"eval_height": size, "eval_width": size, "n_test_views": n, "eval_elevation_deg": 12.0}
    )
    dm.setup("test")
    return [dm.test_dataset.collate([dm.test_dataset[i]]) for i in range(n)]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"width": "abc"}, "data.width='abc': give a whole number ≥ 1 (at most 4096), or a list of them"),
        ({"batch_size": 0}, "data.batch_size=0: give a whole number ≥ 1, or a list of them"),
        ({"height": 8192}, "data.height=8192: give a whole number ≥ 1 (at most 4096)"),
        ({"width": [64, 128]}, "data.height, data.width and data.batch_size give 1, 2 and 1 values"),
        (  # threestudio's dataset asserts equal lengths: a single batch size beside two stages failed at setup
            {"width": [64, 128], "height": [64, 128], "resolution_milestones": [100]},
            "data.height, data.width and data.batch_size give 2, 2 and 1 values: give one, or "
            "len(data.resolution_milestones) + 1 = 2 each",
        ),
        (
            {"width": [64, 128], "height": [64, 128], "batch_size": [1, 1]},
            "data.height, data.width and data.batch_size give 2, 2 and 2 values: give one, or "
            "len(data.resolution_milestones) + 1 = 1 each",
        ),
        ({"eval_width": 0}, "data.eval_width=0: give a whole number from 1 to 4096"),
        ({"n_test_views": 0}, "data.n_test_views=0: give a whole number from 1 to 100000"),
        ({"elevation_range": [-15, float("nan")]}, "data.elevation_range[1]=nan: give a finite number"),
        ({"widht": 64}, "data.widht is not a setting of Portrait3DCameraConfig; did you mean width?"),
        (
            {"elevation_range": [30, -15]},
            "data.elevation_range=[30.0, -15.0]: give [low, high] with low ≤ high",
        ),
        ({"camera_distance_range": [-1, -1]}, "data.camera_distance_range=[-1.0, -1.0]: give [low, high]"),
        (
            {"fovy_range": [0, 0]},
            "data.camera_distance_range=[2.7, 2.7] and data.fovy_range=[0.0, 0.0]: distances",
        ),
        ({"eval_fovy_deg": 180}, "data.eval_camera_distance=2.7, data.eval_fovy_deg=180.0"),
        ({"center_perturb": 0.1}, "data.center_perturb and data.up_perturb must be 0"),
    ],
)
def test_the_camera_settings_are_checked_when_the_datamodule_is_made(ts, settings, message):
    """What threestudio's dataset would fail on at ``setup`` (an assert, a range error) or train with
    silently (a NaN range): one line naming the setting, when launch.py makes the datamodule."""
    with pytest.raises(ValueError) as e:
        ts.find("portrait3d-camera-datamodule")(settings)
    assert str(e.value).startswith(message), str(e.value)
    resolutions = {
        "width": [64, 128],
        "height": [64, 128],
        "batch_size": [1, 1],
        "resolution_milestones": [100],
    }
    assert ts.find("portrait3d-camera-datamodule")(resolutions).cfg.width == [64, 128]  # threestudio's stages


@pytest.mark.parametrize("level", ["abc", float("nan"), True])
def test_an_isosurface_level_that_is_not_one_is_refused_when_the_geometry_is_made(ts, prior_path, level):
    """``--train`` used to accept it and ``--export`` failed after training, without naming it."""
    with pytest.raises(ValueError, match=r"^system.geometry.isosurface_threshold=.*: give the density level"):
        ts.find("pyramid-trigrid")(
            {"checkpoint": prior_path, "level_sizes": [8, 16, 32], "isosurface_threshold": level}
        )
    for fine in ("auto", 15):
        ts.find("pyramid-trigrid")(
            {"checkpoint": prior_path, "level_sizes": [8, 16, 32], "isosurface_threshold": fine}
        )


@pytest.mark.parametrize("size", [0, 100000])
def test_an_isosurface_grid_size_out_of_range_is_refused_when_the_geometry_is_made(ts, prior_path, size):
    """``--export`` ended in an IndexError (0) or ran out of memory (100000) after loading the run."""
    with pytest.raises(
        ValueError,
        match=rf"^system.geometry.isosurface_resolution={size!r}: give the marching-cubes grid size, 2 to 1024",
    ):
        ts.find("pyramid-trigrid")(
            {"checkpoint": prior_path, "level_sizes": [8, 16, 32], "isosurface_resolution": size}
        )
    ts.find("pyramid-trigrid")(
        {"checkpoint": prior_path, "level_sizes": [8, 16, 32], "isosurface_resolution": 512}
    )


@pytest.mark.parametrize("mode", ["torgb-bias", "gan"])
def test_threestudio_render_equals_gan_prior_render(ts, prior_path, mode):
    g, m, bg, renderer, levels, ws = build(ts, prior_path, mode)
    prior = PortraitGAN.from_checkpoint(prior_path)
    for batch in eval_batches(ts):
        with torch.no_grad():
            out = renderer(**batch)
            label = threestudio_c2w_to_label(batch["c2w"], torch.rad2deg(batch["fovy"]))
            ref = prior.render(
                levels, ws, label, resolution=16, deterministic=True, background=(mode == "gan")
            )
        expected = (ref["image"] * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
        assert (out["comp_rgb"] - expected).abs().max() < 2e-5
        assert (out["opacity"] - ref["opacity"].permute(0, 2, 3, 1)).abs().max() < 1e-5
        assert (out["depth"] - ref["depth"].permute(0, 2, 3, 1)).abs().max() < 1e-4


@pytest.mark.parametrize("background", [True, False])
def test_stage2_renders_through_the_components_equal_the_gan_prior(ts, prior_path, background):
    """render_labels (refinement views, fit patches, official videos) = PortraitGAN.render on the
    same pyramid and ws, exactly (gan_prior.renderer.render_view serves both): image in the ToRGB
    range, the official mask, any patch window."""
    from gan_prior.refinement import refinement_labels

    _, _, _, renderer, levels, ws = build(ts, prior_path, "torgb-bias")  # stage 2 needs no "gan" mode
    prior = PortraitGAN.from_checkpoint(prior_path)
    labels = refinement_labels(0)[::10]
    for label, patch in zip(labels, (None, (3, 5, 8), (8, 0, 8))):
        with torch.no_grad():
            out = renderer.render_labels(
                label[None],
                16,
                background=background,
                patch=patch,
                chunk=100,
                depth_resolution=10,
                depth_resolution_importance=6,
            )
            ref = prior.render(
                levels,
                ws,
                label[None],
                resolution=16,
                deterministic=True,
                background=background,
                patch=patch,
                chunk=100,
                depth_resolution=10,
                depth_resolution_importance=6,
            )
        assert out["image"].shape == ref["image"].shape == (1, 3, 8 if patch else 16, 8 if patch else 16)
        for key in ("image", "mask", "depth", "features"):  # one render path: the same numbers
            assert torch.equal(out[key], ref[key]), key
    with pytest.raises(ValueError, match="system.background_type must be portrait3d-gan-background"):
        ts.find("portrait3d-renderer")(
            {},
            geometry=renderer.geometry,
            material=renderer.material,
            background=ts.find("solid-color-background")({}),
        ).render_labels(labels, 8)


def test_cameras_orbit_the_origin_and_look_at_the_pivot(ts):
    for batch in eval_batches(ts, n=4):
        c2w = batch["c2w"][0]
        pos = c2w[:3, 3]
        assert abs(pos.norm().item() - 2.7) < 1e-5
        forward = -c2w[:3, 2]
        to_pivot = torch.tensor([0.0, 0.0, 0.0649]) - pos
        assert torch.allclose(forward, to_pivot / to_pivot.norm(), atol=1e-6)
        centre_ray = batch["rays_d"][0].reshape(-1, 3).mean(0)
        assert torch.allclose(centre_ray / centre_ray.norm(), forward, atol=1e-5)


def test_gradients_reach_only_the_pyramid(ts, prior_path):
    g, m, bg, renderer, _, _ = build(ts, prior_path)
    renderer.train()
    batch = eval_batches(ts, n=1, size=8)[0]
    out = renderer(**batch)
    assert out["weights"].shape[-2] == 23  # 12 + 12 samples → 23 intervals
    out["comp_rgb"].mean().backward()
    for r, t in g.levels.items():
        assert t.grad is not None and t.grad.abs().sum() > 0, r
    frozen = list(g.decoder.parameters()) + list(m.parameters()) + list(bg.parameters())
    assert all(p.grad is None for p in frozen)


def test_initializer_reads_pyramid_files_and_rejects_mismatches(ts, prior_path, tmp_path):
    levels, ws = ts.find("gan-prior-initializer")({"checkpoint": prior_path, "seed": 1})()
    official = str(tmp_path / "001_pyramid_trigrid.pth")
    save_pyramid(official, levels, ws, fmt="official")
    got, got_ws = ts.find("gan-prior-initializer")(
        {"checkpoint": prior_path, "source": "pyramid", "pyramid_path": official}
    )()
    assert all(torch.equal(got[r], levels[r]) for r in levels) and torch.equal(got_ws, ws)
    g = ts.find("pyramid-trigrid")({"checkpoint": prior_path, "level_sizes": [8, 16, 32, 64]})
    with pytest.raises(
        ValueError, match=r"pyramid levels \[8, 16, 32\] do not match system.geometry.level_sizes"
    ):
        g.set_levels(got)


def test_initializer_inverts_a_users_photo_into_its_own_folder_and_reuses_it(ts, prior_path, tmp_path):
    """source=image: the photo is aligned (detector 'none': already a square crop), inverted, and the
    pyramid made from w+; everything lands in <save>/init/<key>/ and is reused by the next call."""
    import imageio.v2 as imageio

    from gan_prior import canonical_label, load_pyramid

    G = PortraitGAN.from_checkpoint(prior_path)
    with torch.no_grad():
        ws = G.mapping(
            torch.randn(1, G.cfg.z_dim, generator=torch.Generator().manual_seed(2)), canonical_label(1)
        )
        photo = G.render(G.synthesize_pyramid(ws), ws, canonical_label(1), resolution=32, deterministic=True)[
            "image"
        ]
    imageio.imwrite(
        tmp_path / "me.png", ((photo[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255)).byte().numpy()
    )
    portrait = {
        "image": str(tmp_path / "me.png"),
        "detector": "none",
        "aligned_resolution": 32,
        "vgg16": "random",
        "inversion": {"steps": 2, "w_avg_samples": 8, "resolution": 32},
    }
    cfg = {"checkpoint": prior_path, "source": "image", "portrait": portrait}
    init = ts.find("gan-prior-initializer")(cfg)
    levels, got_ws = init(save_dir=str(tmp_path / "save"))
    folders = os.listdir(tmp_path / "save" / "init")
    assert len(folders) == 1
    out = tmp_path / "save" / "init" / folders[0]
    assert sorted(os.listdir(out)) == [
        "aligned.png",
        "alignment.json",
        "comparison.png",
        "input",
        "inversion.json",
        "pyramid.safetensors",
        "timings.json",
        "w_plus.safetensors",
    ]
    # the photo is kept with what was made from it, named inside the folder (the report shows it)
    assert (out / "input" / "me.png").read_bytes() == (tmp_path / "me.png").read_bytes()
    assert json.load(open(out / "alignment.json"))["report"][0]["name"] == "input/me.png"
    saved, saved_ws = load_pyramid(str(out / "pyramid.safetensors"))
    assert all(torch.equal(levels[r], saved[r]) for r in saved) and torch.equal(got_ws, saved_ws)
    with torch.no_grad():  # the pyramid is the generator's synthesis of the inverted w+
        assert all(torch.allclose(G.synthesize_pyramid(got_ws)[r], levels[r], atol=1e-5) for r in levels)
    stamp = os.path.getmtime(out / "pyramid.safetensors")
    again, _ = ts.find("gan-prior-initializer")(cfg)(save_dir=str(tmp_path / "save"))
    assert os.path.getmtime(out / "pyramid.safetensors") == stamp and all(
        torch.equal(again[r], levels[r]) for r in levels
    )
    with pytest.raises(ValueError, match="system.initializer.portrait.image: .*gone.png not found"):
        ts.find("gan-prior-initializer")(
            {**cfg, "portrait": {**portrait, "image": str(tmp_path / "gone.png")}}
        )(save_dir=str(tmp_path))
    with pytest.raises(
        ValueError, match="system.initializer.portrait.vgg16: the inversion needs a perceptual network"
    ):
        ts.find("gan-prior-initializer")({**cfg, "portrait": {**portrait, "vgg16": None}})(
            save_dir=str(tmp_path)
        )
    with pytest.raises(ValueError, match="system.initializer.portrait.prompt is empty"):
        ts.find("gan-prior-initializer")(
            {**cfg, "source": "prompt", "portrait": {**portrait, "prompt": " "}}
        )(save_dir=str(tmp_path))
    for rounds in (-1, 1.5, True):
        with pytest.raises(
            ValueError,
            match=rf"system.initializer.portrait.camera_pose_rounds: {rounds!r} is not a whole number ≥ 0; give 1",
        ):
            ts.find("gan-prior-initializer")({**cfg, "portrait": {**portrait, "camera_pose_rounds": rounds}})(
                save_dir=str(tmp_path)
            )
    for starts in (0, 2.5, False):
        with pytest.raises(
            ValueError,
            match=rf"system.initializer.portrait.camera_search_starts: {starts!r} is not a whole number ≥ 1; give 3",
        ):
            ts.find("gan-prior-initializer")(
                {**cfg, "portrait": {**portrait, "camera_search_starts": starts}}
            )(save_dir=str(tmp_path))
    # settings that divided by zero (camera_resolution 0, a ramp length 0) or ran backwards
    for change, message in (
        (
            {"camera_resolution": 0},
            "camera_resolution: 0 must be a whole number ≥ 8 and ≤ 4096; the default is 64",
        ),
        ({"max_padding": -1}, "max_padding: -1 must be a number ≥ 0 and ≤ 1; the default is 0.2"),
        ({"camera_refine_to_deg": -1}, "camera_refine_to_deg: -1 must be a number ≥ 0 and ≤ 90"),
        ({"aligned_resolution": 10}, "aligned_resolution: 10 must be a whole number ≥ 16"),
        ({"inversion": {"steps": -1}}, "inversion.steps: -1 must be a whole number ≥ 0 and ≤ 100000"),
        ({"inversion": {"lr_rampup_length": 0}}, "inversion.lr_rampup_length: 0 must be a number > 0"),
        (
            {"inversion": {"sampling_multiplier": 100}},
            "inversion.sampling_multiplier: 100 must be a number > 0 and ≤ 10",
        ),
    ):
        with pytest.raises(ValueError, match=re.escape(f"system.initializer.portrait.{message}")):
            ts.find("gan-prior-initializer")({**cfg, "portrait": {**portrait, **change}})(
                save_dir=str(tmp_path)
            )
    with pytest.raises(ValueError, match=r"system.initializer.portrait: unknown key\(s\) \['detektor'\]"):
        ts.find("gan-prior-initializer")({**cfg, "portrait": {**portrait, "detektor": "none"}})(
            save_dir=str(tmp_path)
        )


def test_bad_configs_give_clear_errors(ts, prior_path, tmp_path):
    missing = str(tmp_path / "nope" / "model_512.pkl")
    with pytest.raises(ValueError, match="system.geometry.checkpoint: .*model_512.pkl not found"):
        ts.find("pyramid-trigrid")({"checkpoint": missing})
    with pytest.raises(ValueError, match="system.background.mode must be"):
        ts.find("portrait3d-gan-background")({"checkpoint": prior_path, "mode": "white"})
    with pytest.raises(ValueError, match="system.initializer.pyramid_path: .*file not found"):
        ts.find("gan-prior-initializer")(
            {"checkpoint": prior_path, "source": "pyramid", "pyramid_path": str(tmp_path / "x.pth")}
        )()
    with pytest.raises(TypeError, match="unexpected keyword argument 'levels'"):
        ts.find("pyramid-trigrid")({"checkpoint": prior_path, "levels": [8]})
    with pytest.raises(KeyError):
        ts.find("pyramid-trigrids")


def test_a_config_never_names_code(ts, prior_path, monkeypatch):
    """``system.initializer.portrait.detector`` from a config, a batch override or a shared parsed.yaml
    may not name a ``module:attr``: refused when the component is built, before any image exists,
    unless the user's own environment allows exactly that detector."""
    from gan_prior.alignment import DETECTORS_ENV

    monkeypatch.delenv(DETECTORS_ENV, raising=False)
    for source in ("prompt", "image"):
        with pytest.raises(
            ValueError, match="portrait.detector: detector 'pickle:loads': a 'module:attr' detector"
        ):
            ts.find("gan-prior-initializer")(
                {"checkpoint": prior_path, "source": source, "portrait": {"detector": "pickle:loads"}}
            )
    spec = "tests.test_alignment:MarkerDetector"
    monkeypatch.setenv(DETECTORS_ENV, spec)
    ts.find("gan-prior-initializer")(
        {"checkpoint": prior_path, "source": "image", "portrait": {"detector": spec}}
    )


def test_renderer_options_are_bounded_before_anything_renders(ts, prior_path):
    """A config asking for 4096 samples per ray allocated gigabytes and ended as "unexpected
    RuntimeError … (a bug)": refused when the renderer is built, naming the option and the bound."""
    g = ts.find("pyramid-trigrid")({"checkpoint": prior_path, "level_sizes": [8, 16, 32]})
    m = ts.find("portrait3d-gan-material")({"checkpoint": prior_path})
    bg = ts.find("portrait3d-gan-background")({"checkpoint": prior_path})
    for option, value, why in (
        ("depth_resolution", 4096, "expected an integer between 1 and 512"),
        ("depth_resolution_importance", -1, "expected an integer between 0 and 512"),
        ("ray_start", float("nan"), "expected a finite number"),
    ):
        with pytest.raises(ValueError, match=f"system.renderer.{option} = .*; {why}"):
            ts.find("portrait3d-renderer")({option: value}, geometry=g, material=m, background=bg)


def test_exported_mesh_is_the_density_level_set_in_the_gan_gltf_frame(ts, prior_path):
    """The exporter's vertices are in the GAN world (+y up, face +z: glTF's frame): the GAN's own
    field, queried at them directly, is at the isosurface level; the mesh is textured, outward, and
    its fidelity to the neural renders is measured."""
    from gan_prior.camera import gan_to_threestudio_points
    from gan_prior.mesh import signed_volume

    g, m, bg, r, levels, ws = build(ts, prior_path)
    prior = PortraitGAN.from_checkpoint(prior_path)
    field = prior.field(levels)
    with torch.no_grad():
        grid = (torch.rand(1, 4000, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.5
        sigma = field(grid)[0].flatten()
    level = float(sigma.median())
    g.cfg.isosurface_threshold, g.cfg.isosurface_resolution = level, 48
    exporter = ts.find("portrait3d-exporter")(
        {"pyramid_formats": [], "texture_size": 256, "view_resolution": 32, "view_samples": [8, 8]},
        geometry=g,
        material=m,
        background=bg,
    )
    outputs = exporter()
    assert [(o.save_name, o.save_type) for o in outputs] == [("portrait", "portrait_mesh")]
    assert outputs[0].params["formats"] == ["glb", "obj"]
    mesh = outputs[0].params["mesh"]
    v = torch.from_numpy(mesh.vertices).float()
    assert len(v) > 50 and v.abs().max() <= 0.35 + 1e-4 and signed_volume(mesh.vertices, mesh.faces) > 0
    with torch.no_grad():
        at_vertices = field(v[None])[0].flatten()
        swapped = field(gan_to_threestudio_points(v)[None])[0].flatten()  # what a wrong frame would give
    err = (at_vertices - level).abs().median()
    assert err < 0.1 * sigma.std(), (float(err), float(sigma.std()))
    assert (swapped - level).abs().median() > 3 * err
    assert mesh.texture.shape == (256, 256, 3) and mesh.uv.shape[0] == len(mesh.uv_vertex_map)
    report = mesh.report
    assert report["mesh"]["textured"] and report["cameras"]["resolution"] == 32
    assert {"textured", "vertex_colours", "isosurface_vertex_colours"} <= set(report)


def test_the_isosurface_grid_is_evaluated_in_chunks(ts, prior_path):
    """Export at 256³ sent all 16.8 M grid points through one field call (≈ 8.3 GiB on a GPU):
    every call now gets at most isosurface_chunk points (default 2¹⁸)."""
    g, *_ = build(ts, prior_path)
    g.cfg.isosurface_resolution, g.cfg.isosurface_threshold = 72, "auto"  # 373 248 grid points
    sizes = []
    forward = g.decoder.forward

    def counted(sampled):
        sizes.append(sampled.shape[2])
        return forward(sampled)

    g.decoder.forward = counted
    mesh = g.isosurface()
    assert len(mesh.t_pos_idx) > 100 and max(sizes) <= 1 << 18, max(sizes)
    assert sum(sizes) < 72**3  # coarse to fine: only the blocks the surface can cross
    g.cfg.isosurface_threshold = 1e4
    with pytest.raises(
        ValueError, match=r"system.geometry.isosurface_threshold=10000 gives an empty isosurface: "
    ):
        g.isosurface()


def test_a_prompt_names_one_trial_folder_inside_the_outputs(ts, tmp_path):
    """Our configs name a trial after its prompt (``${p3d_tag:...}``): ordinary prompts as threestudio's
    ``rmspace`` did; a "/" (nested folders, which ``portrait3d run`` then did not find), a leading
    "/" or "../" (a trial outside ``exp_root_dir``), control characters and over-long prompts give
    one folder directly inside ``exp_root_dir``."""
    from helpers import ROOT
    from omegaconf import OmegaConf
    from threestudio.utils.config import load_config

    for config in ("portrait3d.yaml", "portrait3d-tiny.yaml"):
        tag = OmegaConf.load(os.path.join(ROOT, "configs", config))._get_node("tag")._value()
        assert tag == "${p3d_tag:${system.prompt_processor.prompt}}", config
    tag = ts_module("utils.trial_tag").trial_tag
    assert tag("upper body photo, portrait of a woman") == "upper_body_photo,_portrait_of_a_woman"
    assert tag("..") == ""
    for blank in ("", "  ", None):
        with pytest.raises(ValueError, match="system.prompt_processor.prompt is empty: give the text"):
            tag(blank)
    assert tag("x\x07y\x1b[31mz") == "xy[31mz"  # (YAML refuses these on the command line)
    root = tmp_path / "outputs"
    for prompt in (
        "portrait of an AC/DC fan",
        "/etc/portrait of a woman",
        "../../../portrait",
        "a\\b\u0085c\u2028d\u200be",
        "é" * 300,
    ):
        cfg = load_config(
            'tag: "${p3d_tag:${system.prompt_processor.prompt}}"\nname: p3d\nuse_timestamp: false',
            from_string=True,
            cli_args=[f"exp_root_dir={root}", f"system.prompt_processor.prompt={prompt}"],
        )
        trial = os.path.realpath(cfg.trial_dir)
        assert os.path.dirname(trial) == os.path.realpath(root / "p3d"), (prompt, trial)
        assert len(os.path.basename(trial).encode()) <= 200, prompt
    assert sorted(os.listdir(root / "p3d")) == sorted(
        [
            "portrait_of_an_AC-DC_fan",
            "-etc-portrait_of_a_woman",
            "-..-..-portrait",
            "a-b_c_de",
            "é" * 100,  # 200 UTF-8 bytes
        ]
    )
    assert sorted(os.listdir(root)) == ["p3d"]


def test_another_exporter_gets_the_settings_it_has(ts):
    """``system.exporter_type=mesh-exporter`` on our config: our exporter's own settings are left out
    with one line naming them, a shared one (``texture_size``) carries over, a misspelt one stays for
    that exporter's config to refuse; our exporter's config is kept whole."""
    swap = ts_module("system.exporter_swap")
    ours = {"mesh_formats": ["glb"], "pyramid_formats": ["ours"], "view_seed": 42, "texture_size": 512}
    cfg, notes = swap.adapt_exporter_config("mesh-exporter", {**ours, "fmtt": "obj"}, ts.find)
    assert dict(cfg) == {"texture_size": 512, "fmtt": "obj"}
    assert notes == [
        "system.exporter: mesh_formats, pyramid_formats, view_seed left out (settings of "
        "portrait3d-exporter, which mesh-exporter does not have)"
    ]
    cfg, notes = swap.adapt_exporter_config("portrait3d-exporter", ours, ts.find)
    assert (dict(cfg), notes) == (ours, [])
    assert swap.adapt_exporter_config("mesh-exporter", {"fmt": "obj"}, ts.find)[1] == []


def test_threestudios_mesh_exporter_accepts_our_geometry_and_material(ts, prior_path, tmp_path, monkeypatch):
    """threestudio's own ``mesh-exporter`` (obj-mtl) with our components, its nvdiffrast context
    replaced by one on our UV rasterizer: a textured OBJ whose texture holds the material's colours."""
    import threestudio.models.exporters.mesh_exporter as mesh_exporter
    import trimesh
    from threestudio.utils.saving import SaverMixin

    from gan_prior.camera import threestudio_to_gan_points

    rasterizer = ts_module("utils.uv_rasterizer")
    monkeypatch.setattr(mesh_exporter, "NVDiffRasterizerContext", rasterizer.UVRasterizerContext)
    g, m, bg, *_ = build(ts, prior_path)
    g.cfg.isosurface_resolution, g.cfg.isosurface_threshold = 40, "auto"
    exporter = ts.find("mesh-exporter")(
        {"fmt": "obj-mtl", "texture_size": 256, "texture_format": "png", "context_type": "cuda"},
        geometry=g,
        material=m,
        background=bg,
    )
    with torch.no_grad():
        outputs = exporter()
    saver = SaverMixin()
    saver.set_save_dir(str(tmp_path))
    for out in outputs:
        getattr(saver, f"save_{out.save_type}")(out.save_name, **out.params)
    assert sorted(os.listdir(tmp_path)) == ["model.mtl", "model.obj", "texture_kd.png"]
    obj = trimesh.load(tmp_path / "model.obj", process=False)
    texture = np.asarray(obj.visual.material.image.convert("RGB")).astype(np.float32) / 255
    uv = np.asarray(obj.visual.uv)  # OBJ: v up
    h, w = texture.shape[:2]
    at_uv = texture[
        ((1 - uv[:, 1]) * h).astype(int).clip(0, h - 1), (uv[:, 0] * w).astype(int).clip(0, w - 1)
    ]
    points = threestudio_to_gan_points(torch.from_numpy(np.asarray(obj.vertices)).float())
    with torch.no_grad():
        expected = m.export(features=g.gan_field()(points)[1])["albedo"].numpy()
    assert np.median(np.abs(at_uv - expected)) < 0.03 and texture.std() > 0.02


def test_the_evaluation_line_rounds_and_says_what_was_not_computed(ts):
    import sys

    line = sys.modules["threestudio-portrait3d.system.test_outputs"].evaluation_line
    assert line({"clip_score": 24.664560317993164, "fid": None, "kid_mean": None}) == (
        "CLIP score 24.66, FID/KID – (no system.evaluation.inception)"
    )
    assert line({"clip_score": None, "fid": 12.3456, "kid_mean": 0.012345}) == (
        "CLIP score – (no system.evaluation.clip_model), FID 12.35, KID 0.0123"
    )
