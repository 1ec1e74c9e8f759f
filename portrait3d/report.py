"""``portrait3d report`` / ``portrait3d gallery``: a page per portrait and a gallery over many.

A report is ``<trial>/save/index.html`` (a threestudio trial folder, :mod:`portrait3d.trial`). It only
uses files inside the trial folder, with relative links, and works from ``file://`` with no
network: images and videos are plain ``<img>``/``<video>`` tags, and the interactive 3D view is
Google's ``<model-viewer>`` web component (npm ``@google/model-viewer``, its classic-script UMD
bundle, copied to ``save/_report/``; :func:`viewer_bundle` says where it comes from). Browsers
refuse to ``fetch()`` a file from a ``file://`` page, so the exported ``.glb`` is also written as a
``data:`` URL inside a small script (``save/_report/portrait.glb.js``) that the page loads with a
``<script>`` tag.

The gallery is ``<folder>/index.html``: one card per trial (poster, video on hover or tap, CLIP
score, time, status, link to the report), sortable; trials come from a batch's
``manifest.jsonl`` when the folder has one (and any trial folder below it that the manifest does
not name), otherwise from the trial folders found below it.

The pages are Jinja2 templates (``templates/``, package data) with autoescaping on: every value is
text unless a template says otherwise, and values that are not what a page expects (a metrics value
``"n/a"``, a yaw given as a string, None) are shown as they are or as "–".
"""

from __future__ import annotations

import base64
import os
import re
import time
from typing import Dict, List, Optional
from urllib.parse import quote

from gan_prior.files import write_text

