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
from helpers import ROOT, fake_trial, requires_threestudio

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


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def test_values_a_page_does_not_expect_show_as_they_are(tmp_path):
    """A metrics value "n/a", a yaw given as a string, None, a list, a time as a word: the report and
    the gallery show them as they are (None as "–"), never a traceback."""
    runs = tmp_path / "runs"
    trial = fake_trial(str(runs / "exp" / "t"), prompt="odd values", clip=None, mesh=False)
    save = os.path.join(trial, "save")
    _write_json(
        os.path.join(save, "it8-eval", "metrics.json"), {"clip_score": "n/a", "fid": None, "kid": [1]}
    )
    init = os.path.join(save, "init", "k1")
    _write_json(os.path.join(init, "alignment.json"), {"camera": {"yaw": "left", "elevation": None}})
    _write_json(os.path.join(init, "timings.json"), {"inversion": {"seconds": "slow"}})
    _write_json(
        os.path.join(init, "inversion.json"), {"steps": "three", "distance_first": [2], "distance_last": 1}
    )
    manifest = {"prompt": "odd values", "name": "t", "trial": "exp", "status": "done", "seed": "abc"}
    (runs / "manifest.jsonl").write_text(json.dumps({**manifest, "times": {"train": "fast"}}) + "\n")
    r = portrait3d("gallery", str(runs))  # also writes the report
    assert r.returncode == 0 and not r.stderr, r.stderr
    page = open(os.path.join(save, "index.html")).read()
    assert "<th>clip_score</th><td>n/a</td>" in page and "<th>fid</th><td>–</td>" in page
    assert "camera estimate: yaw left°, elevation –°" in page and "inversion slow s" in page
    assert "inversion: three steps, distance [2] → 1" in page
    gallery = open(runs / "index.html").read()
    assert "CLIP n/a" in gallery and 'data-clip=""' in gallery and "seed abc" in gallery


def test_the_3d_view_shows_the_exports_clean_up_and_fidelity(tmp_path):
    """The export's mesh_fidelity.json beside the GLB: the report says the mesh is textured and shows
    its clean-up and the PSNR / SSIM / IoU of each mesh against the neural renders, with a link to
    the file; values it does not expect show as they are."""
    import html

    trial = fake_trial(str(tmp_path / "exp" / "t"), prompt="fidelity")
    export = os.path.join(trial, "save", "it8-export")
    report = {
        "mesh": {
            "vertices": 25059,
            "faces": 49999,
            "components": 3,
            "components_dropped": 2,
            "faces_dropped_in_components": 120,
            "decimated_from_faces": 637112,
            "textured": True,
            "texture_size": 2048,
            "charts": 812,
        },
        "cameras": {"views": "the 21 refinement cameras", "resolution": 128},
        "mask_opacity": 0.125,
        "textured": {"psnr": 27.31, "ssim": 0.8123, "iou": 0.95},
        "vertex_colours": {"psnr": 24.02, "ssim": 0.7, "iou": 0.95},
        "isosurface_vertex_colours": {"psnr": None, "ssim": "n/a", "iou": 0.9},
    }
    _write_json(os.path.join(export, "mesh_fidelity.json"), report)
    page = html.unescape(_page(trial))
    assert "its baked texture, marching cubes" in page
    assert "25059 vertices, 49999 faces: the largest of 3 components (2 dropped, 120 faces)" in page
    assert "decimated from 637112 faces; 2048² texture, 812 charts." in page
    assert "<tr><th>textured mesh</th><td>27.31</td><td>0.812</td><td>0.950</td></tr>" in page
    assert "<tr><th>vertex colours (same bake)</th><td>24.02</td><td>0.700</td>" in page
    assert "<td>–</td><td>n/a</td><td>0.900</td>" in page  # raw isosurface colours: None, a string
    assert "the 21 refinement cameras at 128²" in page and 'href="it8-export/mesh_fidelity.json"' in page
    # a vertex-coloured export (texture: false), and a file that holds no mapping
    _write_json(
        os.path.join(export, "mesh_fidelity.json"), {**report, "mesh": {**report["mesh"], "textured": False}}
    )
    page = html.unescape(_page(trial))
    assert "its vertex colours, marching cubes" in page and "texture," not in page.split("3D view")[-1][:2000]
    _write_json(os.path.join(export, "mesh_fidelity.json"), {"mesh": [1], "textured": "x"})
    page = html.unescape(_page(trial))
    assert "its vertex colours" in page and 'id="mesh-fidelity"' not in page


