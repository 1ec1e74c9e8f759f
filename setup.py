import os
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# the report pages' 3D viewer: model-viewer's one-file UMD bundle (npm, package.json), which `npm ci`
# puts in node_modules/. A built package (`pip install .`, a wheel) carries a copy in
# portrait3d/viewer/, where `portrait3d report` finds it (portrait3d.report.viewer_bundle).
VIEWER_SOURCE = os.path.join(
    HERE, "node_modules", "@google", "model-viewer", "dist", "model-viewer-umd.min.js"
)
VIEWER_TARGET = os.path.join("portrait3d", "viewer", "model-viewer.min.js")


class BuildWithViewer(build_py):
    """build_py, plus the viewer bundle (without its source-map link) when node_modules/ has it."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads node_modules/ of the checkout itself
        target = os.path.join(self.build_lib, VIEWER_TARGET)
        if not os.path.isfile(VIEWER_SOURCE):
            self.warn(
                f"{VIEWER_SOURCE} is missing (run `npm ci` first): the installed `portrait3d report` "
                "will need PORTRAIT3D_VIEWER_JS for its 3D view"
            )
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(VIEWER_SOURCE, encoding="utf-8") as f:
            code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", f.read())
        with open(target, "w", encoding="utf-8") as f:
            f.write(code)


setup(
    name="portrait3d-threestudio",
    version="0.1.0",
    description="Portrait3D (SIGGRAPH 2024) for threestudio: the 3DPortraitGAN prior in pure PyTorch "
    "and a threestudio extension for text-to-3D portraits",
    packages=find_packages(include=["gan_prior", "gan_prior.*", "portrait3d", "portrait3d.*"]),
    # the report pages' templates, CSS and JS; the import stand-ins (portrait3d.stand_ins)
    package_data={"portrait3d": ["templates/*", "cpu_stubs/*/*.py"]},
    cmdclass={"build_py": BuildWithViewer},
    python_requires=">=3.9",
    # the ranges requirements.txt pins within (OpenCV < 5: 5.x wheels ship no Haar cascades)
    install_requires=[
        "torch>=2.0",
        "numpy>=1.26,<3",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.4.9",
        "scipy>=1.10",
        "numba>=0.60",
        "opencv-python-headless>=4.8,<5",
        "PyYAML>=6.0",
        # the textured mesh export (gan_prior.mesh, .texture, .mesh_fidelity, .mesh_files)
        "trimesh>=4.0",
        "PyMCubes>=0.1.4",
        "fast-simplification>=0.1.7",
        "xatlas>=0.0.9",
        "scikit-image>=0.22",
        "Pillow>=9.0",
        "Jinja2>=3.0",  # the report pages (torch installs it too)
    ],
    # text-to-image, SDEdit, CLIP score, FID (requirements.txt pins the tested versions)
    extras_require={
        "pipeline": ["diffusers", "transformers", "accelerate", "pytorch-fid"],
        "batch": ["ray[default]"],
    },  # portrait3d batch
    entry_points={"console_scripts": ["gan-prior=gan_prior.cli:main", "portrait3d=portrait3d.cli:main"]},
)
