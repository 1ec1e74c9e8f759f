"""Automatic alignment (gan_prior.alignment) on synthetic images whose "face" is known exactly.

The synthetic face is a solid magenta rectangle on a gray background; ``MarkerDetector`` is a real
detector of it (connected components of pure magenta pixels). In an aligned crop the rectangle's
edges are blended by resampling, so it is measured there with sub-pixel precision from the green
channel: coverage α = (128 − G) / 128, centre = α-weighted centroid, size = sqrt(Σα) (= sqrt(w·h),
the FaceBox size).
"""

import json
import math
import os

import cv2
import numpy as np
import pytest

from gan_prior import PortraitGAN, tiny_config
from gan_prior import alignment as al
from gan_prior.alignment import (
    DETECTORS_ENV,
    AlignedImage,
    FaceBox,
    FaceDetector,
    Framing,
    HaarCascadeDetector,
    NoFaceError,
    align_image,
    face_detector,
    load_or_measure_framing,
    make_detector,
    measure_framing,
    register_detector,
    select_candidate,
)

MAGENTA = (255, 0, 255)
GRAY = 128


class MarkerDetector(FaceDetector):
    """Finds solid pure-magenta rectangles; score = fill ratio of the component's bounding box."""

    name = "marker"

    def __call__(self, image):
        mask = np.all(image == MAGENTA, axis=2).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        return [
            FaceBox(float(x), float(y), float(x + w), float(y + h), float(area) / (w * h))
            for x, y, w, h, area in stats[1:n]
        ]


@face_detector
def marker_function(image):  # a detector given as a plain function (no .name)
    return MarkerDetector()(image)


def canvas(w, h):
    return np.full((h, w, 3), GRAY, np.uint8)


