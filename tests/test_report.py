"""`portrait3d report` and `portrait3d gallery`: the page a run writes (at the end of its test stage
and of --export) and the gallery over many runs, opened in headless Chromium from file:// with
the network blocked: no console errors, every image loaded, videos with a duration, a 3D view that
draws and turns when dragged, one gallery card per trial and working sorting.

The browser tests need Debian's Chromium (`apt-get install chromium`; or PORTRAIT3D_CHROMIUM=path)
and the `playwright` package (requirements.txt; it drives that Chromium, no browser download) and
are skipped, with the reason, only without them. The report needs the viewer bundle: `npm ci` at
the repository root. Screenshots of each page are saved under tests/screenshots/ (or
$PORTRAIT3D_SCREENSHOTS).
"""

import json
import os
import shutil
import subprocess
import sys
from urllib.parse import unquote

import numpy as np
import pytest
from helpers import ROOT, requires_threestudio

CHROMIUM = os.environ.get("PORTRAIT3D_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("PORTRAIT3D_SCREENSHOTS", os.path.join(ROOT, "tests", "screenshots"))
# as root, in a container with no network: no sandbox, no background connections; WebGL on the CPU
# (SwiftShader), and every host name unresolvable so nothing can leave the machine
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:")


def browser_missing() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: pip install -r requirements.txt"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set PORTRAIT3D_CHROMIUM)"
    return ""


def in_a_browser(test):
    """A test on a real run in Chromium: marked as a threestudio test (so CI=true never skips it),
    skipped with the reason where threestudio or the browser is missing."""
    for mark in [
        *requires_threestudio,
        pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "-"),
    ]:
        test = mark(test)
    return test


def portrait3d(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "portrait3d", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
        timeout=300,
    )


# --------------------------------------------------------------------------- a small fake trial
def fake_trial(folder, prompt="a portrait", clip=None, mesh=True):
    """A trial folder with a parsed config, two images and (optionally) a coloured mesh."""
    import imageio.v2 as imageio
    import trimesh

    os.makedirs(os.path.join(folder, "configs"))
    with open(os.path.join(folder, "configs", "parsed.yaml"), "w") as f:
        json.dump({"seed": 0, "system": {"prompt_processor": {"prompt": prompt}}}, f)  # JSON is YAML
    save = os.path.join(folder, "save")
    os.makedirs(os.path.join(save, "refine"))
    imageio.imwrite(os.path.join(save, "it4-0.png"), np.full((8, 16, 3), 90, np.uint8))
    imageio.imwrite(os.path.join(save, "refine", "view_00.png"), np.full((8, 8, 3), 30, np.uint8))
    imageio.imwrite(os.path.join(save, "refine", "refined_00.png"), np.full((8, 8, 3), 60, np.uint8))
    if clip is not None:
        os.makedirs(os.path.join(save, "it8-eval"))
        with open(os.path.join(save, "it8-eval", "metrics.json"), "w") as f:
            json.dump({"clip_score": clip, "num_renders": 8}, f)
    if mesh:
        box = trimesh.creation.box(extents=(0.3, 0.4, 0.2))
        colours = np.tile(np.array([[200, 40, 40, 255]], np.uint8), (len(box.vertices), 1))
        os.makedirs(os.path.join(save, "it8-export"))
        trimesh.Trimesh(box.vertices, box.faces, vertex_colors=colours).export(
            os.path.join(save, "it8-export", "portrait.glb")
        )
    return folder


