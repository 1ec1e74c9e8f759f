"""``portrait3d evaluate RUNS``: the paper's quantitative evaluation (§5.2, Table 1) over a batch.

- CLIP score (:func:`gan_prior.evaluation.clip_score`) of each portrait's rendered views (the frames of
  its 360° large-pose video) against its prompt, then the mean over the portraits;
- FID and KID between the pooled rendered views of all portraits and the pooled images of the
  diffusion model (each trial's initialisation candidates, ``save/init/<key>/candidates``).

Written to ``RUNS/metrics.json``, ``RUNS/metrics.md`` and ``RUNS/metrics.csv``, with the CLIP model,
the Inception weights and the sample counts. The paper gives neither its CLIP variant nor its view
set (its supplementary has the details); numbers compare between runs of this code.

This module holds a batch's metrics; :mod:`gan_prior.evaluation` computes them (and those of one
portrait: ``python -m gan_prior evaluate``).
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Optional

from gan_prior.files import atomic_path, check_out, write_json, write_text

from .errors import UsageError
from .manifest import MANIFEST, entry_trial, read_manifest
from .trial import config_value

OUTPUTS = ("metrics.json", "metrics.md", "metrics.csv")  # what evaluate_runs writes into RUNS
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def check_options(
    clip: Optional[str],
    inception: Optional[str],
    out: Optional[str] = None,
    overwrite: bool = False,
    out_option: str = "RUNS",
) -> None:
    """Fail before any work on a CLIP folder or Inception file that is not there and, given ``out``,
    on metrics files already there without ``overwrite`` (one line each)."""
    from gan_prior.evaluation import check_weights

    try:
        check_weights(clip, inception)
        if out is not None:
            check_out(out, OUTPUTS, overwrite, option=out_option)
    except ValueError as e:
        raise UsageError(str(e)) from None


def csv_cell(value) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text: one starting with ``= + - @`` (or a tab or
    carriage return) would be run as a formula (``=HYPERLINK(…)``), so it gets a leading ``'``."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def md_cell(value) -> str:
    """``value`` as one cell of a Markdown table: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(value).split()).replace("\\", "\\\\").replace("|", "\\|")


