"""gan_prior.evaluation: the paper's §5.2 metrics on tiny / random models (no weights needed)."""

import json
import os
import re

import numpy as np
import pytest
import torch
from helpers import random_inception_weights
from torch.utils._python_dispatch import TorchDispatchMode

from gan_prior import evaluation as E
from gan_prior.media import save_image, save_video
from gan_prior.tiny_models import tiny_model_path


def images(n, seed, size=32):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    """The FID Inception architecture with random weights, saved as a weights file (the real loading path)."""
    return random_inception_weights(str(tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"))


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.RandomState(0)
    a = rng.randn(20000, 3) * [1.0, 2.0, 0.5] + [0, 0, 0]
    b = rng.randn(20000, 3) * [2.0, 1.0, 0.5] + [1, -1, 0]
    # diagonal covariances: ‖μa − μb‖² + Σ (σa − σb)²
    expected = 2.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert E.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert E.frechet_distance(a, b) == pytest.approx(E.frechet_distance(b, a), rel=1e-6)
    assert abs(E.frechet_distance(a, a)) < 1e-6


def test_frechet_distance_equals_pytorch_fids_on_full_covariances():
    """Against pytorch-fid's own ``calculate_frechet_distance``, on correlated (non-diagonal)
    features and on a rank-deficient pair (fewer samples than dimensions, as with few renders)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.RandomState(3)
    for n, d in ((400, 16), (12, 32)):
        mix_a, mix_b = rng.randn(d, d), rng.randn(d, d) * 0.5 + np.eye(d)
        a = rng.randn(n, d) @ mix_a + rng.randn(d)
        b = rng.randn(n, d) @ mix_b
        stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
        assert np.abs(stats[0][1] - np.diag(np.diag(stats[0][1]))).max() > 1  # really off-diagonal
        expected = calculate_frechet_distance(*stats[0], *stats[1])
        assert E.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-6), (n, d)


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.RandomState(1)
    x, y = rng.randn(40, 8), rng.randn(50, 8) + 0.7
    d = 8
    k = lambda p, q: ((p @ q.T) / d + 1) ** 3  # noqa: E731
    mean, std = E.kernel_inception_distance(x, y[:40], subsets=1, subset_size=40)
    x2, y2 = x, y[:40]
    direct = (
        (k(x2, x2).sum() - np.trace(k(x2, x2))) / (40 * 39)
        + (k(y2, y2).sum() - np.trace(k(y2, y2))) / (40 * 39)
        - 2 * k(x2, y2).mean()
    )
    assert mean == pytest.approx(direct, rel=1e-9) and std == 0
    same = E.kernel_inception_distance(rng.randn(200, 8), rng.randn(200, 8), subsets=20, subset_size=100)[0]
    shifted = E.kernel_inception_distance(
        rng.randn(200, 8), rng.randn(200, 8) + 0.7, subsets=20, subset_size=100
    )[0]
    assert shifted > 0.1 and abs(same) < shifted / 10
    with pytest.raises(E.EvaluationError, match="at least 2 images"):
        E.kernel_inception_distance(x[:1], y)


def test_clip_score_equals_the_definition_and_depends_on_the_prompt():
    from transformers import CLIPModel, CLIPProcessor

    path = tiny_model_path("clip")
    views = images(3, 2)
    out = E.clip_score(views, "upper body photo, a woman", path)
    model, proc = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        t = torch.nn.functional.normalize(
            model.get_text_features(**proc(text=["upper body photo, a woman"], return_tensors="pt")), dim=-1
        )
        v = torch.nn.functional.normalize(
            model.get_image_features(**proc(images=views, return_tensors="pt")), dim=-1
        )
    expected = (100 * (v @ t.T).squeeze(-1).clamp(min=0)).tolist()
    assert out["per_image"] == pytest.approx(expected, abs=1e-4)
    assert out["clip_score"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert all(0 <= s <= 100 for s in out["per_image"])
    assert E.clip_score(views, "a red car on a bridge", path)["per_image"] != pytest.approx(out["per_image"])
    with pytest.raises(E.EvaluationError, match="--clip: cannot load a CLIP model from .*nowhere"):
        E.clip_score(views, "x", "/nowhere/clip")


def test_clip_score_equals_torchmetrics_clip_score():
    """An independent implementation: torchmetrics' CLIPScore on the same tiny CLIP."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    path = tiny_model_path("clip")
    views = images(4, 7, size=40)
    prompt = "upper body photo, portrait of a man"
    ours = E.clip_score(views, prompt, path, batch_size=3)  # two batches
    metric = CLIPScore(
        model_name_or_path=lambda: (CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path))
    )
    per_image = []
    for v in views:
        metric.reset()
        metric.update(torch.from_numpy(v).permute(2, 0, 1)[None], [prompt])
        per_image.append(float(metric.compute()))
    assert ours["per_image"] == pytest.approx(per_image, abs=1e-3)
    metric.reset()
    metric.update(torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2), [prompt] * len(views))
    assert ours["clip_score"] == pytest.approx(float(metric.compute()), abs=1e-3)
    assert np.std(per_image) > 1e-3  # the images really score differently


