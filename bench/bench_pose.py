#!/usr/bin/env python
"""Body-pose recovery alone: the inversion's pose path with the portrait and the camera known.

The targets are :mod:`bench_camera`'s (the full-size random-weight generator with the seeded
SMPL-like body, a random camera and a random body pose, ``--psi 0``: the average portrait, raw
neural renders). Here w+ and the camera are the target's own, so the only unknown is the pose p:
from p = 0, Adam (0.9, 0.999) on p alone with the official projector's learning-rate ramp
(:func:`gan_prior.inversion.learning_rate`, peak ``--lr``, official 0.01) and the mean squared
image error. This separates the pose path from the w+ and camera ambiguities of the whole
inversion (``bench_camera.py``).

Also printed per target: how well the autograd gradient at p = 0 agrees with central differences
of step ``eps`` (cosine): the face choice of the deformation carries no gradient (as in the
official code), so the gradient is that of the current face assignment; over larger steps, points
changing faces add jumps that it does not see. And the loss on the straight line from p = 0 to the
truth (is the truth downhill from the start?).

    PYTHONPATH=. python bench/bench_pose.py --targets 3 --steps 80 --nrr 32 --samples 12   # CPU
    PYTHONPATH=. python bench/bench_pose.py --device cuda --targets 20 --steps 500 --nrr 128 --samples 48
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_camera import build_generator, make_target, summary

from gan_prior.files import write_json
from gan_prior.inversion import InversionConfig, learning_rate, w_statistics

EPSILONS = (1e-5, 1e-3, 5e-2)  # radians: the central differences compared with the gradient
LINE = (0.25, 0.5, 0.75)  # fractions of the way from p = 0 to the true pose


def pose_error_deg(p: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean |Δ| per axis-angle component, degrees."""
    return float(torch.rad2deg((p.detach().cpu() - truth.cpu()).abs()).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--steps", type=int, default=80, help="Adam steps on p (the official inversion: 500)")
    ap.add_argument("--lr", type=float, default=0.01, help="peak learning rate (official: 0.01)")
    ap.add_argument("--nrr", type=int, default=32, help="neural rendering resolution (released: 128)")
    ap.add_argument("--samples", type=int, default=12, help="depth samples (+ as many importance)")
    ap.add_argument("--pose-range", type=float, default=15.0, help="targets' pose, ± degrees per component")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="the tiny architecture (a smoke run, no measurement)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.targets < 1 or args.steps < 1:
        ap.error("--targets and --steps must be at least 1")
    args.psi, args.target = 0.0, "raw"  # bench_camera's targets: the average portrait, raw renders

    t0 = time.perf_counter()
    g = build_generator(args).requires_grad_(False)
    w_avg = w_statistics(g)[0]
    ramp = InversionConfig(steps=args.steps, learning_rate=args.lr)
    rows = []
    for k in range(args.targets):
        target = make_target(g, k, args, w_avg)
        ws, c, truth = target["ws"], target["label"], target["pose"].to(args.device)
        with torch.no_grad():
            pyramid = g.synthesize_pyramid(ws)

        def loss(p: torch.Tensor) -> torch.Tensor:
            image = g.render(pyramid, ws, c, resolution=args.nrr, deterministic=True, pose=p)["image"]
            return F.mse_loss(image, target["image"])

        with torch.no_grad():
            if float(loss(truth)) > 1e-8:  # 0 here; allow for a GPU's reduction order
                raise SystemExit(
                    "bench_pose.py: the target is not reproduced from its own w+, camera and pose"
                )
        p = torch.zeros(1, 6, device=args.device, requires_grad=True)
        first = loss(p)
        first.backward()
        grad = p.grad[0].detach().clone()
        agreement = {}
        with torch.no_grad():
            for eps in EPSILONS:
                steps = torch.eye(6, device=args.device)[:, None] * eps
                fd = torch.stack([(loss(e) - loss(-e)) / (2 * eps) for e in steps])
                agreement[f"{eps:g}"] = float(F.cosine_similarity(grad, fd, 0))
            # the loss on the straight line from p = 0 to the truth: is the truth downhill from 0?
            line = {f"{a:g}": float(loss(a * truth)) for a in LINE}
        opt = torch.optim.Adam([p], betas=(0.9, 0.999), lr=args.lr)
        history = []
        for step in range(args.steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step / args.steps, ramp)
            value = loss(p)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            history.append(value.detach())
        with torch.no_grad():
            last = float(loss(p))
        row = {
            "pose_truth_deg": torch.rad2deg(truth[0]).tolist(),
            "pose_found_deg": torch.rad2deg(p.detach()[0]).tolist(),
            "pose_error_start_deg": pose_error_deg(torch.zeros(1, 6), truth),
            "pose_error_deg": pose_error_deg(p, truth),
            "loss_start": float(first.detach()),
            "loss_end": last,
            "loss_lowest": min(torch.stack(history).min().item(), last),
            "gradient_cosine": agreement,
            "loss_on_line": line,
        }
        rows.append(row)
        print(f"target {k}: pose error {row['pose_error_start_deg']:.2f}° → {row['pose_error_deg']:.2f}° | "
              f"loss {row['loss_start']:.4g} → {last:.4g} (lowest {row['loss_lowest']:.4g}; on the line to the "
              f"truth: {', '.join(f'{v:.4g}' for v in line.values())}) | gradient vs "
              + ", ".join(f"Δ {e}: cos {v:.3f}" for e, v in agreement.items()), flush=True)  # fmt: skip

    errors = [r["pose_error_deg"] for r in rows]
    ratio = [r["loss_end"] / r["loss_start"] for r in rows]
    result = {
        "settings": vars(args),
        "seconds": round(time.perf_counter() - t0, 1),
        "pose_error_deg": summary(errors),
        "loss_end_over_start": summary(ratio),
        "targets": rows,
    }
    print(f"\npose error after {args.steps} steps: median {statistics.median(errors):.2f}°, worst {max(errors):.2f}° "
          f"(from {statistics.median(r['pose_error_start_deg'] for r in rows):.2f}°); loss end/start median "
          f"{statistics.median(ratio):.3f} ({args.targets} targets, {result['seconds']} s)")  # fmt: skip
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
