"""The errors the ``portrait3d`` commands print as one ``error:`` line (exit code 2), and the one the
extension raises for a trial folder another run holds. Imports nothing."""


class UsageError(Exception):
    """A bad input the user can fix: printed as one ``error:`` line, exit code 2."""


class LaunchKilled(UsageError):
    """``launch.py`` was killed by a signal (out of memory, a preempted node, a user's kill): running
    it again resumes the trial from its last checkpoint (``portrait3d batch`` retries it)."""


class ViewerMissing(UsageError):
    """The report's 3D viewer bundle is not installed (the message says how to get it)."""


class TrialInUse(ValueError):
    """A fresh ``launch.py`` run refused a trial folder that holds another run's results (one line,
    the extension's ``existing_trial``): that folder's records, e.g. ``status.json``, stay the other
    run's (:mod:`portrait3d.launch_errors` records no failure there)."""
