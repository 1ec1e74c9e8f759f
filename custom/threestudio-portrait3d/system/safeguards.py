"""What keeps a run from going silently wrong: configuration checked in ``configure`` (before the
initialisation's text-to-image and inversion run), and a guard that keeps a non-finite loss or
gradient from ever reaching the pyramid, its EMA or a checkpoint.

The guard skips such a step (no optimizer update; the EMA only averages finite pyramids), warns
with the step and the running count, and stops the run with one clear error after
``max_nonfinite_steps`` skipped steps in a row.
"""

import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

from gan_prior.pyramid_trigrid import level_key

LOG = logging.getLogger("pytorch_lightning")  # threestudio's logger


class NonFiniteStepError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def check_level_sizes(level_sizes: Sequence, prior_levels: Sequence[int], source: str) -> None:
    """``system.geometry.level_sizes``: distinct powers of two the prior has; all of them when the
    initializer makes the pyramid from the prior (``source`` prompt, image or seed)."""
    sizes = list(level_sizes)
    if not sizes or not all(isinstance(r, int) and not isinstance(r, bool) for r in sizes):
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: give a list of tri-grid sizes, e.g. {list(prior_levels)}"
        )
    duplicates = sorted({r for r in sizes if sizes.count(r) > 1})
    if duplicates:
        raise ValueError(f"system.geometry.level_sizes={sizes} lists {duplicates} twice; each level once")
    unknown = sorted(set(sizes) - set(prior_levels))
    if unknown:
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: the prior has no level {unknown}; its levels are "
            f"{list(prior_levels)}"
        )
    if source != "pyramid" and sorted(sizes) != sorted(prior_levels):
        raise ValueError(
            f"system.geometry.level_sizes={sizes}: the initializer (source {source!r}) makes the prior's "
            f"levels {list(prior_levels)}; list all of them (a subset needs source=pyramid)"
        )


def check_optimizer_levels(params: Optional[Mapping], level_sizes: Iterable[int]) -> None:
    """Every level in ``system.optimizer.params`` exists, and every level is optimised."""
    keys = [str(k) for k in (params or {})]
    if not keys or "geometry" in keys:
        return  # threestudio optimises the whole system, or the whole geometry
    levels = {level_key(r) for r in level_sizes}
    named = {k.split(".", 1)[1] for k in keys if k.startswith("geometry.")}
    extra = sorted(named - levels)
    if extra:
        raise ValueError(
            f"system.optimizer.params lists {['geometry.' + k for k in extra]}, which "
            f"system.geometry.level_sizes={sorted(level_sizes)} does not have; remove them or add the levels"
        )
    missing = sorted(levels - named, key=lambda k: int(k.rsplit("_", 1)[1]))
    if missing:
        raise ValueError(
            f"system.optimizer.params has no entry for {['geometry.' + k for k in missing]}: those levels "
            "would never be optimised; add e.g. geometry." + missing[0] + ": {lr: 1.0}"
        )


def check_positive(values: Mapping[str, Any]) -> None:
    """``{"system.option": value}``: each an integer ≥ 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


class NonFiniteGuard:
    """Mixed into the system: ``guard_loss`` in ``training_step``, ``optimizer_step`` checks gradients."""

    max_nonfinite_steps: int = 10

    def guard_loss(self, result: Optional[dict]) -> Optional[dict]:
        """``result`` (``{"loss": …}``), or None — Lightning then skips backward and the update —
        when the loss is not finite."""
        loss = None if result is None else result.get("loss")
        if loss is not None and torch.is_tensor(loss) and not bool(torch.isfinite(loss.detach()).all()):
            self.skip_step(f"non-finite loss ({float(loss.detach().reshape(-1)[0])})")
            return None
        return result

    def gradients_finite(self, optimizer) -> bool:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    return False
        return True

    def skip_step(self, why: str) -> None:
        self.nonfinite_in_a_row = getattr(self, "nonfinite_in_a_row", 0) + 1
        self.nonfinite_total = getattr(self, "nonfinite_total", 0) + 1
        step = getattr(self, "true_global_step", "?")
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteStepError(
                f"step {step}: {self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                f"({why}); stopping. The pyramid and checkpoints hold only finite values: resume from "
                "ckpts/last.ckpt with a lower learning rate or guidance scale"
            )
        # the logger threestudio.warn writes to, not the warnings module: warning filters must not hide it
        LOG.warning(f"step {step}: {why}; step skipped ({self.nonfinite_total} skipped so far)")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, run only when the loss and every gradient are finite."""
        result = optimizer_closure() if optimizer_closure is not None else None
        skipped = optimizer_closure is not None and result is None  # guard_loss returned None
        if not skipped and not self.gradients_finite(optimizer):
            self.skip_step("non-finite gradient")
            skipped = True
        if skipped:
            optimizer.zero_grad(set_to_none=True)
            return
        self.nonfinite_in_a_row = 0
        optimizer.step()