HOSTILE = (
    "<script>window.__pwned=(window.__pwned||[]).concat('script')</script>",
    '"><img src=x onerror="window.__pwned=(window.__pwned||[]).concat(\'img\')">',
    "'><svg onload=window.__pwned=1>",
    "javascript:window.__pwned=1",
)
# file and folder names cannot hold '/'
HOSTILE_NAME = "<img src=x onerror=window.__pwned=1>"


def hostile_trial(folder: str) -> str:
    """A trial whose every field a page shows holds hostile text: the config's settings and prompt,
    the initialisation's files and JSON, the metrics, the status' error, file and folder names."""
    s = HOSTILE
    fake_trial(folder, prompt=s[0] + s[1], clip=None, mesh=True)
    config = {
        "seed": s[2],
        "data": {"width": s[1], "height": s[3]},
        "system": {
            "prompt_processor": {
                "prompt": s[0] + s[1],
                "negative_prompt": s[2],
                "pretrained_model_name_or_path": s[3],
            },
            "initializer": {"source": s[1]},
            "guidance_type": s[0],
            "guidance": {"guidance_scale": s[2], "min_step_percent": s[1], "max_step_percent": s[0]},
            "sds_steps": s[3],
            "refine": {"steps": s[1]},
            "prior_checkpoint": s[0],
        },
    }
    _write_json(os.path.join(folder, "configs", "parsed.yaml"), config)  # JSON is YAML
    save = os.path.join(folder, "save")
    init = os.path.join(save, "init", HOSTILE_NAME)
    os.makedirs(os.path.join(init, "candidates"))
    shutil.copy(os.path.join(save, "it4-0.png"), os.path.join(init, "candidates", HOSTILE_NAME + ".png"))
    shutil.copy(os.path.join(save, "it4-0.png"), os.path.join(save, HOSTILE[3]))  # a javascript: name
    _write_json(os.path.join(init, "candidates.json"), {"files": [f"candidates/{HOSTILE_NAME}.png", s[0]]})
    _write_json(
        os.path.join(init, "alignment.json"),
        {
            "report": [{"name": f"candidates/{HOSTILE_NAME}.png", "kept": True, "reason": s[1]}],
            "chosen": 0,
            "camera": {"yaw": s[0], "elevation": s[2]},
        },
    )
    _write_json(os.path.join(init, "timings.json"), {s[1]: {"seconds": s[0]}})
    _write_json(
        os.path.join(init, "inversion.json"), {"steps": s[0], "distance_first": s[1], "distance_last": s[2]}
    )
    _write_json(os.path.join(save, "it8-eval", "metrics.json"), {s[0]: s[1], "clip_score": s[2], s[3]: None})
    from portrait3d.trial import write_status

    write_status(folder, "failed", stage="test", step=8, error=s[0] + s[1])
    return folder


def _no_script_ran(page, html_path: str, scripts: int):
    page.goto("file://" + html_path)
    page.wait_for_timeout(1500)
    assert page.evaluate("window.__pwned === undefined"), page.evaluate("window.__pwned")
    found = page.evaluate(
        """() => ({
        scripts: document.querySelectorAll('script').length,
        handlers: Array.from(document.querySelectorAll('*')).flatMap(e =>
            Array.from(e.attributes).filter(a => a.name.startsWith('on')).map(a => e.tagName + ' ' + a.name)),
        links: Array.from(document.querySelectorAll('a[href], [src]')).map(e => e.href || e.src),
        })"""
    )
    assert found["scripts"] == scripts and found["handlers"] == [], found
    assert all(url.startswith("file:") for url in found["links"]), [
        u for u in found["links"] if not u.startswith("file:")
    ]
    return page.inner_text("body")


