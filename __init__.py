"""Loaded only when this repository is cloned into a threestudio checkout's ``custom/`` folder
(threestudio's usual way to add an extension: ``cd custom && git clone <this repository>``).

threestudio's ``launch.py`` imports each ``custom/<name>/__init__.py``; this one makes ``gan_prior``
importable from the clone and loads the extension in ``custom/threestudio-portrait3d``. Configs are
then at ``custom/<name>/configs/portrait3d.yaml``. The other way (``install_extension.py``, used by
``make``) links the extension instead; don't do both in one checkout.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_NAME = "threestudio-portrait3d"

# act only as a threestudio custom module (not when a tool such as pytest imports this folder)
_IN_CUSTOM = os.path.basename(os.path.dirname(_HERE)) == "custom" and "threestudio" in sys.modules

if _IN_CUSTOM and _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # gan_prior, portrait3d
if _IN_CUSTOM and _NAME not in sys.modules:
    _folder = os.path.join(_HERE, "custom", _NAME)
    _spec = importlib.util.spec_from_file_location(
        _NAME, os.path.join(_folder, "__init__.py"), submodule_search_locations=[_folder]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
