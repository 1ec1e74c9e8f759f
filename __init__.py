"""Loaded only when this repository is cloned into a threestudio checkout's ``custom/`` folder
(threestudio's usual way to add an extension: ``cd custom && git clone <this repository>``).

threestudio's ``launch.py`` imports each ``custom/<name>/__init__.py``; this one makes ``gan_prior``
importable from the clone and loads the extension in ``custom/threestudio-portrait3d``. Configs are
then at ``custom/<name>/configs/portrait3d.yaml``. The other way (``install_extension.py``, used by
``make``) links the extension instead; don't do both in one checkout.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

# act only as a threestudio custom module (not when a tool such as pytest imports this folder)
_IN_CUSTOM = os.path.basename(os.path.dirname(_HERE)) == "custom" and "threestudio" in sys.modules

if _IN_CUSTOM:
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)  # gan_prior, portrait3d
    from portrait3d.threestudio_env import load_extension

    load_extension(_HERE)
