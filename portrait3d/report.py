"""``portrait3d report`` / ``portrait3d gallery``: a page per portrait and a gallery over many.

A report is ``<trial>/save/index.html`` (a threestudio trial folder: ``configs/parsed.yaml`` and
``save/``). It only uses files inside the trial folder, with relative links, and works from
``file://`` with no network: images and videos are plain ``<img>``/``<video>`` tags, and the
interactive 3D view is Google's ``<model-viewer>`` web component (npm ``@google/model-viewer``, its
classic-script UMD bundle, copied to ``save/_report/``). Browsers refuse to ``fetch()`` a file from
a ``file://`` page, so the exported ``.glb`` is also written as a ``data:`` URL inside a small
script (``save/_report/portrait.glb.js``) that the page loads with a ``<script>`` tag.

The gallery is ``<folder>/index.html``: one card per trial (poster, video on hover or tap, CLIP
score, time, status, link to the report), sortable; trials come from a batch's
``manifest.jsonl`` when the folder has one, otherwise from the trial folders found below it.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import quote

from gan_prior.files import read_json, write_text

from .batch import MANIFEST, read_manifest  # the batch writes it (importing it starts no Ray)
from .cli import UsageError

ASSETS = "_report"  # beside index.html: the viewer bundle and the mesh as a script
VIEWER_PACKAGE = "@google/model-viewer"
VIEWER_DIST = "dist/model-viewer-umd.min.js"  # a classic script (a module script is blocked on file://)
VIEWER_FILE = "model-viewer.min.js"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ViewerMissing(UsageError):
    """The viewer bundle is not installed (``npm ci`` at the repository root installs it)."""


def viewer_bundle() -> str:
    """The path of model-viewer's UMD bundle: ``$PORTRAIT3D_VIEWER_JS`` or the repository's
    ``node_modules`` (``npm ci`` at the repository root). Raises :class:`ViewerMissing`."""
    path = os.environ.get("PORTRAIT3D_VIEWER_JS") or os.path.join(
        REPO_ROOT, "node_modules", VIEWER_PACKAGE, VIEWER_DIST
    )
    if not os.path.isfile(path):
        raise ViewerMissing(
            f"the 3D viewer bundle {path} is missing: run `npm ci` in {REPO_ROOT} "
            f"(or set PORTRAIT3D_VIEWER_JS to {VIEWER_PACKAGE}'s {VIEWER_DIST})"
        )
    return path


# ---------------------------------------------------------------------------------------- the files
def is_trial(folder: str) -> bool:
    """A threestudio trial folder: ``configs/parsed.yaml`` and ``save/``."""
    return os.path.isfile(os.path.join(folder, "configs", "parsed.yaml")) and os.path.isdir(
        os.path.join(folder, "save")
    )


def _step_files(save: str, pattern: str) -> Dict[int, str]:
    """``{step: name}`` for the entries of ``save`` whose name matches ``pattern`` (group 1 = step)."""
    found = {}
    for name in os.listdir(save):
        m = re.fullmatch(pattern, name)
        if m:
            found[int(m.group(1))] = name
    return found


def _latest(save: str, pattern: str, check=None) -> Optional[str]:
    """The name matching ``pattern`` with the highest step (and passing ``check``), or None."""
    for _, name in sorted(_step_files(save, pattern).items(), reverse=True):
        if check is None or check(os.path.join(save, name)):
            return name
    return None


def read_yaml(path: str) -> dict:
    """A YAML mapping (a trial's configs/parsed.yaml), or {} when it cannot be read."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def config_value(cfg: dict, dotted: str):
    """``cfg["a"]["b"]`` for ``"a.b"``, or None."""
    for key in dotted.split("."):
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


# settings shown on the page (the whole parsed.yaml is one click away)
SETTINGS = (
    ("prompt", "system.prompt_processor.prompt"),
    ("negative prompt", "system.prompt_processor.negative_prompt"),
    ("seed", "seed"),
    ("initialisation", "system.initializer.source"),
    ("diffusion model", "system.prompt_processor.pretrained_model_name_or_path"),
    ("guidance", "system.guidance_type"),
    ("CFG scale", "system.guidance.guidance_scale"),
    ("t range", ("system.guidance.min_step_percent", "system.guidance.max_step_percent")),
    ("SDS steps", "system.sds_steps"),
    ("refinement steps", "system.refine.steps"),
    ("render size", ("data.width", "data.height")),
    ("GAN checkpoint", "system.prior_checkpoint"),
)


@dataclass
class Trial:
    """What a report shows, as paths relative to ``save/``."""

    folder: str
    config: dict
    settings: List[tuple] = field(default_factory=list)
    inits: List[dict] = field(default_factory=list)
    sds: List[str] = field(default_factory=list)
    refine: List[tuple] = field(default_factory=list)
    refine_comparison: Optional[str] = None
    videos: List[tuple] = field(default_factory=list)
    views: Optional[str] = None
    mesh: Optional[str] = None
    metrics: Optional[dict] = None
    metrics_file: Optional[str] = None
    contact_sheet: Optional[str] = None
    files: List[tuple] = field(default_factory=list)

    @property
    def save(self) -> str:
        return os.path.join(self.folder, "save")

    @property
    def prompt(self) -> str:
        return str(
            config_value(self.config, "system.prompt_processor.prompt") or os.path.basename(self.folder)
        )

    @property
    def poster(self) -> Optional[str]:
        """An image that stands for the portrait (the turntable's contact sheet, else the aligned crop)."""
        if self.views:
            return self.views
        for init in self.inits:
            if init.get("aligned"):
                return init["aligned"]
        return self.sds[-1] if self.sds else None

    @property
    def turntable(self) -> Optional[str]:
        for kind, path in self.videos:
            if kind == "large pose":
                return path
        return self.videos[0][1] if self.videos else None


def _init_record(save: str, key: str) -> dict:
    folder = os.path.join(save, "init", key)
    rel = f"init/{key}"
    cands = read_json(os.path.join(folder, "candidates.json")) or {}
    align = read_json(os.path.join(folder, "alignment.json")) or {}
    rows = {r.get("name"): r for r in align.get("report", []) if isinstance(r, dict)}
    files = list(cands.get("files") or [])
    if not files and os.path.isdir(os.path.join(folder, "candidates")):
        files = [
            f"candidates/{n}"
            for n in sorted(os.listdir(os.path.join(folder, "candidates")))
            if n.lower().endswith((".png", ".jpg", ".jpeg"))
        ]
    for name in rows:  # a photo (source=image) is named by its own path
        if name not in files and os.path.isfile(os.path.join(folder, name)):
            files.append(name)
    candidates = []
    for name in files:
        row = rows.get(name)
        if row is None:
            state, reason = "unexamined", "not examined (the first usable image is taken)"
        else:
            state = "kept" if row.get("kept") else "dropped"
            reason = row.get("reason") or ""
        if row is not None and align.get("chosen") is not None and list(rows).index(name) == align["chosen"]:
            state = "chosen"
        candidates.append(
            {"src": f"{rel}/{name}", "name": os.path.basename(name), "state": state, "reason": reason}
        )
    camera = align.get("camera") or {}
    record = {
        "key": key,
        "candidates": candidates,
        "timings": read_json(os.path.join(folder, "timings.json")),
        "inversion": read_json(os.path.join(folder, "inversion.json")),
        "camera": {k: camera[k] for k in ("yaw", "elevation") if k in camera},
        "prompt": cands.get("prompt"),
        "seeds": cands.get("seeds"),
    }
    for name in ("aligned", "comparison"):
        if os.path.isfile(os.path.join(folder, f"{name}.png")):
            record[name] = f"{rel}/{name}.png"
    return record


def collect(folder: str) -> Trial:
    """Everything a report shows, read from a trial folder."""
    folder = os.path.abspath(folder)
    if not is_trial(folder):
        raise UsageError(
            f"{folder} is not a threestudio trial folder (no configs/parsed.yaml and save/); "
            "pass outputs/<experiment>/<trial>"
        )
    t = Trial(folder=folder, config=read_yaml(os.path.join(folder, "configs", "parsed.yaml")))
    save = t.save
    for label, key in SETTINGS:
        value = (
            (" × " if label == "render size" else " … ").join(str(config_value(t.config, k)) for k in key)
            if isinstance(key, tuple)
            else config_value(t.config, key)
        )
        if value not in (None, ""):
            t.settings.append((label, value))
    init_root = os.path.join(save, "init")
    if os.path.isdir(init_root):
        t.inits = [
            _init_record(save, k)
            for k in sorted(os.listdir(init_root))
            if os.path.isdir(os.path.join(init_root, k))
        ]
    sds = [
        (int(m.group(1)), int(m.group(2)), n)
        for n in os.listdir(save)
        for m in [re.fullmatch(r"it(\d+)-(\d+)\.png", n)]
        if m
    ]
    t.sds = [n for *_, n in sorted(sds)]
    refine = os.path.join(save, "refine")
    if os.path.isdir(refine):
        views = sorted(n for n in os.listdir(refine) if re.fullmatch(r"view_\d+\.png", n))
        t.refine = [
            (
                f"refine/{v}",
                f"refine/refined_{v[5:]}"
                if os.path.isfile(os.path.join(refine, "refined_" + v[5:]))
                else None,
            )
            for v in views
        ]
        if os.path.isfile(os.path.join(refine, "comparison.png")):
            t.refine_comparison = "refine/comparison.png"
    for kind, suffix in (("large pose", "large_pose"), ("small pose", "small_pose"), ("test", "test")):
        name = _latest(save, rf"it(\d+)-{suffix}\.mp4")
        if name:
            t.videos.append((kind, name))
    t.views = _latest(save, r"it(\d+)-views\.png")
    export = _latest(
        save,
        r"it(\d+)-export",
        lambda p: (
            os.path.isfile(os.path.join(p, "portrait.glb")) or any(n.endswith(".glb") for n in os.listdir(p))
        ),
    )
    if export:
        glbs = sorted(n for n in os.listdir(os.path.join(save, export)) if n.endswith(".glb"))
        t.mesh = f"{export}/" + ("portrait.glb" if "portrait.glb" in glbs else glbs[0])
    evaluation = _latest(save, r"it(\d+)-eval", lambda p: os.path.isfile(os.path.join(p, "metrics.json")))
    if evaluation:
        t.metrics_file = f"{evaluation}/metrics.json"
        t.metrics = read_json(os.path.join(save, t.metrics_file))
        if os.path.isfile(os.path.join(save, evaluation, "contact_sheet.png")):
            t.contact_sheet = f"{evaluation}/contact_sheet.png"
    t.files = _file_list(folder)
    return t


def _file_list(folder: str) -> List[tuple]:
    """``(path relative to save/, size)`` of every file of the trial but the report's own."""
    save = os.path.join(folder, "save")
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not (rel_root == "save" and d == ASSETS)
        )
        for name in sorted(files):
            if name.startswith(".") or (rel_root == "save" and name == "index.html"):
                continue
            path = os.path.join(root, name)
            found.append((os.path.relpath(path, save).replace(os.sep, "/"), os.path.getsize(path)))
    return found