@in_a_browser
def test_hostile_strings_show_as_text_and_run_nothing(tmp_path):
    """Hostile strings (<script>, "><img onerror=…>, javascript: links) in every field of a report
    and a gallery: in Chromium no script runs, no element gets an event handler, every link stays a
    file, and the strings show as text."""
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    trial = hostile_trial(str(runs / HOSTILE_NAME / HOSTILE_NAME))
    s = HOSTILE
    entries = [
        {
            "name": s[0],
            "prompt": s[1],
            "seed": s[2],
            "status": s[3],
            "error": s[0],
            "node": s[1],
            "trial": s[3],
            "times": {"train": s[2]},
        },
        {"name": "ok", "prompt": s[0], "status": "failed", "error": s[1], "trial": HOSTILE_NAME},
    ]
    (runs / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    r = portrait3d("gallery", str(runs))
    assert r.returncode == 0, r.stderr
    dialogs = []
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        text = _no_script_ran(
            page, os.path.join(trial, "save", "index.html"), scripts=3
        )  # viewer, mesh, page
        for value in s:
            assert value in text, value
        assert HOSTILE_NAME in text and "(test stage): " + s[0] + s[1] in text  # the status' error
        text = _no_script_ran(page, str(runs / "index.html"), scripts=1)
        for value in s:
            assert value in text, value
        page.screenshot(path=os.path.join(SHOTS, "gallery-hostile.png"), full_page=True)
        browser.close()
    assert dialogs == []


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


def _vertex_coloured_twin(glb: str, out: str) -> None:
    """The same mesh as the textured ``glb`` with its texture sampled at the vertices (what a
    vertex-coloured export of this run holds), written as a GLB."""
    import trimesh

    from gan_prior.mesh import vertex_normals
    from gan_prior.mesh_export import ExportedMesh
    from gan_prior.mesh_files import write_mesh

    mesh = trimesh.load(glb, force="mesh", process=False)
    texture = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    h, w = texture.shape[:2]
    uv = np.asarray(mesh.visual.uv)  # trimesh: v up
    colours = texture[
        ((1 - uv[:, 1]) * h).astype(int).clip(0, h - 1), (uv[:, 0] * w).astype(int).clip(0, w - 1)
    ]
    v, f = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces)
    write_mesh(
        os.path.dirname(out),
        os.path.basename(out)[:-4],
        ExportedMesh(v, f, vertex_normals(v, f), colours),
        ("glb",),
    )