def evaluate_runs(
    out: str, clip: Optional[str] = None, inception: Optional[str] = None, overwrite: bool = False
) -> dict:
    """The metrics of the finished portraits in ``out`` (its manifest); writes metrics.json/.md/.csv,
    replacing them only with ``overwrite``."""
    import numpy as np

    from gan_prior import evaluation as E

    out = os.path.abspath(out)
    if not os.path.isfile(os.path.join(out, MANIFEST)):
        raise UsageError(
            f"{out}: no {MANIFEST}; make the portraits with `portrait3d batch PROMPTS --out {out}` first"
        )
    check_options(clip, inception, out, overwrite)
    done = [
        {**e, "name": str(e.get("name") or e["trial"]), "prompt": str(e.get("prompt") or "")}
        for e in read_manifest(out).values()
        if e.get("status") == "done" and e.get("trial") and isinstance(e.get("trial"), str)
    ]
    if not done:
        raise UsageError(f"{os.path.join(out, MANIFEST)}: no finished portraits to evaluate")
    rows, skipped, pooled_views, pooled_ref = [], [], [], []
    for entry in done:
        trial = entry_trial(out, entry)
        video = trial.latest(r"it(\d+)-large_pose\.mp4") if trial else None
        if video is None:
            reason = "no large-pose video (system.videos.large_frames=0)" if trial else "no trial folder"
            skipped.append({"name": entry["name"], "reason": reason})
            continue
        cfg = config_value(trial.config, "system.evaluation")
        cfg = cfg if isinstance(cfg, dict) else {}
        clip = clip or cfg.get("clip_model")
        inception = inception or cfg.get("inception")
        views = E.load_images(os.path.join(trial.save, video), f"{entry['name']}: large-pose video")
        ref_dir = trial.fid_reference()
        refs = E.load_images(ref_dir, f"{entry['name']}: diffusion images") if ref_dir else []
        pooled_views += views
        pooled_ref += refs
        rows.append(
            {
                "name": entry["name"],
                "prompt": entry["prompt"],
                "num_views": len(views),
                "num_reference": len(refs),
                "_views": views,
            }
        )
    if not rows:
        raise UsageError(f"{out}: none of the finished portraits has a large-pose video to evaluate")
    if clip is None:
        raise UsageError(
            "no CLIP model: give --clip (a CLIP folder or hub id, e.g. openai/clip-vit-large-patch14) "
            "or set system.evaluation.clip_model in the config"
        )
    for row in rows:
        row["clip_score"] = E.clip_score(row.pop("_views"), row["prompt"], clip)["clip_score"]
    scores = [r["clip_score"] for r in rows]
    result = {
        "protocol": "Portrait3D §5.2: CLIP score of each portrait's large-pose views against its prompt "
        "(mean over portraits); FID/KID between the pooled rendered views and the pooled "
        "diffusion-model images (the initialisation candidates)",
        "clip_model": clip,
        "inception_weights": inception,
        "num_portraits": len(rows),
        "num_views": len(pooled_views),
        "num_reference": len(pooled_ref),
        "clip_score": float(np.mean(scores)),
        "clip_score_std": float(np.std(scores)),
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "portraits": rows,
        "skipped": skipped,
    }
    if inception and len(pooled_ref) >= 2 and len(pooled_views) >= 2:
        extract = E.InceptionFeatures(inception)
        fa, fb = extract(pooled_views), extract(pooled_ref)
        result["fid"] = E.frechet_distance(fa, fb)
        result["kid_mean"], result["kid_std"] = E.kernel_inception_distance(fa, fb)
    elif inception:
        skipped.append(
            {
                "name": "FID/KID",
                "reason": f"{len(pooled_ref)} diffusion images found; need 2 or more",
            }
        )
    write_json(os.path.join(out, "metrics.json"), result)
    _write_tables(out, result)
    return result


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _write_tables(out: str, r: dict) -> None:
    with atomic_path(os.path.join(out, "metrics.csv"), ".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", "prompt", "clip_score", "num_views", "num_reference"])
            for p in r["portraits"]:
                w.writerow(
                    [
                        csv_cell(p["name"]),
                        csv_cell(p["prompt"]),
                        f"{p['clip_score']:.4f}",
                        p["num_views"],
                        p["num_reference"],
                    ]
                )
            w.writerow(["mean", "", f"{r['clip_score']:.4f}", r["num_views"], r["num_reference"]])
    lines = [
        "# Portrait3D evaluation (paper §5.2)",
        "",
        f"- CLIP model: `{r['clip_model']}`; FID Inception weights: `{r['inception_weights'] or 'none (FID/KID not computed)'}`",
        f"- {r['num_portraits']} portraits, {r['num_views']} rendered views (large-pose video frames), "
        f"{r['num_reference']} diffusion images (initialisation candidates)",
        "",
        "| portraits | CLIP score ↑ | FID ↓ | KID ↓ |",
        "|---|---|---|---|",
        f"| {r['num_portraits']} | {_fmt(r['clip_score'])} ± {_fmt(r['clip_score_std'])} | {_fmt(r['fid'])} | "
        f"{_fmt(r['kid_mean'], 4)} ± {_fmt(r['kid_std'], 4)} |",
        "",
        "| name | prompt | CLIP score | views |",
        "|---|---|---|---|",
        *[
            f"| {md_cell(p['name'])} | {md_cell(p['prompt'])} | {p['clip_score']:.2f} | {p['num_views']} |"
            for p in r["portraits"]
        ],
    ]
    if r["skipped"]:
        lines += [
            "",
            "Not evaluated: " + "; ".join(f"{s['name']} ({s['reason']})" for s in r["skipped"]),
        ]
    write_text(os.path.join(out, "metrics.md"), "\n".join(lines) + "\n")


def print_summary(r: dict) -> None:
    fid = "" if r["fid"] is None else f", FID {r['fid']:.2f}, KID {r['kid_mean']:.4f}"
    print(
        f"CLIP score {r['clip_score']:.2f} over {r['num_portraits']} portraits ({r['num_views']} views; "
        f"CLIP {r['clip_model']}){fid}"
    )
    for s in r["skipped"]:
        print(f"not evaluated: {s['name']} ({s['reason']})", file=sys.stderr)


def cmd_evaluate(args) -> int:
    print_summary(evaluate_runs(args.runs, args.clip, args.inception, args.overwrite))
    print(f"written: {os.path.join(os.path.abspath(args.runs), 'metrics.json')}, metrics.md, metrics.csv")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="the paper's §5.2 metrics over a batch's portraits → metrics.json/.md/.csv",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("runs", help="a `portrait3d batch` output folder (with manifest.jsonl)")
    p.add_argument(
        "--clip",
        default=None,
        help="CLIP model folder or hub id (default: the trials' system.evaluation.clip_model)",
    )
    p.add_argument(
        "--inception",
        default=None,
        help="pt_inception-2015-12-05-6726825d.pth for FID/KID (default: system.evaluation.inception)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace RUNS/metrics.json/.md/.csv")
    p.set_defaults(func=cmd_evaluate)