# ------------------------------------------------------------------------------------------ HTML
CSS = """
:root{--fg:#1d2024;--muted:#5f6670;--line:#dde1e6;--bg:#f6f7f9;--card:#fff;--ok:#1a7f37;--bad:#c62828;--warn:#8a6d00}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header,main,footer{max-width:1200px;margin:0 auto;padding:0 16px}
header{padding-top:20px}
h1{font-size:1.45rem;margin:.2em 0;overflow-wrap:anywhere}
h2{font-size:1.15rem;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h3{font-size:1rem;margin:1em 0 .4em}
a{color:#0b57d0}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9rem;margin:.6em 0}
.muted{color:var(--muted);font-size:.9rem}
table{border-collapse:collapse;width:100%;font-size:.92rem;background:var(--card)}
td,th{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef0f3;font-weight:600}
.grid{display:grid;gap:10px;grid-template-columns:repeat(auto-fill,minmax(var(--min,160px),1fr))}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px}
figure img,figure video{width:100%;height:auto;display:block;border-radius:3px;image-rendering:auto;background:#ddd}
figcaption{font-size:.82rem;color:var(--muted);margin-top:4px;overflow-wrap:anywhere}
.wide img{width:100%;max-width:1024px;height:auto;display:block;border-radius:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:3px}
.tag{display:inline-block;font-size:.75rem;font-weight:600;padding:0 6px;border-radius:9px;color:#fff;background:var(--muted)}
.tag.chosen,.tag.kept,.tag.done{background:var(--ok)}.tag.dropped,.tag.failed{background:var(--bad)}
.tag.running,.tag.pending{background:var(--warn)}
.viewer{display:grid;gap:12px;grid-template-columns:minmax(0,2fr) minmax(0,1fr)}
model-viewer{width:100%;height:min(70vh,520px);background:#e9ecef;border:1px solid var(--line);border-radius:6px;
 --poster-color:transparent}
.note{background:#fff8e1;border:1px solid #f0d98c;padding:8px 12px;border-radius:6px}
details{margin:.4em 0}summary{cursor:pointer}
pre{white-space:pre-wrap;font-size:.8rem;background:var(--card);border:1px solid var(--line);padding:8px;overflow:auto}
.files{columns:2 320px;font-size:.85rem}.files div{break-inside:avoid;overflow-wrap:anywhere}
footer{padding:24px 16px;color:var(--muted);font-size:.8rem}
@media (max-width:700px){body{font-size:14px}.viewer{grid-template-columns:1fr}.pair{gap:2px}
 .grid{--min:130px!important}}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _u(path: str) -> str:
    """A relative URL for a relative file path."""
    return _e(quote(path.replace(os.sep, "/")))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _num(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return _e(value)


def _figure(src: str, caption: str = "", alt: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><a href="{_u(src)}"><img src="{_u(src)}" alt="{_e(alt or caption)}"></a>{cap}</figure>'


def _page(title: str, body: str, head: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style>{head}</head>\n<body>\n{body}\n"
        f"<footer>Written by <code>portrait3d</code> on {time.strftime('%Y-%m-%d %H:%M')}.</footer>"
        "</body></html>\n"
    )


VIEWER_SCRIPT = """<script>
(function(){var mv=document.getElementById('mesh');if(!mv||!window.P3D_MODEL)return;
mv.addEventListener('load',function(){if(!mv.model)return;mv.model.materials.forEach(function(m){
 /* vertex colours are the albedo: a matte material (glTF's default is fully metallic) */
 m.pbrMetallicRoughness.setMetallicFactor(0);m.pbrMetallicRoughness.setRoughnessFactor(1);});
 mv.dataset.loaded='1';});
mv.addEventListener('error',function(e){console.error('3D view: '+(e.detail&&e.detail.type||'error'));});
mv.src=window.P3D_MODEL;})();
</script>"""


def render_report(t: Trial, viewer: Optional[str]) -> str:
    """The page's HTML. ``viewer`` is the bundle's path relative to save/, or None (no 3D view)."""
    title = t.prompt
    sections, nav = [], []

    def section(anchor: str, heading: str, content: str) -> None:
        nav.append(f'<a href="#{anchor}">{_e(heading)}</a>')
        sections.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>\n{content}\n</section>')

    # settings
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in t.settings)
    parsed = ""
    try:
        with open(os.path.join(t.folder, "configs", "parsed.yaml"), encoding="utf-8") as f:
            parsed = f.read()
    except OSError:
        pass
    section(
        "settings",
        "Prompt and settings",
        f"<table>{rows}</table><details><summary>the whole configuration "
        f'(<a href="../configs/parsed.yaml">parsed.yaml</a>)</summary><pre>{_e(parsed)}</pre></details>',
    )

    # initialisation
    if t.inits:
        parts = []
        for init in t.inits:
            cards = "".join(
                _figure(
                    c["src"],
                    f'<span class="tag {c["state"]}">{c["state"]}</span> {_e(c["name"])}'
                    f"<br>{_e(c['reason'])}",
                    c["name"],
                )
                for c in init["candidates"]
            )
            facts = []
            if init.get("camera"):
                facts.append(
                    "camera estimate: " + ", ".join(f"{k} {v:+g}°" for k, v in init["camera"].items())
                )
            inv = init.get("inversion") or {}
            if "steps" in inv:
                facts.append(
                    f"inversion: {inv['steps']} steps, distance {_num(inv.get('distance_first'))} → "
                    f"{_num(inv.get('distance_last'))}"
                )
            timings = init.get("timings") or {}
            if timings:
                facts.append(
                    "time: "
                    + ", ".join(
                        f"{k} {v.get('seconds', 0):.1f} s" for k, v in timings.items() if isinstance(v, dict)
                    )
                )
            crops = "".join(
                _figure(init[k], cap)
                for k, cap in (
                    ("aligned", "aligned crop (the inversion's target)"),
                    ("comparison", "target | inversion"),
                )
                if init.get(k)
            )
            parts.append(
                f"<h3>init/{_e(init['key'])}</h3>"
                + (f'<p class="muted">{_e("; ".join(facts))}</p>' if facts else "")
                + (f'<div class="grid">{cards}</div>' if cards else "")
                + (f'<div class="grid" style="--min:240px;margin-top:10px">{crops}</div>' if crops else "")
            )
        section("init", "Initialisation: candidates, alignment, inversion", "".join(parts))

    if t.sds:
        figs = "".join(_figure(n, _e(n)) for n in t.sds)
        section("sds", "SDS progress", f'<div class="grid" style="--min:220px">{figs}</div>')

    if t.refine:
        figs = "".join(
            f'<figure><div class="pair"><a href="{_u(v)}"><img src="{_u(v)}" alt="view {i}"></a>'
            + (f'<a href="{_u(r)}"><img src="{_u(r)}" alt="refined {i}"></a>' if r else "<div></div>")
            + f"</div><figcaption>view {i:02d}: render | SDEdit</figcaption></figure>"
            for i, (v, r) in enumerate(t.refine)
        )
        extra = (
            f'<details><summary>renders over refined (comparison.png)</summary><div class="wide">'
            f'<img src="{_u(t.refine_comparison)}" alt="comparison"></div></details>'
            if t.refine_comparison
            else ""
        )
        section(
            "refine",
            f"Refinement: {len(t.refine)} views before and after SDEdit",
            f'<div class="grid" style="--min:200px">{figs}</div>{extra}',
        )

    if t.videos or t.views:
        figs = "".join(
            f'<figure><video src="{_u(p)}" controls loop muted playsinline preload="auto"></video>'
            f'<figcaption>{_e(k)}: <a href="{_u(p)}">{_e(p)}</a></figcaption></figure>'
            for k, p in t.videos
        )
        sheet = (
            f'<div class="wide" style="margin-top:10px"><img src="{_u(t.views)}" alt="views"></div>'
            if t.views
            else ""
        )
        section("videos", "Videos", f'<div class="grid" style="--min:240px">{figs}</div>{sheet}')

    # the 3D view
    if t.mesh and viewer:
        mesh3d = (
            f'<div class="viewer"><model-viewer id="mesh" loading="eager" camera-controls touch-action="pan-y" '
            f'interaction-prompt="none" camera-orbit="0deg 80deg auto" shadow-intensity="0" exposure="1.1" '
            f'alt="the exported mesh"></model-viewer><div><p>Drag to turn the exported mesh, scroll or '
            f"pinch to zoom (its vertex colours, marching cubes on the density).</p>"
            f'<p><a href="{_u(t.mesh)}">{_e(t.mesh)}</a></p></div></div>'
        )
        section("view3d", "3D view", mesh3d)
    elif t.mesh:
        section(
            "view3d",
            "3D view",
            f'<p class="note">The 3D viewer was not installed when this page was written: '
            f"run <code>npm ci</code> in the repository, then <code>portrait3d report "
            f'{_e(t.folder)}</code>. The mesh: <a href="{_u(t.mesh)}">{_e(t.mesh)}</a>.</p>',
        )
    else:
        section(
            "view3d",
            "3D view",
            '<p class="muted">No exported mesh yet: run <code>launch.py --export</code> '
            "(README, <em>Resume and export</em>), then <code>portrait3d report</code>.</p>",
        )

    if t.metrics:
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{_num(v, 5)}</td></tr>"
            for k, v in sorted(t.metrics.items())
            if not isinstance(v, (dict, list))
        )
        sheet = (
            f'<div class="wide" style="margin-top:10px"><img src="{_u(t.contact_sheet)}" alt="evaluated views">'
            f"</div>"
            if t.contact_sheet
            else ""
        )
        section(
            "metrics",
            "Metrics",
            f'<table>{rows}</table><p class="muted"><a href="{_u(t.metrics_file)}">'
            f"{_e(t.metrics_file)}</a></p>{sheet}",
        )

    files = "".join(
        f'<div><a href="{_u(p)}">{_e(p)}</a> <span class="muted">{_size(s)}</span></div>' for p, s in t.files
    )
    section("files", f"All files ({len(t.files)})", f'<div class="files">{files}</div>')

    head = ""
    body_end = ""
    if t.mesh and viewer:
        head = f'<script src="{_u(viewer)}"></script><script src="{_u(ASSETS + "/" + os.path.basename(t.mesh) + ".js")}"></script>'
        body_end = VIEWER_SCRIPT
    header = (
        f'<header><p class="muted"><a href="../..">{_e(os.path.basename(os.path.dirname(t.folder)))}</a> / '
        f"{_e(os.path.basename(t.folder))}</p><h1>{_e(title)}</h1><nav>{''.join(nav)}</nav></header>"
    )
    return _page(title, header + "<main>" + "\n".join(sections) + "</main>" + body_end, head)


def write_report(folder: str, require_viewer: bool = True, warn=None, trial: Optional[Trial] = None) -> str:
    """Write ``<folder>/save/index.html`` (and ``save/_report/``); returns the page's path.

    With a mesh to show and no viewer bundle, raises :class:`ViewerMissing` when
    ``require_viewer``, else writes the page with a note in place of the 3D view (and calls
    ``warn(message)``). ``trial``: ``collect(folder)`` when the caller has it already."""
    t = trial or collect(folder)
    viewer = None
    if t.mesh:
        try:
            bundle = viewer_bundle()
        except ViewerMissing as e:
            if require_viewer:
                raise
            if warn is not None:
                warn(f"{folder}: the report has no 3D view: {e}")
            bundle = None
        if bundle:
            assets = os.path.join(t.save, ASSETS)
            os.makedirs(assets, exist_ok=True)
            with open(bundle, encoding="utf-8") as f:  # without its source map link (not shipped)
                code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", f.read())
            write_text(os.path.join(assets, VIEWER_FILE), code)
            with open(os.path.join(t.save, t.mesh), "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            write_text(
                os.path.join(assets, os.path.basename(t.mesh) + ".js"),
                f'window.P3D_MODEL="data:model/gltf-binary;base64,{data}";\n',
            )
            viewer = f"{ASSETS}/{VIEWER_FILE}"
    path = os.path.join(t.save, "index.html")
    write_text(path, render_report(t, viewer))
    return path


# --------------------------------------------------------------------------------------- gallery
def find_trials(folder: str, max_depth: int = 4) -> List[str]:
    """Trial folders at or below ``folder`` (not looking inside a trial), sorted."""
    found = []
    for root, dirs, _ in os.walk(folder):
        if is_trial(root):
            found.append(root)
            dirs[:] = []
            continue
        depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        dirs[:] = (
            []
            if depth >= max_depth
            else sorted(d for d in dirs if not d.startswith(".") and d != "node_modules")
        )
    return sorted(found)


def _seconds(entry: dict) -> Optional[float]:
    """The run's wall time from a manifest entry: the sum of its stage ``times`` (portrait3d batch)."""
    value = entry.get("times")
    nums = [v for v in value.values() if isinstance(v, (int, float))] if isinstance(value, dict) else []
    return float(sum(nums)) if nums else None


