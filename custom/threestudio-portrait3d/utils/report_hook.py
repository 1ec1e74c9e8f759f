"""The trial's report page (``save/index.html``, :mod:`portrait3d.report`), rewritten at the end of
the test stage and of ``--export``. A page that cannot be written is a warning, never a failed run."""

import os

import threestudio
from lightning_utilities.core.rank_zero import rank_zero_only


@rank_zero_only
def write_run_report(save_dir: str) -> None:
    """Write ``<trial>/save/index.html`` for the trial whose ``save/`` folder is ``save_dir``."""
    trial = os.path.dirname(os.path.abspath(save_dir))
    try:
        from portrait3d.report import write_report

        path = write_report(trial, require_viewer=False, warn=threestudio.warn)
    except Exception as e:  # noqa: BLE001 — the results are saved; the page is a view of them
        threestudio.warn(
            f"The report page was not written ({type(e).__name__}: {e}); "
            f"write it with `portrait3d report {trial}`"
        )
        return
    threestudio.info(f"Report: {path}")
