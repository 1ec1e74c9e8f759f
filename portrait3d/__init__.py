"""portrait3d: the project's command line around threestudio and ``gan_prior``.

``portrait3d <command>``: many portraits on Ray (``batch``), the paper's evaluation over a set of
runs (``evaluate``), result pages (``report``, ``gallery``). This package also finds the threestudio
checkout the setup made and supplies the import stand-ins threestudio needs on CPU-only machines.
Importing it is cheap (no torch): it is loaded at interpreter start by the CPU stand-ins' ``.pth``.
"""
