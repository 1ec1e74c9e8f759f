"""threestudio's text-embedding cache, written so that concurrent runs never read a partial file.

threestudio's prompt processors compute the embeddings into ``.threestudio_cache/text_embeddings/``
of the threestudio folder (``spawn_func``, with ``torch.save`` straight to the final name) and then
load them from there. Runs that share the folder — the workers of ``portrait3d batch``, or two
``launch.py`` started by hand — write and read the same files (the negative prompt's, a repeated
prompt's): one read a half-written file and stopped with ``EOFError``. Here the embeddings are
computed into a private staging folder beside the cache and each file is moved into place with
``os.replace`` (atomic on one file system): a reader sees a whole file, old or new, or none.

Module-level (not a method of the extension's class) so that threestudio's ``spawn=True`` can pass it
to a fresh interpreter by name.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def save_text_embeddings(pretrained_model_name_or_path: str, prompts: list, cache_dir: str) -> None:
    """threestudio's ``StableDiffusionPromptProcessor.spawn_func`` (same arguments, same files:
    ``<hash_prompt(model, prompt)>.pt`` in ``cache_dir``), each file moved into place whole."""
    from threestudio.models.prompt_processors.stable_diffusion_prompt_processor import (
        StableDiffusionPromptProcessor,
    )

    staging = tempfile.mkdtemp(prefix=".staging-", dir=cache_dir)
    try:
        StableDiffusionPromptProcessor.spawn_func(pretrained_model_name_or_path, prompts, staging)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(cache_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