def draw(img, x0, y0, x1, y1, hole=False):
    img[y0:y1, x0:x1] = MAGENTA
    if hole:  # a lower-confidence "face" for MarkerDetector: fill ratio < 1
        img[(y0 + y1) // 2 - 2 : (y0 + y1) // 2 + 2, (x0 + x1) // 2 - 2 : (x0 + x1) // 2 + 2] = GRAY
    return img


def measure_marker(img):
    """(cx, cy, size) of the blended magenta rectangle in an aligned crop, sub-pixel."""
    alpha = np.clip((GRAY - img[:, :, 1].astype(np.float64)) / GRAY, 0, 1)
    total = alpha.sum()
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    return (alpha * xs).sum() / total, (alpha * ys).sum() / total, math.sqrt(total)


def same_framing(f, cx, cy, size, detector, renders):
    return (f.center_x, f.center_y, f.size) == pytest.approx((cx, cy, size)) and (f.detector, f.renders) == (
        detector,
        renders,
    )


FRAMING = Framing(center_x=0.5, center_y=0.42, size=0.3, detector="marker", renders=8)


@pytest.mark.parametrize(
    "width, height, box",
    [
        (400, 300, (150, 100, 230, 180)),  # square face, downscaled to 128
        (640, 480, (300, 60, 420, 210)),  # w != h (size = sqrt(w·h)), shifted right and up
        (200, 260, (70, 90, 100, 130)),  # small face: upscaled
        (160, 120, (70, 40, 82, 52)),  # 12 px face: upscaled ×3.2
        (300, 300, (11, 150, 91, 230)),  # near the left border: the crop needs padding
        (500, 500, (300, 5, 380, 85)),  # near the top border
    ],
)
def test_align_image_puts_the_face_where_the_framing_says(width, height, box):
    img = draw(canvas(width, height), *box)
    size = 128
    out = align_image(img, FRAMING, MarkerDetector(), size=size, source="synthetic.png")
    assert (
        isinstance(out, AlignedImage) and out.image.shape == (size, size, 3) and out.image.dtype == np.uint8
    )
    x0, y0, x1, y1 = box
    assert out.face == FaceBox(x0, y0, x1, y1, 1.0)
    cx, cy, s = measure_marker(out.image)
    assert cx == pytest.approx(FRAMING.center_x * size, abs=0.1)
    assert cy == pytest.approx(FRAMING.center_y * size, abs=0.1)
    assert s == pytest.approx(FRAMING.size * size, abs=0.15)
    # the reported crop and padding are the exact geometry
    side = math.sqrt((x1 - x0) * (y1 - y0)) / FRAMING.size
    cx0, cy0 = (x0 + x1) / 2 - FRAMING.center_x * side, (y0 + y1) / 2 - FRAMING.center_y * side
    assert out.crop == pytest.approx((cx0, cy0, side))
    inside = (min(cx0 + side, width) - max(cx0, 0)) * (min(cy0 + side, height) - max(cy0, 0))
    assert out.padding == pytest.approx(1 - inside / side**2)
    if x0 < 20 or y0 < 20:
        assert out.padding > 0.05
        # edge replication: the padded area is background gray, not black
        assert out.image[0, 0].tolist() == [GRAY] * 3 or out.image[-1, 0].tolist() == [GRAY] * 3


def test_align_image_uses_the_largest_face_and_converts_gray_and_rgba():
    img = draw(draw(canvas(400, 400), 40, 40, 70, 70), 200, 150, 300, 250, hole=True)
    out = align_image(img, FRAMING, MarkerDetector(), size=64)
    assert out.face.x0 == 200 and out.face.size == 100 and out.face.score < 1  # largest, not highest score
    gray = np.full((300, 300), 90, np.uint8)
    rgba = np.dstack([draw(canvas(300, 300), 100, 100, 180, 180), np.full((300, 300), 255, np.uint8)])
    assert align_image(rgba, FRAMING, MarkerDetector(), size=64).face.size == 80
    with pytest.raises(NoFaceError):
        align_image(gray, FRAMING, MarkerDetector(), size=64)


def test_no_face_error_is_one_line_and_names_the_source():
    with pytest.raises(NoFaceError) as e:
        align_image(canvas(300, 200), FRAMING, MarkerDetector(), source="photo.jpg")
    msg = str(e.value)
    assert msg.startswith("photo.jpg: no face found;") and "\n" not in msg
    assert "detector 'none'" in msg and f"at least {al.DEFAULT_MIN_FACE_PX} px wide" in msg


def test_detector_none_only_resizes_a_square_image():
    none = make_detector("none")
    assert none.name == "none"
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = align_image(img, al.none_framing(), none, size=128)
    assert out.face is None and out.crop == (0.0, 0.0, 256.0) and out.padding == 0.0
    assert np.array_equal(out.image, cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA))
    assert np.array_equal(align_image(img, al.none_framing(), none, size=256).image, img)
    with pytest.raises(ValueError, match="crop it square or use a face detector"):
        align_image(img[:200], al.none_framing(), none)
    best, aligned, report = select_candidate([img[:200], img], al.none_framing(), none, size=64)
    assert best == 1 and aligned[0] is None and aligned[1].image.shape == (64, 64, 3)
    assert report[0]["reason"].startswith("not square (256x200)") and report[1]["kept"]


def candidates():
    return {
        "empty.png": canvas(400, 400),
        "two.png": draw(draw(canvas(400, 400), 40, 100, 130, 190), 250, 100, 330, 180),
        "tiny.png": draw(canvas(400, 400), 200, 200, 220, 220),
        "border.png": draw(canvas(400, 400), 0, 150, 60, 210),
        "good.png": draw(canvas(400, 400), 160, 120, 240, 200),  # padding 0, score 1
        "weaker.png": draw(canvas(400, 400), 160, 120, 240, 200, hole=True),  # score < 1
    }


def test_select_candidate_drops_the_bad_ones_with_reasons():
    c = candidates()
    best, aligned, report = select_candidate(
        list(c.values()), FRAMING, MarkerDetector(), names=list(c), size=64
    )
    assert best == 4 and report[best]["name"] == "good.png"
    assert [r["kept"] for r in report] == [False, False, False, False, True, True]
    assert [a is None for a in aligned] == [True, True, True, True, False, False]
    reasons = [r["reason"] for r in report]
    assert reasons[0] == "no face found" and report[0]["faces"] == 0
    assert reasons[1].startswith("ambiguous: 2 faces") and report[1]["faces"] == 2
    assert reasons[2].startswith("face too small") and report[2]["face_fraction"] == pytest.approx(0.05)
    assert reasons[3].startswith("crop needs") and report[3]["padding"] > 0.2
    assert reasons[4].startswith("selected:") and reasons[5].startswith("kept but not selected")
    assert report[4]["score"] == 1.0 > report[5]["score"]
    assert set(report[0]) == {"name", "kept", "reason", "faces", "score", "padding", "face_fraction"}


