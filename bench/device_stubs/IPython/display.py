"""Import-only stand-in: threestudio's guidance package imports ``extern/ldm_zero123/guidance.py``,
which imports ``clear_output`` at module level; Portrait3D never calls it."""


def clear_output(*args, **kwargs):
    raise RuntimeError("IPython is not installed on the device (import-only stand-in)")
