"""Import-only stand-in for ``controlnet_aux`` on CPU-only test machines.

threestudio's ``controlnet_guidance.py`` imports ``CannyDetector`` and
``NormalBaeDetector`` at module level, so ``import threestudio`` needs the names.
The real PyPI package pulls heavy dependencies we never use; the detectors raise.
"""

from typing import Any, NoReturn

__all__ = ["CannyDetector", "NormalBaeDetector"]


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("controlnet_aux stub: not available in this environment")

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("controlnet_aux stub: not available in this environment")


class CannyDetector(_Unavailable):
    pass


class NormalBaeDetector(_Unavailable):
    pass