def test_select_candidate_thresholds_and_ties():
    c = candidates()
    # relaxed thresholds keep the tiny face and the border one
    _, _, report = select_candidate(
        [c["tiny.png"], c["border.png"]],
        FRAMING,
        MarkerDetector(),
        size=32,
        max_padding=0.9,
        min_face_fraction=0.01,
    )
    assert [r["kept"] for r in report] == [True, True]
    # equal scores: the least padding wins; default names
    shifted = draw(canvas(400, 400), 30, 120, 110, 200)  # some padding, still under the limit
    best, _, report = select_candidate(
        [shifted, c["good.png"]], FRAMING, MarkerDetector(), size=32, max_padding=0.5
    )
    assert 0.2 < report[0]["padding"] <= 0.5 and report[1]["padding"] == pytest.approx(0, abs=1e-9)
    assert best == 1 and report[0]["name"] == "candidate 0"


def test_select_candidate_raises_with_every_reason_when_none_is_usable():
    c = candidates()
    bad = ["empty.png", "two.png", "tiny.png", "border.png"]
    with pytest.raises(NoFaceError) as e:
        select_candidate([c[k] for k in bad], FRAMING, MarkerDetector(), names=bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no usable candidate among 4")
    for name, words in zip(bad, ["no face found", "ambiguous", "face too small", "crop needs"]):
        assert f"{name}: {words}" in msg


# ------------------------------------------------------------------ Haar cascade and make_detector
@pytest.mark.parametrize("kind", ["uniform", "gradient", "noise"])
def test_haar_finds_no_face_in_face_free_images(kind):
    rng = np.random.default_rng(1)
    img = {
        "uniform": np.full((240, 320, 3), 127, np.uint8),
        "gradient": np.broadcast_to(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 320, 3)),
        "noise": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
    }[kind]
    haar = make_detector("haar")
    assert isinstance(haar, HaarCascadeDetector) and haar.name == "haar:haarcascade_frontalface_default.xml"
    assert haar(img) == []
    with pytest.raises(NoFaceError) as e:
        align_image(img, FRAMING, haar, source=f"{kind}.png")
    msg = str(e.value)
    assert msg == (
        f"{kind}.png: no face found; use a photo with one clearly visible, roughly frontal face at least "
        "24 px wide, or pass an aligned square crop with detector 'none'"
    )


