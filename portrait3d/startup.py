"""Run at interpreter start by ``portrait3d-startup.pth`` (written by the setup): the import
stand-ins threestudio needs where CUDA-only packages are missing, and one-line ``launch.py`` errors.
Cheap: imports no torch."""

from . import launch_errors, stand_ins

stand_ins.install()
launch_errors.install()
