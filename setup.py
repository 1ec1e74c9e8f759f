from setuptools import find_packages, setup

setup(
    name="portrait3d-threestudio",
    version="0.1.0",
    description="Portrait3D (SIGGRAPH 2024) for threestudio: the 3DPortraitGAN prior in pure PyTorch "
                "and a threestudio extension for text-to-3D portraits",
    packages=find_packages(include=["gan_prior", "gan_prior.*", "portrait3d", "portrait3d.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.0", "numpy", "safetensors", "tqdm", "imageio", "imageio-ffmpeg", "scipy",
                      "opencv-python-headless"],
    # text-to-image, SDEdit, CLIP score, FID (requirements.txt pins the tested versions)
    extras_require={"pipeline": ["diffusers", "transformers", "accelerate", "pytorch-fid"],
                    "batch": ["ray[default]"]},  # portrait3d batch
    entry_points={"console_scripts": ["gan-prior=gan_prior.cli:main", "portrait3d=portrait3d.cli:main"]},
)
