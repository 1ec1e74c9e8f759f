"""``${p3d_tag:PROMPT}``: a trial folder's name made from a prompt, one safe path component.

threestudio's configs name a trial ``${rmspace:${system.prompt_processor.prompt},_}``, and
``ExperimentConfig`` joins that to ``exp_root_dir`` and makes the folder before anything else runs.
So a "/" in a prompt ("an AC/DC fan") made nested folders, which ``portrait3d run`` then did not
find after the training; a prompt starting with "/" or "../" put the trial outside
``exp_root_dir``. Our configs use this resolver instead: whitespace becomes "_" (as ``rmspace``
did, so ordinary prompts keep their folder names), path separators "-", control and format
characters are dropped, leading dots too (no "..", no hidden folder), and the name is cut to
:data:`MAX_CHARS` characters and :data:`MAX_BYTES` UTF-8 bytes (file systems allow 255 bytes, and
the timestamp follows).
"""

import unicodedata

from omegaconf import OmegaConf

from portrait3d.launch_errors import EMPTY_PROMPT

MAX_CHARS = 120
MAX_BYTES = 200
SEPARATORS = "/\\"


def trial_tag(prompt) -> str:
    """The folder name for ``prompt``; a missing (None) or blank prompt is a one-line ValueError, as
    threestudio's ``rmspace`` failed on None (launch_errors shows the line)."""
    if prompt is None or not str(prompt).strip():
        raise ValueError(EMPTY_PROMPT)
    out = []
    for ch in unicodedata.normalize("NFC", str(prompt)):
        if ch.isspace():
            out.append("_")
        elif ch in SEPARATORS:
            out.append("-")
        elif not unicodedata.category(ch).startswith("C"):  # Cc, Cf, Cs, Co, Cn: not in a name
            out.append(ch)
    tag = "".join(out).lstrip(".")[:MAX_CHARS]
    while len(tag.encode("utf-8")) > MAX_BYTES:
        tag = tag[:-1]
    return tag


if not OmegaConf.has_resolver("p3d_tag"):
    OmegaConf.register_new_resolver("p3d_tag", trial_tag)