def test_report_lists_every_file_and_links_them_relatively(tmp_path):
    trial = fake_trial(str(tmp_path / "exp" / "t1"), prompt="a <b>bold</b> prompt", clip=31.5, mesh=False)
    r = portrait3d("report", trial)
    assert r.returncode == 0, r.stderr
    page = open(os.path.join(trial, "save", "index.html")).read()
    assert r.stdout.strip() == os.path.join(trial, "save", "index.html")
    assert "a &lt;b&gt;bold&lt;/b&gt; prompt" in page and "<b>bold" not in page  # escaped
    for rel in (
        "it4-0.png",
        "refine/view_00.png",
        "refine/refined_00.png",
        "it8-eval/metrics.json",
        "../configs/parsed.yaml",
    ):
        assert f'href="{rel}"' in page, rel
    assert "31.5" in page and "No exported mesh yet" in page
    assert "http://" not in page and "https://" not in page  # nothing from the network
    assert not os.path.exists(os.path.join(trial, "save", "_report"))  # no mesh, no viewer copied


def test_report_errors_are_one_line_naming_the_fix(tmp_path):
    r = portrait3d("report", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not a threestudio trial folder" in r.stderr and "outputs/<experiment>/<trial>" in r.stderr
    trial = fake_trial(str(tmp_path / "t"))  # a mesh to show, and the viewer bundle missing
    r = portrait3d("report", trial, env={"PORTRAIT3D_VIEWER_JS": str(tmp_path / "nowhere.js")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "npm ci" in r.stderr and "viewer" in r.stderr
    assert not os.path.exists(os.path.join(trial, "save", "index.html"))
    r = portrait3d("gallery", str(tmp_path / "empty-does-not-exist"))
    assert r.returncode == 2 and "is not a folder" in r.stderr
    os.makedirs(tmp_path / "runs")
    (tmp_path / "runs" / "manifest.jsonl").write_text('{"prompt": "a", "status": "done"}\nnot json\n')
    r = portrait3d("gallery", str(tmp_path / "runs"))
    assert r.returncode == 2 and "manifest.jsonl:2 is not a JSON object" in r.stderr, r.stderr


def test_gallery_reads_the_manifest_or_finds_the_trials(tmp_path):
    runs = tmp_path / "runs"
    fake_trial(str(runs / "a" / "t"), prompt="first", clip=20.0, mesh=False)
    fake_trial(str(runs / "b" / "c" / "t"), prompt="second", clip=25.0, mesh=False)
    r = portrait3d("gallery", str(runs))
    assert r.returncode == 0, r.stderr
    page = open(runs / "index.html").read()
    assert page.count('<article class="card"') == 2 and "first" in page and "second" in page
    assert 'href="a/t/save/index.html"' in page and os.path.isfile(runs / "a" / "t" / "save" / "index.html")
    manifest = [
        {"prompt": "first", "name": "first", "seed": 0, "trial": "a/t", "status": "running"},
        {
            "prompt": "first",
            "name": "first",
            "seed": 0,
            "trial": "a/t",
            "status": "done",
            "times": {"train": 50.0, "export": 10.0},
        },  # a later line for the same name wins
        {"prompt": "second", "name": "second", "trial": "b", "status": "done"},  # the trial is below b/
        {
            "prompt": "broken",
            "name": "broken",
            "seed": 3,
            "trial": "x",
            "status": "failed",
            "error": "system.bad_key: no such option",
        },
    ]
    (runs / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    r = portrait3d("gallery", str(runs), "--no-reports")
    assert r.returncode == 0, r.stderr
    page = open(runs / "index.html").read()
    assert page.count('<article class="card"') == 3  # the manifest's prompts, not the folders found
    assert 'data-time="60.0"' in page and "system.bad_key: no such option" in page
    assert 'href="b/c/t/save/index.html"' in page
    assert "2 done, 1 failed" in page


# ------------------------------------------------------------------------------- the real run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny config's run through threestudio's launch.py: --train, then --export."""
    if browser_missing():
        pytest.skip(browser_missing())
    from threestudio_env import launch, make_worktree

    base = tmp_path_factory.mktemp("report")
    tree = make_worktree(str(base / "threestudio"))
    cache = str(base / "cache")
    proc = launch(
        tree,
        cache,
        "--config",
        "configs/portrait3d-tiny.yaml",
        "--train",
        "tag=report",
        "use_timestamp=false",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    trial = os.path.join(tree, "outputs", "portrait3d-tiny", "report")
    after_train = open(os.path.join(trial, "save", "index.html")).read()  # written by the test stage
    proc = launch(
        tree,
        cache,
        "--config",
        os.path.join(trial, "configs", "parsed.yaml"),
        "--export",
        f"resume={os.path.join(trial, 'ckpts', 'last.ckpt')}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tree, trial, after_train


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class PageWatch:
    """Console errors, page errors, failed loads, and any request that is not a local file."""

    def __init__(self, page):
        self.errors, self.remote = [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url[:120]} {r.failure}"))
        page.on("request", lambda r: r.url.startswith(LOCAL_SCHEMES) or self.remote.append(r.url))
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(LOCAL_SCHEMES)
                else (self.remote.append(route.request.url), route.abort())
            ),
        )

    def check(self):
        assert self.remote == [], f"network requests: {self.remote}"
        assert self.errors == [], self.errors


def _png(data: bytes) -> np.ndarray:
    import io

    import imageio.v2 as imageio

    return imageio.imread(io.BytesIO(data))[..., :3].astype(int)


def _check_media(page, ready=1):
    images = page.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    not_loaded = [src for src, complete, width in images if not (complete and width > 0)]
    assert not not_loaded, f"images not loaded: {not_loaded}"
    page.wait_for_function(
        "r => Array.from(document.querySelectorAll('video')).every(v => v.readyState >= r || v.error)",
        arg=ready,
        timeout=60000,
    )
    videos = page.evaluate(
        "Array.from(document.querySelectorAll('video')).map(v => [v.getAttribute('src'), "
        "v.error && v.error.code, v.duration, v.videoWidth])"
    )
    bad = [v for v in videos if v[1] or not (v[2] > 0) or not v[3] > 0]
    assert not bad, f"videos without metadata: {bad}"
    return images, videos


@in_a_browser
def test_report_page_in_a_browser(run):
    from playwright.sync_api import sync_playwright

    tree, trial, after_train = run
    assert "No exported mesh yet" in after_train  # the test stage wrote it, before any export
    save = os.path.join(trial, "save")
    page_html = open(os.path.join(save, "index.html")).read()  # rewritten by --export
    assert "<model-viewer" in page_html and os.path.isfile(os.path.join(save, "_report", "portrait.glb.js"))
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = _browser(p)
        for width, height, name in ((1280, 900, "report.png"), (390, 844, "report-phone.png")):
            page = browser.new_page(viewport={"width": width, "height": height})
            watch = PageWatch(page)
            page.goto("file://" + os.path.join(save, "index.html"))
            images, videos = _check_media(page, ready=2)  # preload="auto": the first frame shows
            srcs = {src for src, *_ in images}
            assert len([s for s in srcs if s.startswith("refine/view_")]) == 21
            assert len([s for s in srcs if s.startswith("refine/refined_")]) == 21
            assert any("/candidates/" in s for s in srcs) and any(s.endswith("aligned.png") for s in srcs)
            assert any(s.endswith("comparison.png") for s in srcs) and "it4-0.png" in srcs
            assert sorted(v[0] for v in videos) == [
                "it8-large_pose.mp4",
                "it8-small_pose.mp4",
                "it8-test.mp4",
            ]
            text = page.inner_text("body")
            assert "upper body photo, portrait of a woman" in text and "clip_score" in text
            assert "detector 'none': the first image, taken as aligned" in text  # the alignment's reason
            links = page.evaluate(
                "Array.from(document.querySelectorAll('#files a')).map(a => a.getAttribute('href'))"
            )
            assert "it8-export/portrait.glb" in links and "../configs/parsed.yaml" in links
            for link in links:  # every link points at a file of the trial
                assert os.path.isfile(os.path.normpath(os.path.join(save, unquote(link)))), link
            # the 3D view: draws the mesh, and turns when dragged
            page.wait_for_function("document.getElementById('mesh').dataset.loaded === '1'", timeout=90000)
            viewer = page.locator("#mesh")
            viewer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            before = _png(viewer.screenshot(path=os.path.join(SHOTS, "3d-before-" + name)))
            background = before[2, 2]
            drawn = (abs(before - background).sum(-1) > 30).mean()
            assert drawn > 0.02, (
                f"the 3D view is blank ({drawn:.4f} of its pixels differ from the background)"
            )
            box = viewer.bounding_box()
            # off the centre, where model-viewer keeps its (invisible) pan-target marker
            x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + box["width"] / 3, y + 10, steps=12)
            page.mouse.up()
            page.wait_for_timeout(1000)
            after = _png(viewer.screenshot(path=os.path.join(SHOTS, "3d-" + name)))
            changed = (abs(after - before).sum(-1) > 30).mean()
            assert changed > 0.01, f"dragging did not turn the 3D view ({changed:.4f} of its pixels changed)"
            page.screenshot(path=os.path.join(SHOTS, name), full_page=True)
            watch.check()
            page.close()
        browser.close()
    print(f"screenshots: {SHOTS}")


@in_a_browser
def test_gallery_in_a_browser(run, tmp_path):
    """Three portraits (the run and two copies with other metrics and times) and a failed prompt."""
    from playwright.sync_api import sync_playwright

    tree, trial, _ = run
    runs = tmp_path / "runs"
    entries = []
    for i, (clip, seconds) in enumerate(((28.0, 90.0), (31.0, 300.0), (12.0, 40.0))):
        dest = runs / f"p{i}"
        shutil.copytree(trial, dest, symlinks=True, ignore=shutil.ignore_patterns("ckpts", "code"))
        metrics = dest / "save" / "it8-eval" / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "clip_score": clip}))
        entries.append(
            {
                "prompt": f"portrait {i}",
                "name": f"p{i}",
                "seed": i,
                "trial": f"p{i}",
                "status": "done",
                "error": None,
                "times": {"train": seconds},
                "node": "local",
            }
        )
    entries.append(
        {
            "prompt": "a prompt that failed",
            "name": "bad",
            "seed": 9,
            "trial": "bad",
            "status": "failed",
            "error": "no usable candidate among 2 image(s)",
        }
    )
    (runs / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    r = portrait3d("gallery", str(runs))
    assert r.returncode == 0, r.stderr
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page)
        page.goto("file://" + str(runs / "index.html"))
        images, _ = _check_media(page)
        assert len(images) == 3
        cards = page.locator("article.card")
        assert cards.count() == 4
        assert "no usable candidate among 2 image(s)" in cards.nth(3).inner_text()

        def order():
            return page.evaluate(
                "Array.from(document.querySelectorAll('article.card')).map(c => c.dataset.name)"
            )

        assert order() == ["p0", "p1", "p2", "bad"]
        page.select_option("#sort", "clip:desc")
        assert order() == ["p1", "p0", "p2", "bad"]  # 31, 28, 12; no score last
        page.select_option("#sort", "time:asc")
        assert order() == ["p2", "p0", "p1", "bad"]  # 40 s, 90 s, 300 s
        page.select_option("#sort", "time:desc")
        assert order() == ["p1", "p0", "p2", "bad"]
        page.hover("article.card >> nth=0")  # the turntable plays on hover
        page.wait_for_function("document.querySelector('article.card video').currentTime > 0", timeout=30000)
        href = cards.nth(0).locator("a", has_text="report").get_attribute("href")
        assert href == "p1/save/index.html" and os.path.isfile(runs / href)
        page.screenshot(path=os.path.join(SHOTS, "gallery.png"), full_page=True)
        watch.check()
        browser.close()