def test_make_detector_specs(tmp_path):
    missing = str(tmp_path / "missing.xml")
    with pytest.raises(ValueError, match="missing.xml"):
        make_detector(missing)
    corrupt = tmp_path / "corrupt.xml"
    corrupt.write_text("<opencv_storage><cascade>not a cascade</cascade></opencv_storage>")
    with pytest.raises(ValueError, match="corrupt.xml"):
        HaarCascadeDetector(str(corrupt))
    with pytest.raises(ValueError, match="unknown detector 'retinaface'; use 'haar', 'none', a registered"):
        make_detector("retinaface")
    with pytest.raises(ValueError, match="cannot import"):
        make_detector("tests.test_alignment:NoSuchDetector", allow_import=True)
    assert (
        make_detector(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml").name
        == "haar:haarcascade_frontalface_alt2.xml"
    )
    cls = make_detector("tests.test_alignment:MarkerDetector", allow_import=True)  # a class: instantiated
    assert type(cls).__name__ == "MarkerDetector" and cls.name == "marker"
    fn = make_detector("tests.test_alignment:marker_function", allow_import=True)  # wrapped and named
    assert fn.name == "tests.test_alignment:marker_function"
    img = draw(canvas(100, 100), 10, 20, 50, 60)
    assert fn(img) == cls(img) == [FaceBox(10, 20, 50, 60, 1.0)]
    assert make_detector("gan_prior.alignment:HaarCascadeDetector", allow_import=True).name.startswith(
        "haar:"
    )


def unmarked_function(image):  # a callable that does not say it is a detector
    raise AssertionError("called")


def test_a_string_names_code_only_where_the_user_allowed_it(monkeypatch):
    """A detector string may come from a config someone sent: "module:attr" is refused unless the
    user's own command line (allow_import) or environment lists it, and whatever it names must be a
    detector, refused before it is called (``pickle:loads`` on an image's bytes ran a payload)."""
    monkeypatch.delenv(DETECTORS_ENV, raising=False)
    spec = "tests.test_alignment:MarkerDetector"
    with pytest.raises(ValueError, match=f"a 'module:attr' detector is code.*{DETECTORS_ENV}={spec}"):
        make_detector(spec)
    monkeypatch.setenv(DETECTORS_ENV, f"other:thing, {spec}")
    assert make_detector(spec).name == "marker"
    with pytest.raises(ValueError, match="a 'module:attr' detector is code"):
        make_detector("tests.test_alignment:marker_function")  # listed specs only
    for bad, what in (
        ("pickle:loads", "a builtin_function_or_method, not a face detector"),
        ("os:system", "a builtin_function_or_method, not a face detector"),
        ("tests.test_alignment:unmarked_function", "a function, not a face detector"),
        ("os:sep", "not callable"),
    ):
        with pytest.raises(ValueError, match=f"is {what}; refused without calling it"):
            make_detector(bad, allow_import=True)
    with pytest.raises(ValueError, match="not of the form module:attr"):
        make_detector("os:system; rm", allow_import=True)
    # a registered name is what a config names; only detectors can be registered
    register_detector("marker-test", MarkerDetector)
    assert make_detector("marker-test").name == "marker"
    with pytest.raises(ValueError, match="not a FaceDetector"):
        register_detector("loads", __import__("pickle").loads)


def test_haar_finds_and_frames_a_real_face():
    cbook = pytest.importorskip(
        "matplotlib.cbook", reason="the photo ships with matplotlib (requirements-threestudio)"
    )
    import imageio.v2 as imageio

    photo = imageio.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # 512x600 portrait
    haar = make_detector("haar")
    faces = haar(photo)
    assert len(faces) == 1
    face = faces[0]
    assert 150 < face.size < 320 and 180 < face.center[0] < 340 and 130 < face.center[1] < 300
    framing = Framing(0.5, 0.45, 0.35, haar.name, 0)
    out = align_image(photo, framing, haar, size=256, source="grace_hopper.jpg")
    again = haar(out.image)  # the aligned face is where the framing says, to the detector's precision
    assert len(again) == 1
    cx, cy = again[0].center
    assert abs(cx - 0.5 * 256) < 8 and abs(cy - 0.45 * 256) < 8
    assert again[0].size == pytest.approx(0.35 * 256, rel=0.12)


# ------------------------------------------------------------------ framing of the GAN's renders
class FixedBoxDetector:
    """Returns a fixed box given in fractions of the render side; counts its calls."""

    def __init__(self, box=(0.3, 0.2, 0.7, 0.6), name="fixed", every=1):
        self.box, self.name, self.every, self.images = box, name, every, []

    def __call__(self, image):
        self.images.append(image)
        if len(self.images) % self.every:
            return []
        h, w = image.shape[:2]
        x0, y0, x1, y1 = self.box
        small = FaceBox(0, 0, 2, 2, 9.0)  # a smaller, higher-scoring decoy: the largest box must win
        return [small, FaceBox(x0 * w, y0 * h, x1 * w, y1 * h, 0.5)]


@pytest.fixture(scope="module")
def gan():
    return PortraitGAN.random(tiny_config(), seed=3)


def test_measure_framing_reads_the_box_from_the_renders(gan):
    det = FixedBoxDetector(box=(0.25, 0.1, 0.75, 0.5))
    framing = measure_framing(gan, det, n=3, resolution=24, progress=False)
    assert same_framing(framing, 0.5, 0.3, math.sqrt(0.5 * 0.4), "fixed", 3)  # size = sqrt(w·h)
    assert len(det.images) == 3
    assert all(im.shape == (24, 24, 3) and im.dtype == np.uint8 for im in det.images)
    assert not np.array_equal(det.images[0], det.images[1])  # different latents
    det2 = FixedBoxDetector(box=(0.25, 0.1, 0.75, 0.5))
    measure_framing(gan, det2, n=3, resolution=24, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(det.images, det2.images))  # seeded, deterministic
    # half the renders with a face is enough, fewer is not
    assert measure_framing(gan, FixedBoxDetector(every=2), n=4, resolution=16, progress=False).renders == 2
    with pytest.raises(ValueError, match="does not find faces in the GAN's renders"):
        measure_framing(gan, FixedBoxDetector(every=3), n=4, resolution=16, progress=False)
    with pytest.raises(ValueError, match="use another detector"):
        measure_framing(gan, lambda image: [], n=2, resolution=16, progress=False)


def test_measure_framing_median_is_robust(gan):
    boxes = iter([(0.3, 0.2, 0.7, 0.6), (0.3, 0.2, 0.7, 0.6), (0.0, 0.0, 1.0, 1.0)])

    def det(image):
        x0, y0, x1, y1 = next(boxes)
        return [FaceBox(x0 * 16, y0 * 16, x1 * 16, y1 * 16)]

    framing = measure_framing(gan, det, n=3, resolution=16, progress=False)
    assert (framing.center_x, framing.center_y, framing.size) == pytest.approx((0.5, 0.4, 0.4))
    assert framing.detector.endswith("det")


def test_load_or_measure_framing_stores_it_beside_the_checkpoint(gan, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "model_512.pkl"
    ckpt.write_bytes(b"weights")
    kw = dict(n=2, resolution=16, progress=False)
    a = FixedBoxDetector(box=(0.3, 0.2, 0.7, 0.6), name="a")
    first = load_or_measure_framing(gan, str(ckpt), a, **kw)
    assert same_framing(first, 0.5, 0.4, 0.4, "a", 2) and len(a.images) == 2
    record = json.loads((tmp_path / "model_512.pkl.framing.json").read_text())
    assert record["checkpoint"] == {"size": 7, "mtime_ns": os.stat(ckpt).st_mtime_ns}
    assert Framing.from_dict(record["framings"]["a"]) == first
    # reused: the detector is not called again
    assert load_or_measure_framing(gan, str(ckpt), a, **kw) == first and len(a.images) == 2
    # a second detector is stored beside the first
    b = FixedBoxDetector(box=(0.4, 0.3, 0.6, 0.5), name="b")
    second = load_or_measure_framing(gan, str(ckpt), b, **kw)
    record = json.loads((tmp_path / "model_512.pkl.framing.json").read_text())
    assert set(record["framings"]) == {"a", "b"} and second.size == pytest.approx(0.2)
    assert load_or_measure_framing(gan, str(ckpt), a, **kw) == first and len(a.images) == 2
    # other settings are measured again
    load_or_measure_framing(gan, str(ckpt), a, n=3, resolution=16, progress=False)
    assert len(a.images) == 5
    # a changed checkpoint (mtime) is measured again, and old entries are dropped
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_or_measure_framing(gan, str(ckpt), a, **kw) == first and len(a.images) == 7
    record = json.loads((tmp_path / "model_512.pkl.framing.json").read_text())
    assert set(record["framings"]) == {"a"} and record["checkpoint"]["mtime_ns"] == st.st_mtime_ns + 10**9
    # detector "none" renders nothing
    none = load_or_measure_framing(gan, str(ckpt), make_detector("none"))
    assert none == Framing(0.5, 0.5, al.NONE_FRAMING_SIZE, "none", 0)


def test_load_or_measure_framing_falls_back_to_the_cache(gan, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ro" / "model.pkl"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x" * 10)
    beside = str(ckpt) + ".framing.json"
    real_write = al.write_json

    def write(path, data):  # the checkpoint's folder is read-only
        if path == beside:
            raise PermissionError(13, "Permission denied", path)
        real_write(path, data)

    monkeypatch.setattr(al, "write_json", write)
    det = FixedBoxDetector(name="a")
    kw = dict(n=2, resolution=16, progress=False)
    framing = load_or_measure_framing(gan, str(ckpt), det, **kw)
    stored = list((tmp_path / "cache" / "tiny" / "framing").glob("*.json"))
    assert not os.path.exists(beside) and len(stored) == 1
    assert al.framing_paths(str(ckpt))[1] == str(stored[0])
    assert load_or_measure_framing(gan, str(ckpt), det, **kw) == framing and len(det.images) == 2


def test_load_or_measure_framing_of_a_checkpoint_folder(gan, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights.safetensors").write_bytes(b"1234")
    det = FixedBoxDetector(name="a")
    kw = dict(n=2, resolution=16, progress=False)
    load_or_measure_framing(gan, str(folder), det, **kw)
    assert (tmp_path / "model.framing.json").is_file() and not (folder / "model.framing.json").exists()
    load_or_measure_framing(gan, str(folder) + "/", det, **kw)
    assert len(det.images) == 2
    (folder / "sub" / "weights.safetensors").write_bytes(b"123456")  # new weights inside the folder
    load_or_measure_framing(gan, str(folder), det, **kw)
    assert len(det.images) == 4


def test_framing_round_trips_through_a_dict():
    f = Framing(0.51, 0.43, 0.27, "haar:x.xml", 14)
    assert Framing.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    with pytest.raises(ValueError, match="size"):
        Framing.from_dict({"center_x": 0.5, "center_y": 0.5, "detector": "x", "renders": 1})


def test_measure_framing_with_haar_on_random_renders_fails_clearly(gan):
    # the tiny random GAN renders no faces: the real detector must say so, not return garbage
    with pytest.raises(ValueError, match="haar:haarcascade_frontalface_default.xml"):
        measure_framing(gan, make_detector("haar"), n=2, resolution=32, progress=False)


def test_a_detector_that_finds_no_face_in_the_gan_is_remembered_and_not_suggested_again(
    gan, tmp_path, monkeypatch
):
    """The framing's failure is recorded with the checkpoint: asked again, the same detector fails at
    once (no renders) with the same line; the line never suggests the detector that failed."""
    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "model_512.pkl"
    ckpt.write_bytes(b"weights")
    haar = make_detector("haar")
    calls = []
    real = type(haar).__call__
    monkeypatch.setattr(type(haar), "__call__", lambda self, image: calls.append(1) or real(self, image))
    kw = dict(n=4, resolution=32, progress=False)
    with pytest.raises(al.FramingError) as first:
        load_or_measure_framing(gan, str(ckpt), haar, **kw)
    message = str(first.value)
    assert len(calls) == 4 and "found a face in only 0 of 4 frontal renders" in message
    assert "'haar'" not in message.split("use another detector")[1] and "'none'" in message
    with pytest.raises(al.FramingError) as again:
        load_or_measure_framing(gan, str(ckpt), haar, **kw)
    assert len(calls) == 4  # not measured again
    assert str(again.value).startswith(message) and "model_512.pkl.framing.json" in str(again.value)
    # a working detector for the same checkpoint is still measured and stored beside the failure
    assert load_or_measure_framing(gan, str(ckpt), FixedBoxDetector(name="a"), **kw).renders == 4
    # another cascade than the default one: 'haar' is still a choice
    assert "'haar'" in al.other_detectors("haar:my_cascade.xml")


def test_a_face_detector_with_the_tiny_gan_is_refused_at_once(tmp_path, monkeypatch):
    from gan_prior.portrait_init import PortraitInitConfig
    from gan_prior.tiny_models import tiny_model_path

    monkeypatch.setenv("PORTRAIT3D_CACHE", str(tmp_path / "cache"))
    tiny = tiny_model_path("portrait-gan")
    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    cfg = PortraitInitConfig.from_dict({"image": str(photo), "vgg16": "random", "detector": "haar"})
    with pytest.raises(
        ValueError, match=r"^detector: 'haar' cannot be used with the tiny GAN .*detector 'none'"
    ):
        cfg.validate(tiny)
    cfg.validate(str(photo))  # any other checkpoint: the framing decides
    PortraitInitConfig.from_dict({"image": str(photo), "vgg16": "random", "detector": "none"}).validate(tiny)
