"""The trial's ``status.json`` (:func:`portrait3d.trial.write_status`): running while a stage runs,
done (or stopped, when the training has not reached ``trainer.max_steps``) when it ends. A failure
is recorded by :mod:`portrait3d.launch_errors` as ``launch.py`` exits; a kill leaves "running" with
a dead process, which reads as stopped. A status that cannot be written is a warning, never a
failed run."""

import os

import threestudio
from lightning_utilities.core.rank_zero import rank_zero_only


@rank_zero_only
def record_status(save_dir: str, state: str, stage: str, step: int) -> None:
    """Record ``state`` of the trial whose ``save/`` folder is ``save_dir``."""
    trial = os.path.dirname(os.path.abspath(save_dir))
    try:
        from portrait3d.trial import write_status

        write_status(trial, state, stage=stage, step=int(step))
    except Exception as e:  # noqa: BLE001 — the status is a record of the run, not part of it
        threestudio.warn(f"The trial's status was not recorded ({type(e).__name__}: {e})")