def _trial_seconds(folder: str) -> Optional[float]:
    """A trial's wall time without a manifest: from its oldest file to the newest one in save/
    (a resumed or re-exported run rewrites its config, so the config's time is no start)."""
    start = end = None
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ASSETS]
        in_save = os.path.relpath(root, folder).split(os.sep)[0] == "save"
        for name in files:
            if name == "index.html" or name.startswith("."):
                continue
            mtime = os.path.getmtime(os.path.join(root, name))
            start = mtime if start is None else min(start, mtime)
            if in_save:
                end = mtime if end is None else max(end, mtime)
    return None if start is None or end is None else end - start


def _resolve_trial(folder: str, path: Optional[str]) -> Optional[str]:
    """A manifest's trial folder (relative to the manifest's folder): the trial itself, or the one
    trial found below it (threestudio nests ``<exp>/<tag>``); None when there is none."""
    if not path:
        return None
    path = path if os.path.isabs(path) else os.path.join(folder, path)
    if is_trial(path):
        return path
    found = find_trials(path) if os.path.isdir(path) else []
    return found[-1] if found else None


def _card(entry: dict, trial: Optional[Trial], page_dir: str) -> str:
    status = str(entry.get("status") or ("done" if trial else "unknown"))
    prompt = str(entry.get("prompt") or (trial.prompt if trial else entry.get("name") or "?"))
    name = str(entry.get("name") or (os.path.basename(trial.folder) if trial else ""))
    clip = (trial.metrics or {}).get("clip_score") if trial else None
    seconds = entry.get("_seconds")
    rel = (
        (lambda p: os.path.relpath(os.path.join(trial.save, p), page_dir).replace(os.sep, "/"))
        if trial
        else None
    )
    media = '<div class="ph">no image yet</div>'
    if trial and trial.poster:
        video = trial.turntable
        sheet = ' class="sheet"' if trial.poster == trial.views else ""
        media = (
            f'<a href="{_u(rel("index.html"))}"><img{sheet} src="{_u(rel(trial.poster))}" alt="{_e(prompt)}"></a>'
            + (
                f'<video src="{_u(rel(video))}" muted loop playsinline preload="metadata"></video>'
                if video
                else ""
            )
        )
    facts = [f'<span class="tag {_e(status)}">{_e(status)}</span>']
    if clip is not None:
        facts.append(f"CLIP {clip:.2f}")
    if seconds is not None:
        facts.append(f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s")
    if entry.get("seed") is not None:
        facts.append(f"seed {_e(entry['seed'])}")
    if entry.get("node"):
        facts.append(_e(entry["node"]))
    error = f'<p class="error">{_e(entry["error"])}</p>' if entry.get("error") else ""
    link = f'<a href="{_u(rel("index.html"))}">report</a>' if trial else ""
    attrs = (
        f'data-clip="{"" if clip is None else clip}" data-time="{"" if seconds is None else seconds}" '
        f'data-name="{_e(name.lower())}" data-order="{entry["_order"]}" data-status="{_e(status)}"'
    )
    return (
        f'<article class="card" {attrs}><div class="media">{media}</div><div class="body">'
        f'<p class="prompt">{_e(prompt)}</p><p class="facts">{" · ".join(facts)}</p>{error}'
        f'<p class="muted">{_e(name)} {link}</p></div></article>'
    )


GALLERY_CSS = """
.cards{display:grid;gap:14px;grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;display:flex;flex-direction:column}
.card .media{position:relative;background:#e9ecef;aspect-ratio:1;display:flex;align-items:center;justify-content:center}
.card .media img,.card .media video{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
/* the poster is the turntable's contact sheet (views side by side): show its first, front view */
.card .media img.sheet{object-fit:cover;object-position:0 50%}
.card .media video{opacity:0;transition:opacity .2s;pointer-events:none}.card.playing .media video{opacity:1}
.card .ph{color:var(--muted);font-size:.9rem}
.card .body{padding:8px 10px}.card p{margin:.2em 0}.prompt{font-weight:600;overflow-wrap:anywhere}
.facts{font-size:.85rem}.error{color:var(--bad);font-size:.85rem;overflow-wrap:anywhere}
.controls{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:.5em 0 1em}
select{font:inherit;padding:4px}
"""

GALLERY_SCRIPT = """<script>
(function(){var box=document.getElementById('cards'),sel=document.getElementById('sort');
function val(c,k){var v=c.dataset[k];return v===''?null:(k==='name'?v:parseFloat(v));}
function sort(){var how=sel.value.split(':'),k=how[0],dir=how[1]==='desc'?-1:1;
 var cards=Array.prototype.slice.call(box.children);
 cards.sort(function(a,b){var x=val(a,k),y=val(b,k);
  if(x===null&&y===null)return val(a,'order')-val(b,'order');if(x===null)return 1;if(y===null)return -1;
  if(x<y)return -dir;if(x>y)return dir;return val(a,'order')-val(b,'order');});
 cards.forEach(function(c){box.appendChild(c);});}
sel.addEventListener('change',sort);sort();
Array.prototype.forEach.call(box.querySelectorAll('.card'),function(c){var v=c.querySelector('video');if(!v)return;
 function play(){c.classList.add('playing');var p=v.play();if(p&&p.catch)p.catch(function(){});}
 function stop(){c.classList.remove('playing');v.pause();}
 c.addEventListener('mouseenter',play);c.addEventListener('mouseleave',stop);
 c.querySelector('.media').addEventListener('click',function(e){if(!c.classList.contains('playing')){
  e.preventDefault();play();}});});})();
</script>"""


def write_gallery(folder: str, reports: bool = True) -> str:
    """Write ``<folder>/index.html`` over the trials of ``folder`` (its ``manifest.jsonl`` when present)
    and, with ``reports``, each trial's report. Returns the page's path."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise UsageError(
            f"{folder} is not a folder; pass a folder of runs (e.g. outputs/ or a batch's runs/)"
        )
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        entries = list(read_manifest(folder).values())
        source = f"{MANIFEST} ({len(entries)} prompts)"
    else:
        entries = [{"trial": t} for t in find_trials(folder)]
        source = f"{len(entries)} trial folders found"
    if not entries:
        raise UsageError(f"{folder} holds no trial folders (configs/parsed.yaml + save/) and no {MANIFEST}")
    cards = []
    counts: Dict[str, int] = {}
    for order, entry in enumerate(entries):
        trial_dir = _resolve_trial(folder, entry.get("trial"))
        trial = collect(trial_dir) if trial_dir else None
        if trial is not None and reports:
            write_report(trial.folder, require_viewer=False, trial=trial)
        seconds = _seconds(entry)
        if seconds is None and trial is not None and entry.get("status", "done") == "done":
            seconds = _trial_seconds(trial.folder)
        entry = {**entry, "_order": order, "_seconds": seconds}
        status = str(entry.get("status") or ("done" if trial else "unknown"))
        counts[status] = counts.get(status, 0) + 1
        cards.append(_card(entry, trial, folder))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    body = (
        f'<header><h1>Portraits</h1><p class="muted">{_e(folder)} — {_e(source)}: {_e(summary)}</p>'
        '<div class="controls"><label>Sort by <select id="sort">'
        '<option value="order:asc">run order</option><option value="clip:desc">CLIP score (best first)</option>'
        '<option value="time:asc">time (fastest first)</option><option value="time:desc">time (slowest first)'
        '</option><option value="name:asc">name</option></select></label>'
        '<span class="muted">hover or tap a picture to play its turntable</span></div></header>'
        f'<main><div class="cards" id="cards">{"".join(cards)}</div></main>{GALLERY_SCRIPT}'
    )
    path = os.path.join(folder, "index.html")
    write_text(path, _page("Portraits", body, f"<style>{GALLERY_CSS}</style>"))
    return path


# ------------------------------------------------------------------------------------------- CLI
def _report(args) -> int:
    for folder in args.trials:
        print(write_report(folder))
    return 0


def _gallery(args) -> int:
    print(write_gallery(args.folder, reports=not args.no_reports))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write <trial>/save/index.html: one page showing a run",
        description="Write <trial>/save/index.html: the prompt and settings, the "
        "initialisation, SDS images, refinement views, videos, an interactive "
        "3D view of the exported mesh, metrics and links to every file. "
        "Self-contained; opens from file:// with no network.",
    )
    p.add_argument(
        "trials", nargs="+", metavar="TRIAL", help="threestudio trial folder(s) (outputs/<name>/<trial>)"
    )
    p.set_defaults(func=_report)
    g = subparsers.add_parser(
        "gallery",
        help="write <folder>/index.html: one card per portrait",
        description="Write <folder>/index.html over the trials below FOLDER (or a batch's "
        "runs/ with its manifest.jsonl): poster, video on hover, metrics, status, "
        "errors, sortable by CLIP score or time; also (re)writes each report.",
    )
    g.add_argument("folder", help="a folder of runs (e.g. outputs/ or a batch's runs/)")
    g.add_argument("--no-reports", action="store_true", help="do not (re)write each trial's report page")
    g.set_defaults(func=_gallery)
