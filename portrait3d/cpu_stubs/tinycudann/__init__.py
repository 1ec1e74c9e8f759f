"""Import-only stand-in for tiny-cuda-nn (``tinycudann``) on CPU-only machines.

tiny-cuda-nn is a git-only CUDA extension. threestudio imports it from
``threestudio/utils/misc.py`` (which almost every module imports) and calls
``free_temporary_memory()`` from ``cleanup()``; the ``Encoding``/``Network``
classes are only used by the HashGrid / FullyFusedMLP options, which cannot
run on CPU anyway.  So: a no-op ``free_temporary_memory`` and constructors that
raise a clear error.  Use ``ProgressiveBandFrequency`` + ``VanillaMLP`` on CPU.
"""

from typing import Any, NoReturn

__all__ = ["free_temporary_memory", "Encoding", "Network", "NetworkWithInputEncoding"]


def free_temporary_memory() -> None:
    """No-op: there is no tcnn GPU memory pool on CPU."""


def _unavailable(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError(
        "tinycudann stub: tiny-cuda-nn is not available on CPU "
        "(use ProgressiveBandFrequency / VanillaMLP instead of HashGrid / FullyFusedMLP)"
    )


Encoding = Network = NetworkWithInputEncoding = _unavailable