def _scales(textured: np.ndarray, vertex: np.ndarray, block: int = 16) -> tuple:
    """(mean |difference| of the 16×16-pixel block means, mean |difference| of the pixels) of two
    screenshots, over the blocks that lie wholly on both meshes: how far the two differ at the
    scale of the triangles, and with the texture's own detail."""
    vals, counts = np.unique(textured.reshape(-1, 3), axis=0, return_counts=True)
    background = vals[counts.argmax()]
    on = (abs(textured - background).sum(-1) > 30) & (abs(vertex - background).sum(-1) > 30)
    h, w = (np.array(on.shape) // block) * block

    def blocks(x):
        return x[:h, :w].reshape(h // block, block, w // block, block, -1).astype(float)

    inside = blocks(on[..., None]).mean((1, 3))[..., 0] == 1
    coarse = abs(blocks(textured).mean((1, 3)) - blocks(vertex).mean((1, 3))).mean(-1)[inside].mean()
    pixels = np.repeat(np.repeat(inside, block, 0), block, 1)
    fine = abs(textured[:h, :w] - vertex[:h, :w]).mean(-1)[pixels].mean()
    return float(coarse), float(fine), int(inside.sum())


SIDE_BY_SIDE = """([url, width, height]) => {
  const mv = document.getElementById('mesh');
  for (const [id, src] of [['textured', window.P3D_MODEL], ['vertex', url]]) {
    const c = document.createElement('model-viewer');
    for (const a of mv.getAttributeNames()) if (!['id', 'src'].includes(a)) c.setAttribute(a, mv.getAttribute(a));
    Object.assign(c.style, {width: width + 'px', height: height + 'px'});
    c.id = id;
    c.addEventListener('load', () => { c.dataset.loaded = '1'; }, {once: true});
    c.src = src;
    mv.parentElement.appendChild(c);
  }
}"""


@in_a_browser
def test_the_3d_view_shows_the_texture_detail(run, tmp_path):
    """The report's model-viewer draws the baked texture: beside the vertex-coloured GLB of the
    same mesh (its texture sampled at the vertices), in two viewers framed alike, the textured one
    has the same silhouette, brightness and colours at the scale of the triangles (the texture is
    where its UVs say, sRGB decoded like the linear vertex colours), and detail within them."""
    import base64

    from playwright.sync_api import sync_playwright

    tree, trial, _ = run
    save = os.path.join(trial, "save")
    export = sorted(d for d in os.listdir(save) if d.endswith("-export"))[-1]
    report = json.load(open(os.path.join(save, export, "mesh_fidelity.json")))
    assert report["mesh"]["textured"] and report["textured"]["psnr"] > report["vertex_colours"]["psnr"]
    twin = str(tmp_path / "vertex.glb")
    _vertex_coloured_twin(os.path.join(save, export, "portrait.glb"), twin)
    twin_url = "data:model/gltf-binary;base64," + base64.b64encode(open(twin, "rb").read()).decode()
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        watch = PageWatch(page)
        page.goto("file://" + os.path.join(save, "index.html"))
        page.wait_for_function("document.getElementById('mesh').dataset.loaded === '1'", timeout=90000)
        text = page.inner_text("#view3d")
        assert (
            "its baked texture" in text and "textured mesh" in text and "vertex colours (same bake)" in text
        )
        page.evaluate(SIDE_BY_SIDE, [twin_url, 640, 480])
        page.wait_for_function(
            "['textured', 'vertex'].every(id => document.getElementById(id).dataset.loaded === '1')",
            timeout=90000,
        )
        page.wait_for_timeout(1500)
        shots = [
            _png(page.locator(f"#{name}").screenshot(path=os.path.join(SHOTS, f"3d-{name}.png")))
            for name in ("textured", "vertex")
        ]
        watch.check()
        browser.close()
    h, w = min(x.shape[0] for x in shots), min(x.shape[1] for x in shots)
    textured, vertex = (x[:h, :w] for x in shots)
    vals, counts = np.unique(textured.reshape(-1, 3), axis=0, return_counts=True)
    background = vals[counts.argmax()]
    on_t, on_v = (abs(x - background).sum(-1) > 30 for x in (textured, vertex))
    assert on_t.mean() > 0.05 and (on_t ^ on_v).mean() < 0.05 * on_t.mean()  # the same mesh, framed alike
    assert abs(textured[on_t].mean() - vertex[on_v].mean()) < 0.05 * textured[on_t].mean()
    coarse, fine, blocks = _scales(textured, vertex)
    assert blocks > 50 and coarse < 8, (coarse, blocks)  # the same colours where the triangles are
    assert fine > 1.4 * coarse, (fine, coarse)  # and the texture's detail within them


def test_metrics_not_computed_show_a_dash_not_none(tmp_path):
    trial = fake_trial(str(tmp_path / "exp" / "t1"), clip=31.5, mesh=False)
    with open(os.path.join(trial, "save", "it8-eval", "metrics.json"), "w") as f:
        json.dump({"clip_score": 31.5, "fid": None, "kid_mean": None, "num_renders": 8}, f)
    assert portrait3d("report", trial).returncode == 0
    page = open(os.path.join(trial, "save", "index.html")).read()
    assert "<td>None</td>" not in page and "<th>fid</th><td>–</td>" in page


@pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "-")
def test_long_trial_names_stay_inside_their_gallery_cards(tmp_path):
    """A trial folder name has no spaces (threestudio's tag): it wraps inside its card."""
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    name = "upper_body_photo,_portrait_of_a_woman_with_long_red_hair_in_a_garden@20261130-050748"
    fake_trial(str(runs / "portrait3d-tiny" / name), prompt="upper body photo", mesh=False)
    assert portrait3d("gallery", str(runs), "--no-reports").returncode == 0
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 390, "height": 800})  # a phone
        page.goto("file://" + str(runs / "index.html"))
        overflow = page.evaluate(
            "Array.from(document.querySelectorAll('.card')).map(c => c.scrollWidth - c.clientWidth)"
        )
        browser.close()
    assert overflow and max(overflow) <= 0, overflow


