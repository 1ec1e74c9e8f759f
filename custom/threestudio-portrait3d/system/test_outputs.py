"""The test-stage outputs of ``portrait3d-system``: the official videos and contact sheet
(``gen_videos_shapes_from_optimized_triplane.py``), the paper §5.2 metrics, and the exporter's files."""

import glob
import os
from dataclasses import dataclass

import numpy as np
import threestudio
import torch
from threestudio.utils.typing import *

from gan_prior.evaluation import evaluate
from gan_prior.files import atomic_path
from gan_prior.media import contact_sheet, render_frames, save_video, turntable_labels
from gan_prior.media import save_image as write_image
from gan_prior.pyramid_files import save_pyramid


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


class TestOutputs:
    """The test-stage and export methods of :class:`~.portrait3d.Portrait3DSystem`
    (``system.videos``, ``system.evaluation``)."""

    def check_evaluation_config(self) -> None:
        c = self.cfg.evaluation
        if c.inception is not None and not os.path.isfile(c.inception):
            raise ValueError(
                f"system.evaluation.inception: {c.inception} not found; give "
                "pt_inception-2015-12-05-6726825d.pth (the FID Inception weights) or null"
            )
        if (
            c.clip_model
            and c.clip_model.startswith(("/", ".", "~"))
            and not os.path.isdir(os.path.expanduser(c.clip_model))
        ):
            raise ValueError(
                f"system.evaluation.clip_model: folder {c.clip_model} not found; give a CLIP folder, "
                "a hub id or null"
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
        if c.inception is not None and reference is None:
            found = sorted(glob.glob(os.path.join(self.get_save_dir(), "init", "*", "candidates")))
            if not found:
                raise ValueError(
                    "system.evaluation.inception is set but there are no diffusion images to compare "
                    "with: set system.evaluation.reference to a folder of them"
                )
            reference = found[-1]
        result = evaluate(
            video,
            self.cfg.prompt_processor.get("prompt", ""),
            self.get_save_path(f"it{self.true_global_step}-eval"),
            clip_model=c.clip_model,
            reference=reference,
            inception_weights=c.inception,
        )
        threestudio.info(
            f"Evaluation: CLIP score {result['clip_score']}, FID {result['fid']}, KID {result['kid_mean']}"
        )

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

    def save_trimesh(self, filename: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> str:
        """A vertex-coloured mesh; the format (.obj, .glb, .ply) comes from the file name."""
        import trimesh

        path = self.get_save_path(filename)
        mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
        suffix = os.path.splitext(path)[1]
        with atomic_path(path, suffix) as tmp:
            mesh.export(tmp, file_type=suffix[1:])
        return path

    def save_pyramid(
        self, filename: str, levels: Dict[int, Tensor], ws: Tensor, fmt: str, metadata: dict
    ) -> str:
        path = self.get_save_path(filename)
        save_pyramid(path, levels, ws, fmt=fmt, metadata=metadata if fmt == "ours" else None)
        return path