def test_inception_features_load_safely_and_differ_per_image(inception_path, tmp_path):
    extract = E.InceptionFeatures(inception_path)
    views = images(3, 3)
    f = extract(views)
    assert f.shape == (3, 2048) and np.isfinite(f).all()
    assert np.allclose(extract(views), f)
    assert np.abs(f[0] - f[1]).max() > 1e-3 * np.abs(f).max() > 0  # random weights: tiny, distinct values
    with pytest.raises(E.EvaluationError, match="--inception: .*missing.pth not found"):
        E.InceptionFeatures(str(tmp_path / "missing.pth"))
    (tmp_path / "bad.pth").write_bytes(os.urandom(100))
    with pytest.raises(E.EvaluationError, match="--inception: .*bad.pth is not a readable weights file"):
        E.InceptionFeatures(str(tmp_path / "bad.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(E.EvaluationError, match="other.pth does not hold the FID Inception weights"):
        E.InceptionFeatures(str(tmp_path / "other.pth"))


def test_evaluate_writes_metrics_and_a_contact_sheet(inception_path, tmp_path):
    renders = tmp_path / "renders"
    for i, img in enumerate(images(5, 4)):
        save_image(str(renders / f"{i:03d}.png"), img)
    video = str(tmp_path / "ref.mp4")
    save_video(video, images(4, 5, size=48))
    result = E.evaluate(
        str(renders),
        "upper body photo, a man",
        str(tmp_path / "eval"),
        clip_model=tiny_model_path("clip"),
        reference=video,
        inception_weights=inception_path,
        sheet_columns=3,
    )
    on_disk = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert on_disk == pytest.approx(result) or on_disk == result
    assert on_disk["num_renders"] == 5 and on_disk["num_reference"] == 4
    assert 0 <= on_disk["clip_score"] <= 100 and on_disk["fid"] > 0 and on_disk["kid_std"] >= 0
    import imageio.v2 as imageio

    assert imageio.imread(tmp_path / "eval" / "contact_sheet.png").shape == (
        64,
        96,
        3,
    )  # 2 rows x 3 columns of 32²
    only_clip = E.evaluate(str(renders), "a man", str(tmp_path / "eval2"), clip_model=tiny_model_path("clip"))
    assert only_clip["fid"] is None and only_clip["clip_score"] is not None
    with pytest.raises(E.EvaluationError, match="FID/KID need both --reference"):
        E.evaluate(str(renders), "a man", str(tmp_path / "eval3"), reference=str(renders))
    with pytest.raises(E.EvaluationError, match="--renders: .*nothing not found"):
        E.evaluate(
            str(tmp_path / "nothing"), "a man", str(tmp_path / "eval4"), clip_model=tiny_model_path("clip")
        )


def test_evaluate_refuses_to_compute_nothing(tmp_path):
    """No metric asked (the issue: exit 0 with all-null metrics), or an empty prompt for the CLIP score:
    one line, before any image is read, and nothing written."""
    with pytest.raises(E.EvaluationError, match="nothing to compute: give --clip .* and/or --reference"):
        E.evaluate(str(tmp_path / "not read"), "", str(tmp_path / "eval"))
    with pytest.raises(E.EvaluationError, match="--prompt is empty"):
        E.evaluate(str(tmp_path / "not read"), "  ", str(tmp_path / "eval"), clip_model="not loaded")
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_sets_fid_cannot_use_before_loading_any_network(
    inception_path, tmp_path, monkeypatch
):
    """One image on a side (its covariance is NaN and scipy's sqrtm then ran for over 15 minutes),
    renders too small for CLIP's processor, and Inception weights holding a NaN: one line each,
    before CLIP loads; 1-bit and gray + alpha images are read as gray."""
    monkeypatch.setattr(E, "clip_score", lambda *a, **k: pytest.fail("CLIP ran before the checks"))
    two = [str(tmp_path / f"{i}.png") for i in range(2)]
    for path, img in zip(two, images(2, 7)):
        save_image(path, img)
    save_image(str(tmp_path / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    state = torch.load(inception_path, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    for renders, reference, weights, message in (
        (two, two[:1], inception_path, "--reference: FID/KID need at least 2 images in each set; it holds 1"),
        (two[:1], two, inception_path, "--renders: FID/KID need at least 2 images in each set; it holds 1"),
        (
            [str(tmp_path / "tiny.png")],
            None,
            None,
            "--renders: image 1 of 1 is 1×1 px; the metrics need images at least 4 px",
        ),
        (
            two,
            two,
            str(tmp_path / "nan.pth"),
            f"--inception: .*nan.pth holds non-finite values in {re.escape(name)}; the file is damaged",
        ),
    ):
        with pytest.raises(E.EvaluationError, match=message):
            E.evaluate(
                renders,
                "a man",
                str(tmp_path / "eval"),
                clip_model="unused",
                reference=reference,
                inception_weights=weights,
            )
    assert not (tmp_path / "eval").exists()
    from PIL import Image

    Image.fromarray(np.eye(20, dtype=bool)).save(tmp_path / "bw.png")
    Image.fromarray(np.full((20, 20, 2), 200, np.uint8), mode="LA").save(tmp_path / "la.png")
    bw, la = E.load_images([str(tmp_path / "bw.png"), str(tmp_path / "la.png")])
    assert bw.shape == la.shape == (20, 20, 3) and bw.dtype == la.dtype == np.uint8
    assert bw[0, 0].tolist() == [255] * 3 and bw[0, 1].tolist() == [0] * 3 and la[0, 0].tolist() == [200] * 3


def test_videos_are_streamed_within_a_bound(tmp_path, monkeypatch):
    """A video is refused from the frame count and size its header states, before decoding; where the
    header states none, frames are read one at a time and the read stops once they pass the bound."""
    video = str(tmp_path / "v.mp4")
    save_video(video, images(10, 1, size=64))
    frame = 64 * 64 * 3
    assert len(E.load_images(video, max_bytes=10 * frame)) == 10
    with pytest.raises(E.EvaluationError, match=r"v.mp4 decodes to more than .* \(10 frames of 64×64\)"):
        E.load_images(video, max_bytes=9 * frame)

    pulled = []

    class Endless:  # a reader that states nothing and would decode frames for ever
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_meta_data(self):
            return {}

        def __iter__(self):
            while True:
                pulled.append(1)
                yield np.zeros((64, 64, 3), np.uint8)

    monkeypatch.setattr(E.imageio, "get_reader", lambda path: Endless())
    with pytest.raises(E.EvaluationError, match=r"more than .* \(stopped after 4 frames\)"):
        E.load_images(video, max_bytes=4 * frame)
    assert len(pulled) == 5  # one frame past the bound, not the whole video


def test_the_evaluate_command(tmp_path, capsys):
    from gan_prior.cli import main

    for i, img in enumerate(images(2, 6)):
        save_image(str(tmp_path / "views" / f"{i}.png"), img)
    code = main(
        [
            "evaluate",
            "--renders",
            str(tmp_path / "views"),
            "--prompt",
            "a woman",
            "--out",
            str(tmp_path / "out"),
            "--clip",
            tiny_model_path("clip"),
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["num_renders"] == 2
    assert os.path.isfile(tmp_path / "out" / "metrics.json")
    assert (
        main(
            [
                "evaluate",
                "--renders",
                str(tmp_path / "absent"),
                "--prompt",
                "a",
                "--out",
                str(tmp_path / "o"),
                "--clip",
                "x",
            ]
        )
        == 2
    )
    assert re.fullmatch(r"error: --renders: .*absent not found.*\n", capsys.readouterr().err)


class NetworksOnTheHost(TorchDispatchMode):
    """Fails on a convolution or matrix product with a CPU tensor: a network ran on the host."""

    HEAVY = {"convolution", "mm", "addmm", "bmm", "baddbmm", "linear", "_scaled_dot_product_attention_math"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.HEAVY and any(
            isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in args
        ):
            raise AssertionError(f"{func} ran on the CPU")
        return func(*args, **(kwargs or {}))


def test_clip_and_inception_run_on_the_runs_device(inception_path, monkeypatch):
    """Both networks and their inputs go to the run's device (a GPU's default; ``meta`` stands in
    for it here): nothing of them runs on the host; reading the scores is the one host step."""
    monkeypatch.setattr(E, "default_device", lambda: torch.device("meta"))
    views = images(2, 3)
    with NetworksOnTheHost():
        with pytest.raises((NotImplementedError, RuntimeError), match="meta"):  # the final read
            E.clip_score(views, "a man", tiny_model_path("clip"))
        with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
            E.InceptionFeatures(inception_path)(views)
    E._load_clip.cache_clear()  # the cached model is on meta now: load it afresh for the other tests
