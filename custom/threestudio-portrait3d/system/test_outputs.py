"""The test-stage outputs of ``portrait3d-system``: the official videos and contact sheet
(``gen_videos_shapes_from_optimized_triplane.py``), the paper §5.2 metrics, and the exporter's files."""

import os
from dataclasses import dataclass

import threestudio
import torch
from threestudio.utils.typing import *

from gan_prior.evaluation import check_weights, evaluate
from gan_prior.files import read_json, write_json
from gan_prior.media import contact_sheet, render_frames, save_video, turntable_labels
from gan_prior.media import save_image as write_image
from gan_prior.mesh_export import ExportedMesh
from gan_prior.mesh_files import write_mesh
from gan_prior.pyramid_files import save_pyramid
from portrait3d.trial import MESH_REPORT, Trial


@dataclass
class EvaluationConfig:
    """Paper §5.2 after the test stage (gan_prior.evaluation), on the large-pose video's frames."""

    clip_model: Optional[str] = None  # CLIP folder or hub id -> CLIP score against the prompt
    inception: Optional[str] = None  # pt_inception-2015-12-05-6726825d.pth -> FID/KID against `reference`
    reference: Optional[str] = None  # images of the diffusion model; default: the initialisation's candidates


@dataclass
class VideoConfig:
    """The official export videos (``gen_videos_shapes_from_optimized_triplane.py``), written by the test stage next to threestudio's."""

    large_frames: int = 240  # 360° at the horizon; 0 = skip
    small_frames: int = 120  # the small-pose wobble; 0 = skip
    resolution: int = 512
    samples: Tuple[int, int] = (96, 96)
    background: bool = True  # the GAN background, as the official videos
    sheet_views: int = 8  # frames of the large turntable in views.png
    fps: int = 30
    chunk: int = 16384


def evaluation_line(result: Dict[str, Any]) -> str:
    """The metrics of a run in a few words ("–" and why, for one not computed)."""

    def num(key: str, digits: int) -> str:
        value = result.get(key)
        return "–" if value is None else f"{value:.{digits}f}"

    fid = (
        f"FID {num('fid', 2)}, KID {num('kid_mean', 4)}"
        if result.get("fid") is not None
        else "FID/KID – (no system.evaluation.inception)"
    )
    clip = (
        f"CLIP score {num('clip_score', 2)}"
        if result.get("clip_score") is not None
        else "CLIP score – (no system.evaluation.clip_model)"
    )
    return f"{clip}, {fid}"


class TestOutputs:
    """The test-stage and export methods of :class:`~.portrait3d.Portrait3DSystem`
    (``system.videos``, ``system.evaluation``)."""

    def check_evaluation_config(self) -> None:
        c = self.cfg.evaluation
        check_weights(
            c.clip_model, c.inception, "system.evaluation.clip_model", "system.evaluation.inception"
        )

    def save_metrics(self) -> None:
        """``it{N}-eval/metrics.json`` + contact sheet, when ``system.evaluation`` asks for metrics."""
        c = self.cfg.evaluation
        video = self.get_save_path(f"it{self.true_global_step}-large_pose.mp4")
        if c.clip_model is None and c.inception is None:
            return
        if not os.path.isfile(video):
            threestudio.warn(
                "system.evaluation needs the large-pose video (system.videos.large_frames > 0); skipped"
            )
            return
        reference = c.reference
        if c.inception is not None:  # portrait3d evaluate's rule: the reference, else the candidates
            reference = Trial(os.path.dirname(self.get_save_dir())).fid_reference(c.reference)
        if c.inception is not None and reference is None:
            raise ValueError(
                "system.evaluation.inception is set but there are no diffusion images to compare "
                "with: set system.evaluation.reference to a folder of them"
            )
        result = evaluate(
            video,
            self.cfg.prompt_processor.get("prompt", ""),
            self.get_save_path(f"it{self.true_global_step}-eval"),
            clip_model=c.clip_model,
            reference=reference,
            inception_weights=c.inception,
            device=self.device,  # the run's GPU (CLIP and Inception: ≈ 19 TFLOP per portrait)
        )
        threestudio.info("Evaluation: " + evaluation_line(result))

    @torch.no_grad()
    def save_official_videos(self) -> None:
        """``large_pose.mp4`` (360°), ``small_pose.mp4`` (wobble) and ``views.png``, as the official export."""
        c = self.cfg.videos
        prefix = f"it{self.true_global_step}"

        def frames(kind: str, n: int):
            return render_frames(
                self.renderer.render_labels,
                turntable_labels(n, kind).to(self.device),
                c.resolution,
                c.chunk,
                f"{kind} pose",
                background=c.background,
                depth_resolution=c.samples[0],
                depth_resolution_importance=c.samples[1],
            )

        if c.large_frames > 0:
            large = list(frames("large", c.large_frames))
            save_video(self.get_save_path(f"{prefix}-large_pose.mp4"), large, fps=c.fps)
            step = max(1, len(large) // max(1, c.sheet_views))
            write_image(
                self.get_save_path(f"{prefix}-views.png"),
                contact_sheet(large[::step][: c.sheet_views], min(c.sheet_views, len(large))),
            )
        if c.small_frames > 0:
            save_video(
                self.get_save_path(f"{prefix}-small_pose.mp4"), frames("small", c.small_frames), fps=c.fps
            )

    def export_source(self) -> dict:
        """What an export is made from: the checkpoint (``resume=``) and the step."""
        ckpt = getattr(self.trainer, "ckpt_path", None) if self._trainer is not None else None
        return {"checkpoint": os.path.realpath(ckpt) if ckpt else None, "step": self.true_global_step}

    def check_export_folder(self) -> None:
        """Before exporting: never overwrite the export of another run (another checkpoint) that
        sits in this trial's ``save/it{N}-export/``."""
        folder = os.path.join(self.get_save_dir(), f"it{self.true_global_step}-export")
        previous = (read_json(os.path.join(folder, MESH_REPORT)) or {}).get("source") or {}
        ours = self.export_source()
        if previous.get("checkpoint") and ours["checkpoint"] and previous["checkpoint"] != ours["checkpoint"]:
            raise ValueError(
                f"{folder} holds the export of another run ({previous['checkpoint']}); not overwriting it: "
                "export with that checkpoint's own trial config, or move the folder away"
            )

    def save_portrait_mesh(self, filename: str, mesh: ExportedMesh, formats: List[str]) -> List[str]:
        """The mesh files (:mod:`gan_prior.mesh_files`) and ``mesh_fidelity.json`` beside them."""
        path = self.get_save_path(filename)
        folder, name = os.path.dirname(path), os.path.basename(path)
        replaced = [n for n in os.listdir(folder) if n.startswith(name) or n == MESH_REPORT]
        if replaced:
            threestudio.info(f"Re-export: replacing {', '.join(sorted(replaced))} in {folder}")
        written = write_mesh(folder, name, mesh, formats)
        write_json(os.path.join(folder, MESH_REPORT), {**mesh.report, "source": self.export_source()})
        return written + [os.path.join(folder, MESH_REPORT)]

    def save_pyramid(
        self, filename: str, levels: Dict[int, Tensor], ws: Tensor, fmt: str, metadata: dict
    ) -> str:
        path = self.get_save_path(filename)
        save_pyramid(path, levels, ws, fmt=fmt, metadata=metadata if fmt == "ours" else None)
        return path