def _copy_trial(trial: str, dest: str, ckpts: bool = True) -> str:
    ignore = ["code", "index.html", "_report"] + ([] if ckpts else ["ckpts"])
    shutil.copytree(trial, dest, symlinks=True, ignore=shutil.ignore_patterns(*ignore))
    return dest


def _page(trial: str) -> str:
    r = portrait3d("report", trial)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(trial, "save", "index.html")) as f:
        return f.read()


@in_a_browser
def test_a_trials_status_is_read_from_what_it_holds(run, tmp_path):
    """Real trials of the tiny run: done; failed in its test stage (a CLIP folder that holds no CLIP),
    with and without its checkpoint; running, then killed. The report, the gallery and `portrait3d
    run`'s message say the same: what failed and where it stopped, and --export only with a checkpoint."""
    import html
    import signal
    import time

    from threestudio_env import launch, launch_env

    from portrait3d.run import _failed
    from portrait3d.trial import Trial

    tree, trial, _ = run
    cache = os.path.join(os.path.dirname(tree), "cache")
    outputs = os.path.join(tree, "outputs", "portrait3d-tiny")
    done = Trial(trial).status()
    assert (done.state, done.step, done.stage, done.label) == ("done", 8, "export", "done at step 8")

    # failed in the test stage, at step 8, with its checkpoints
    crashed = _copy_trial(trial, os.path.join(outputs, "crashed"))
    not_clip = tmp_path / "not-a-clip"
    not_clip.mkdir()
    args = ["--config", os.path.join(crashed, "configs", "parsed.yaml"), "--test"]
    proc = launch(
        tree,
        cache,
        *args,
        f"resume={os.path.join(crashed, 'ckpts', 'last.ckpt')}",
        "tag=crashed",
        f"system.evaluation.clip_model={not_clip}",
    )
    assert proc.returncode != 0 and "cannot load a CLIP model" in proc.stderr, proc.stderr[-3000:]
    status = Trial(crashed).status()
    assert (status.state, status.step, status.stage) == ("failed", 8, "test"), status
    assert status.error.startswith("--clip: cannot load a CLIP model from") and str(not_clip) in status.error
    page = html.unescape(_page(crashed))
    assert "failed</span> at step 8 (test stage): <strong>" + status.error in page
    assert "resume=" + os.path.join(crashed, "ckpts", "last.ckpt") in page  # how to continue
    message = str(_failed("training", 1, None, Trial(crashed)))
    assert status.error in message and f"its trial {crashed} is failed at step 8" in message

    # the same failure without a checkpoint (and no export): nothing to resume or export
    truncated = _copy_trial(crashed, os.path.join(outputs, "no-checkpoint"), ckpts=False)
    shutil.rmtree(os.path.join(truncated, "save", "it8-export"))
    status = Trial(truncated).status()
    assert (status.state, status.step, status.checkpoint) == ("failed", 8, None)
    page = html.unescape(_page(truncated))
    assert "It saved no checkpoint" in page and "the run saved no checkpoint to export from" in page
    assert "--export" not in page and "resume=" not in page

    # running, then killed without a word: stopped at its last checkpoint
    killed = _copy_trial(trial, os.path.join(outputs, "killed"))
    os.remove(os.path.join(killed, "status.json"))
    proc = subprocess.Popen(
        [sys.executable, "launch.py", *args[:1], os.path.join(killed, "configs", "parsed.yaml"), "--test"]
        + [f"resume={os.path.join(killed, 'ckpts', 'last.ckpt')}", "tag=killed"],
        cwd=tree,
        env=launch_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 600
        while Trial(killed).status_record().get("state") != "running" and proc.poll() is None:
            assert time.time() < deadline, "the test stage never started"
            time.sleep(0.1)
        status = Trial(killed).status()
        assert (status.state, status.stage) == ("running", "test"), (status, proc.poll())
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    status = Trial(killed).status()
    assert (status.state, status.step, status.label) == ("stopped", 8, "stopped at step 8"), status
    page = html.unescape(_page(killed))
    assert "stopped</span> at step 8: the run ended without finishing" in page and "resume=" in page

    # the gallery: every trial, with the status it holds
    r = portrait3d("gallery", outputs, "--no-reports")
    assert r.returncode == 0, r.stderr
    gallery = html.unescape(open(os.path.join(outputs, "index.html")).read())
    assert "4 trial folders found: 1 done, 2 failed, 1 stopped" in gallery
    for name, state in (
        ("report", "done"),
        ("crashed", "failed"),
        ("no-checkpoint", "failed"),
        ("killed", "stopped"),
    ):
        card = gallery.split(f'data-name="{name}"')[1].split("</article>")[0]
        assert f'data-status="{state}"' in card, (name, card)
    assert gallery.count("--clip: cannot load a CLIP model") == 2


def test_the_gallery_is_no_more_readable_than_the_prompts_it_shows(tmp_path):
    """A trial whose parsed config (its prompt) only its owner may read makes the gallery page, which
    shows that prompt, private too (a trial's own page already was); public trials leave it public."""
    import stat

    from portrait3d.report import write_gallery

    fake_trial(str(tmp_path / "runs" / "p" / "public"), prompt="a public prompt")
    old = os.umask(0o022)
    try:
        page = write_gallery(str(tmp_path / "runs"), reports=False)
        assert stat.S_IMODE(os.stat(page).st_mode) == 0o644
        fake_trial(str(tmp_path / "runs" / "p" / "private"), prompt="my private prompt")
        os.chmod(tmp_path / "runs" / "p" / "private" / "configs" / "parsed.yaml", 0o600)
        page = write_gallery(str(tmp_path / "runs"), reports=False)
        assert "my private prompt" in open(page, encoding="utf-8").read()
        assert stat.S_IMODE(os.stat(page).st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_page_linked_out_of_the_trial_is_refused_before_anything_is_written(tmp_path):
    """``report --overwrite`` on a trial whose ``save/index.html`` links out of it: one line, and no
    ``save/_report/`` assets written first."""
    from portrait3d.errors import UsageError
    from portrait3d.report import write_report

    trial = tmp_path / "runs" / "p" / "t"
    fake_trial(str(trial))
    (tmp_path / "elsewhere.html").write_text("not yours")
    os.symlink(tmp_path / "elsewhere.html", trial / "save" / "index.html")
    with pytest.raises(UsageError, match="index.html is a symbolic link out of the trial folder"):
        write_report(str(trial), require_viewer=False, overwrite=True)
    assert not (trial / "save" / "_report").exists()
    assert (tmp_path / "elsewhere.html").read_text() == "not yours"