from .errors import UsageError, ViewerMissing
from .manifest import MANIFEST, STATUSES, entry_trial, has_manifest, read_manifest
from .threestudio_env import REPO_ROOT
from .trial import (
    MAX_CONFIG_BYTES,
    REPORT_ASSETS,
    REPORT_PAGE,
    STATES,
    Status,
    Trial,
    find_trials,
    open_trial,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
VIEWER_PACKAGE = "@google/model-viewer"
VIEWER_VERSION = "4.4.0"  # package.json's pin (tests/test_setup.py checks that they agree)
VIEWER_DIST = "dist/model-viewer-umd.min.js"  # a classic script (a module script is blocked on file://)
VIEWER_FILE = "model-viewer.min.js"
OURS = "<footer>Written by <code>portrait3d</code>"  # in every page we write (templates/page.html)
# where a wheel keeps the bundle: setup.py copies it there from node_modules/ at build time
INSTALLED_VIEWER = os.path.join(HERE, "viewer", VIEWER_FILE)


# ---------------------------------------------------------------------------------------- the viewer
def viewer_bundle() -> str:
    """The path of model-viewer's UMD bundle: ``$PORTRAIT3D_VIEWER_JS`` when set; else the copy an
    installed package holds (``portrait3d/viewer/``, put there by setup.py when ``npm ci`` had run);
    else the checkout's ``node_modules/`` (``npm ci``). Raises :class:`ViewerMissing` saying how to
    get it."""
    given = os.environ.get("PORTRAIT3D_VIEWER_JS")
    checkout_copy = os.path.join(REPO_ROOT, "node_modules", VIEWER_PACKAGE, VIEWER_DIST)
    for path in [given] if given else [INSTALLED_VIEWER, checkout_copy]:
        if os.path.isfile(path):
            return path
    if os.path.isfile(os.path.join(REPO_ROOT, "package.json")):  # a checkout (or an editable install)
        raise ViewerMissing(
            f"the 3D viewer bundle {given or checkout_copy} is missing: run `npm ci` in {REPO_ROOT} "
            f"(or set PORTRAIT3D_VIEWER_JS to {VIEWER_PACKAGE}'s {VIEWER_DIST})"
        )
    raise ViewerMissing(
        f"the 3D viewer bundle is missing{f' at {given}' if given else ' from this installation'}: "
        f"run `npm install {VIEWER_PACKAGE}@{VIEWER_VERSION}` in a folder DIR and set "
        f"PORTRAIT3D_VIEWER_JS=DIR/node_modules/{VIEWER_PACKAGE}/{VIEWER_DIST} (or install portrait3d from "
        "a checkout where `npm ci` ran)"
    )


# ------------------------------------------------------------------------------- values on a page
def _num(value, spec: str = ".3g") -> str:
    """A number in ``spec``; anything else as it is (None as "–"): a page never fails on a value."""
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            pass
    return str(value)


def _number(value) -> Optional[float]:
    """``value`` as a finite float when it is a number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value) if abs(value) != float("inf") else None
    return None


def _sortable(value) -> str:
    """A ``data-`` attribute the gallery's sorting reads: the number, or empty."""
    number = _number(value)
    return "" if number is None else repr(number)


def _url(path) -> str:
    """A relative URL for a relative file path (escaped once more by the template)."""
    return quote(str(path).replace(os.sep, "/"))


def _size(n) -> str:
    if _number(n) is None:
        return _num(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _duration(seconds) -> str:
    if _number(seconds) is None:
        return _num(seconds)
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


_ENV = None


def environment():
    """The Jinja2 environment of the pages (autoescaping on for every template)."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            trim_blocks=False,
            keep_trailing_newline=True,
        )
        _ENV.filters.update(num=_num, url=_url, size=_size, duration=_duration, sortable=_sortable)
    return _ENV


def render(template: str, env=None, **values) -> str:
    env = env or environment()
    return env.get_template(template).render(written=time.strftime("%Y-%m-%d %H:%M"), **values)


def _trial_environment(t: Trial):
    """The pages' environment whose ``url`` filter (paths relative to ``save/``) links only what
    resolves inside the trial: a video, image or candidate that is a symbolic link out of it, or a
    name such as ``../../x.png`` from a JSON file, gets an empty link (no request), never the file."""
    env = environment().overlay()
    env.filters["url"] = lambda path: _url(path) if t.holds(os.path.join(t.save, str(path))) else ""
    return env


# ------------------------------------------------------------------------------------------- report
def _init_facts(init: dict) -> List[str]:
    """The camera estimate, the inversion and the stage times of one initialisation, in words."""
    facts = []
    if init["camera"]:
        facts.append(
            "camera estimate: " + ", ".join(f"{k} {_num(v, '+g')}°" for k, v in init["camera"].items())
        )
    inv = init["inversion"]
    if "steps" in inv:
        facts.append(
            f"inversion: {_num(inv['steps'])} steps, distance {_num(inv.get('distance_first'))} → "
            f"{_num(inv.get('distance_last'))}"
        )
    if init["timings"]:
        facts.append("time: " + ", ".join(f"{k} {_num(v, '.1f')} s" for k, v in init["timings"].items()))
    return facts


def render_report(t: Trial, viewer: Optional[str], viewer_missing: str = "") -> str:
    """The page's HTML. ``viewer``: the bundle's path relative to save/, or None (no 3D view)."""
    status = t.status()
    sections = [("settings", "Prompt and settings")]
    if t.inits:
        sections.append(("init", "Initialisation: candidates, alignment, inversion"))
    if t.sds:
        sections.append(("sds", "SDS progress"))
    if t.refine:
        sections.append(("refine", f"Refinement: {len(t.refine)} views before and after SDEdit"))
    if t.videos or t.views:
        sections.append(("videos", "Videos"))
    sections.append(("view3d", "3D view"))
    metrics = sorted((str(k), v) for k, v in (t.metrics or {}).items() if not isinstance(v, (dict, list)))
    if t.metrics:
        sections.append(("metrics", "Metrics"))
    files = t.all_files()
    sections.append(("files", f"All files ({len(files)})"))
    try:
        with open(t.inside(t.config_file), encoding="utf-8", errors="replace") as f:
            parsed = f.read(MAX_CONFIG_BYTES)
    except OSError:
        parsed = ""
    for init in t.inits:
        init["facts"] = _init_facts(init)
    return render(
        "report.html",
        env=_trial_environment(t),
        title=t.prompt,
        t=t,
        status=status,
        sections=sections,
        parsed=parsed,
        metrics=metrics,
        files=files,
        experiment=os.path.basename(os.path.dirname(t.folder)),
        viewer=viewer,
        viewer_missing=viewer_missing or "run `npm ci` in the repository",
        model_script=f"{REPORT_ASSETS}/{os.path.basename(t.mesh)}.js" if t.mesh else None,
        resume_command=t.launch_line("--train"),
        export_command=t.launch_line("--export"),
    )


def shareable(path: str) -> int:
    """The permission bits a page may have that shows what ``path`` holds: those of ``path`` itself
    (a 0600 file's content goes into a 0600 page, never a world-readable one)."""
    try:
        return os.stat(path).st_mode & 0o777 | 0o200  # the user may always rewrite their own page
    except OSError:
        return 0o777


def check_replace(path: str, overwrite: bool, option: str = "--overwrite") -> None:
    """Refuse (one line) to replace ``path`` when it is not a page we wrote (no :data:`OURS` footer),
    unless ``overwrite``: a user's own ``index.html`` in the folder is theirs."""
    if not os.path.lexists(path) or overwrite:
        return
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            ours = OURS.encode() in f.read()
    except OSError:
        ours = False
    if not ours or os.path.islink(path):
        raise UsageError(
            f"{path} exists and was not written by portrait3d; pass {option} to replace it, or move it away"
        )


def write_report(
    folder: str,
    require_viewer: bool = True,
    warn=None,
    trial: Optional[Trial] = None,
    overwrite: bool = False,
) -> str:
    """Write ``<folder>/save/index.html`` (and ``save/_report/``); returns the page's path.

    With a mesh to show and no viewer bundle, raises :class:`ViewerMissing` when
    ``require_viewer``, else writes the page with a note in place of the 3D view (and calls
    ``warn(message)``). ``trial``: the :class:`Trial` of ``folder`` when the caller has it already.
    Reads and writes only inside the trial (no symbolic link out of it, :meth:`Trial.inside`); a
    file that holds another's content is no more readable than it (:func:`shareable`); an
    ``index.html`` we did not write is replaced only with ``overwrite``."""
    t = trial or open_trial(folder)
    path = t.inside(os.path.join(t.inside(t.save), REPORT_PAGE))  # refused before anything is written
    check_replace(path, overwrite)
    viewer, missing = None, ""
    page_mode = shareable(t.inside(t.config_file))
    if t.mesh:
        try:
            bundle = viewer_bundle()
        except ViewerMissing as e:
            if require_viewer:
                raise
            if warn is not None:
                warn(f"{folder}: the report has no 3D view: {e}")
            bundle, missing = None, str(e)
        if bundle:
            assets = t.inside(os.path.join(t.save, REPORT_ASSETS))
            os.makedirs(assets, exist_ok=True)
            with open(bundle, encoding="utf-8") as f:  # without its source map link (not shipped)
                code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", f.read())
            write_text(t.inside(os.path.join(assets, VIEWER_FILE)), code)
            mesh = t.inside(os.path.join(t.save, t.mesh))
            with open(mesh, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            write_text(
                t.inside(os.path.join(assets, os.path.basename(t.mesh) + ".js")),
                f'window.P3D_MODEL="data:model/gltf-binary;base64,{data}";\n',
                mode_mask=shareable(mesh),
            )
            viewer = f"{REPORT_ASSETS}/{VIEWER_FILE}"
    os.makedirs(t.save, exist_ok=True)
    write_text(t.inside(path), render_report(t, viewer, missing), mode_mask=page_mode)
    return path


# ------------------------------------------------------------------------------------------ gallery
def _entry_seconds(entry: dict) -> Optional[float]:
    """The run's wall time from a manifest entry: the sum of its stage ``times`` (portrait3d batch)."""
    value = entry.get("times")
    nums = [_number(v) for v in value.values()] if isinstance(value, dict) else []
    nums = [v for v in nums if v is not None]
    return float(sum(nums)) if nums else None


def card(entry: dict, trial: Optional[Trial], page_dir: str) -> dict:
    """What the gallery shows of one portrait: its manifest entry (``{}`` without one) and its trial.
    The status is the trial's own (:meth:`Trial.status`) when there is a trial, else the entry's."""
    status: Optional[Status] = trial.status() if trial else None
    state = status.state if status else str(entry.get("status") or "unknown")
    error = entry.get("error")
    if status and status.state == "failed" and status.error:
        error = status.error if not error or status.error in str(error) else f"{error} ({status.error})"
    elif status and status.state == "done" and entry.get("status") == "done":
        error = None
    seconds = _entry_seconds(entry)
    if seconds is None and trial is not None and state == "done":
        seconds = trial.seconds()
    clip = (trial.metrics or {}).get("clip_score") if trial else None

    def rel(path: str) -> Optional[str]:  # None for a file that resolves out of the trial (a link)
        full = os.path.join(trial.save, path)
        return os.path.relpath(full, page_dir) if trial.holds(full) else None

    return {
        "name": str(entry.get("name") or (trial.name if trial else "")),
        "prompt": entry.get("prompt") or (trial.prompt if trial else entry.get("name") or "?"),
        "state": state,
        "state_class": state if state in STATES + STATUSES else "other",
        "detail": status.detail if status and status.state != "done" else "",
        "error": error,
        "clip": clip,
        "seconds": seconds,
        "seed": entry.get("seed"),
        "node": entry.get("node"),
        "report": rel(REPORT_PAGE) if trial else None,
        "poster": rel(trial.poster) if trial and trial.poster else None,
        "sheet": bool(trial and trial.poster and trial.poster == trial.views),
        "video": rel(trial.turntable) if trial and trial.poster and trial.turntable else None,
    }


def write_gallery(folder: str, reports: bool = True, overwrite: bool = False) -> str:
    """Write ``<folder>/index.html`` over the trials of ``folder`` (its ``manifest.jsonl`` when present,
    and the trial folders below it that the manifest does not name) and, with ``reports``, each
    trial's report. Returns the page's path. Trials resolve inside ``folder``; an ``index.html`` we
    did not write is replaced only with ``overwrite``."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise UsageError(
            f"{folder} is not a folder; pass a folder of runs (e.g. outputs/ or a batch's runs/)"
        )
    path = os.path.join(folder, "index.html")
    check_replace(path, overwrite)
    found = find_trials(folder)
    pairs = []
    if has_manifest(folder):
        entries = list(read_manifest(folder).values())
        pairs = [(e, entry_trial(folder, e)) for e in entries]
        named = {t.folder for _, t in pairs if t is not None}
        extra = [Trial(f) for f in found if os.path.abspath(f) not in named]
        pairs += [({}, t) for t in extra]
        source = f"{MANIFEST} ({len(entries)} prompts)" + (
            f" and {len(extra)} trial folder{'s' if len(extra) != 1 else ''} it does not name"
            if extra
            else ""
        )
    else:
        pairs = [({}, Trial(f)) for f in found]
        source = f"{len(pairs)} trial folders found"
    if not pairs:
        raise UsageError(f"{folder} holds no trial folders (configs/parsed.yaml) and no {MANIFEST}")
    cards = []
    counts: Dict[str, int] = {}
    # the page shows every trial's prompt: no more readable than the least readable source of one
    page_mode = shareable(os.path.join(folder, MANIFEST)) if has_manifest(folder) else 0o777
    for entry, trial in pairs:
        if trial is not None and trial.holds(trial.config_file):  # (a card reads nothing out of a trial)
            page_mode &= shareable(trial.config_file)
        if trial is not None and reports:
            write_report(trial.folder, require_viewer=False, trial=trial, overwrite=overwrite)
        c = card(entry, trial, folder)
        counts[c["state"]] = counts.get(c["state"], 0) + 1
        cards.append(c)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    write_text(
        path,
        render("gallery.html", title="Portraits", folder=folder, source=source, summary=summary, cards=cards),
        mode_mask=page_mode,
    )
    return path


# ------------------------------------------------------------------------------------------- CLI
def _report(args) -> int:
    for folder in args.trials:
        print(write_report(folder, overwrite=args.overwrite))
    return 0


def _gallery(args) -> int:
    print(write_gallery(args.folder, reports=not args.no_reports, overwrite=args.overwrite))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write <trial>/save/index.html: one page showing a run",
        description="Write <trial>/save/index.html: the run's status, the prompt and settings, the "
        "initialisation, SDS images, refinement views, videos, an interactive "
        "3D view of the exported mesh, metrics and links to every file. "
        "Self-contained; opens from file:// with no network.",
    )
    p.add_argument(
        "trials", nargs="+", metavar="TRIAL", help="threestudio trial folder(s) (outputs/<name>/<trial>)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a save/index.html portrait3d did not write"
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
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an index.html portrait3d did not write (gallery, reports)",
    )
    g.set_defaults(func=_gallery)
