"""Shared test setup: the repo root and tests/parity on sys.path, a CPU-only threestudio finder."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests", "parity")):
    if p not in sys.path:
        sys.path.insert(0, p)

THREESTUDIO_ROOT = os.environ.get("THREESTUDIO_ROOT", os.path.expanduser("~/threestudio"))


def threestudio_available() -> bool:
    return os.path.isfile(os.path.join(THREESTUDIO_ROOT, "launch.py"))


requires_threestudio = pytest.mark.skipif(
    not threestudio_available(),
    reason=f"threestudio not found at THREESTUDIO_ROOT={THREESTUDIO_ROOT} (set THREESTUDIO_ROOT to a checkout)")
