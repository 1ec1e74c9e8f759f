"""threestudio-portrait3d: Portrait3D (SIGGRAPH 2024) as a threestudio extension.

Loaded by threestudio's ``launch.py`` from ``custom/threestudio-portrait3d`` (module name
``threestudio-portrait3d``). Registers: ``portrait3d-system``, ``pyramid-trigrid``,
``gan-prior-initializer``, ``portrait3d-gan-material``, ``portrait3d-gan-background``,
``portrait3d-renderer``, ``portrait3d-camera-datamodule``, ``portrait3d-exporter``,
``portrait3d-prompt-processor`` and ``portrait3d-sd-guidance``; and the config resolver
``${p3d_tiny:NAME}`` (a tiny random model built on first use, for smoke runs) and ``${p3d_tag:PROMPT}``
(a trial folder's name from a prompt).
"""

import threestudio
from packaging.version import Version

if not hasattr(threestudio, "__version__") or Version(threestudio.__version__) < Version("0.2.0"):
    raise ValueError("threestudio-portrait3d needs threestudio >= 0.2.0; please update threestudio")

from portrait3d import launch_errors  # noqa: E402

launch_errors.install()  # one-line errors in launch.py (also armed at start-up by the setup's .pth)

from . import prior  # noqa: E402,F401  (registers the ${p3d_tiny:...} resolver)
from .background import gan_background  # noqa: E402,F401
from .data import portrait3d_camera  # noqa: E402,F401
from .exporter import portrait3d_exporter  # noqa: E402,F401
from .geometry import pyramid_trigrid  # noqa: E402,F401
from .guidance import portrait3d_guidance  # noqa: E402,F401
from .initializer import gan_prior_initializer  # noqa: E402,F401
from .material import gan_material  # noqa: E402,F401
from .prompt_processor import portrait3d_prompt_processor  # noqa: E402,F401
from .renderer import portrait3d_renderer  # noqa: E402,F401
from .system import portrait3d  # noqa: E402,F401
from .utils import trial_tag  # noqa: E402,F401  (registers the ${p3d_tag:...} resolver)
from .utils.cpu_device import use_cpu_without_cuda  # noqa: E402
from .utils.diffusers_compat import apply_vsd_lora_compat  # noqa: E402

apply_vsd_lora_compat()
use_cpu_without_cuda()  # last: it rebinds get_device in every threestudio* module loaded so far
