"""A fresh run never lands silently in a trial folder that already holds a trained run.

threestudio's trial folder is ``<exp_root_dir>/<name>/<tag>[@<timestamp>]``; with
``use_timestamp=false`` the same command names the same folder again, and a fresh ``--train`` would
restart at step 0 and replace the checkpoints (Lightning only warns). :func:`claim_trial` refuses
that with one line naming ``resume=`` and a new tag, unless ``system.overwrite=true`` asks for it:
then the old run's files are removed first (so that no older, higher-step file is taken for the new
run's), except the initialisation in ``save/init``, which is reused when its inputs match. Files
that are not a run's (:data:`RUN_FILES`, ``save/``), e.g. a user's notes, stay.
"""

import glob
import os
import shutil

from portrait3d.errors import TrialInUse
from portrait3d.trial import STAGES, STATUS, checkpoint_step

KEPT = os.path.join("save", "init")  # the cached initialisation (keyed on its inputs)
# what launch.py (its loggers and snapshot callbacks), the system and portrait3d run write at the top
# of a trial: system.overwrite=true removes these, and leaves anything else a user put there
RUN_FILES = (
    "ckpts",
    "configs",
    "code",
    "csv_logs",
    "tb_logs",
    "lightning_logs",
    "wandb",
    "cmd.txt",
    "logs",  # launch.py --gradio: its log file and progress file
    "progress",
    STATUS,
    STAGES,
)


def claim_trial(trial: str, overwrite: bool) -> None:
    """Called for a run that does not resume, before anything is written to ``trial``."""
    ckpts = sorted(glob.glob(os.path.join(trial, "ckpts", "*.ckpt")))
    if not ckpts:
        return  # new, or stopped before its first checkpoint: nothing trained to lose
    if not overwrite:
        last = os.path.join(trial, "ckpts", "last.ckpt")
        last = last if os.path.isfile(last) else ckpts[-1]
        step = checkpoint_step(last)
        raise TrialInUse(
            f"{trial} already holds a trained run ({os.path.relpath(last, trial)}"
            + (f", step {step}" if step is not None else "")
            + f"): continue it with resume={last}, or start another with a new tag=... (or without "
            "use_timestamp=false); system.overwrite=true trains it again from step 0, replacing its results"
        )
    for name in os.listdir(trial):
        path = os.path.join(trial, name)
        if name == "save" and os.path.isdir(path):
            for inner in os.listdir(path):
                if os.path.join("save", inner) != KEPT:
                    _remove(os.path.join(path, inner))
        elif name in RUN_FILES:
            _remove(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
