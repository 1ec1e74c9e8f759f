"""portrait3d: the project's command line around threestudio and ``gan_prior``.

``portrait3d <command>``: one portrait (``run``), many on Ray (``batch``), the paper's evaluation
over a set of runs (``evaluate``), result pages (``report``, ``gallery``). This package also finds
the threestudio checkout the setup made and supplies the import stand-ins threestudio needs on
CPU-only machines. Importing it is cheap (no torch): it is loaded at interpreter start by the
setup's ``.pth`` (:mod:`portrait3d.startup`).

Layers: a module imports only modules of its own layer or of the layers above it (no cycle;
tests/test_layering.py reads this list and checks it):

    base          errors, threestudio_env, stand_ins, text_embeddings
    trial         trial
    records       manifest, launch_errors
    commands      run, batch_metrics, report, prompt_file, prompt_configs, batch
    entry points  cli, __main__, startup

``errors``: the one-line errors; ``text_embeddings``: threestudio's text-embedding cache written
atomically (the extension's prompt processor); ``trial``: one trial folder (paths, config, files by step, status,
what its report shows); ``manifest``: a batch's manifest.jsonl; ``run`` (``portrait3d run`` and the
pipeline batch runs), ``batch_metrics`` (``portrait3d evaluate``), ``report`` (``portrait3d report``
and ``gallery``, pages from ``templates/``), ``prompt_file`` (a batch's prompt file, checked whole),
``prompt_configs`` (each prompt's config checked before a batch starts), ``batch``; ``cli`` finds the commands by name.
"""
