from setuptools import find_packages, setup

setup(
    name="portrait3d-threestudio",
    version="0.1.0",
    description="Portrait3D (SIGGRAPH 2024) for threestudio: the 3DPortraitGAN prior in pure PyTorch "
    "and a threestudio extension for text-to-3D portraits",
    packages=find_packages(include=["gan_prior", "gan_prior.*", "portrait3d", "portrait3d.*"]),
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
    ],
    # text-to-image, SDEdit, CLIP score, FID (requirements.txt pins the tested versions)
    extras_require={
        "pipeline": ["diffusers", "transformers", "accelerate", "pytorch-fid"],
        "batch": ["ray[default]"],
    },  # portrait3d batch
    entry_points={"console_scripts": ["gan-prior=gan_prior.cli:main", "portrait3d=portrait3d.cli:main"]},
)
