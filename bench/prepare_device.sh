#!/usr/bin/env bash
# Prepare, on a machine with network access, what bench/gpu_check.sh needs on a GPU machine that
# has none: the Python packages the device image lacks (as cp312 manylinux wheels, in .whl/), and
# the source of threestudio and of the official renderer (in .device/). Both folders are ignored by
# git and travel with the `carry` argument of the device call (bench/README.md, "GPU check").
#
#   bash bench/prepare_device.sh --official-root PATH [--threestudio PATH]
#
#   --official-root  a checkout of oneThousand1000/Portrait3D's 3DPortraitGAN_pyramid folder
#                    (e.g. fetched, then `git archive HEAD 3DPortraitGAN_pyramid | tar -x`);
#                    default $PORTRAIT3D_OFFICIAL_ROOT
#   --threestudio    a threestudio checkout (default $THREESTUDIO_ROOT, else the vendored archive
#                    ../shared/vendor/threestudio-28d9d80.tar.gz beside this checkout)
#
# The device image (Python 3.12, torch 2.11, CUDA 13; see the device tool's KINDS.md) has torch,
# torchvision, numpy, scipy, safetensors, accelerate, lightning, pytorch-lightning, jaxtyping,
# einops, imageio, opencv, matplotlib, tensorboard, torchmetrics, networkx, tqdm and scikit-image
# (with lazy-loader; the mesh fidelity's SSIM/PSNR, an API stable since 0.19: not carried). It has
# transformers 5 / huggingface_hub 1 / tokenizers 0.23, which diffusers 0.32 does not support, so
# the pinned versions of requirements.txt travel. The whole working tree plus the carried folders
# must stay under 64 MiB: the script fails if they do not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OFFICIAL="${PORTRAIT3D_OFFICIAL_ROOT:-}"
TS="${THREESTUDIO_ROOT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --official-root) OFFICIAL="$2"; shift 2 ;;
    --threestudio) TS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "prepare_device.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$OFFICIAL" || ! -f "$OFFICIAL/training/neural_renderer.py" ]]; then
  echo "prepare_device.sh: --official-root '$OFFICIAL' is not a 3DPortraitGAN_pyramid folder" \
       "(fetch oneThousand1000/Portrait3D and pass its 3DPortraitGAN_pyramid folder)" >&2
  exit 2
fi
COMMIT=$(sed -n 's/^THREESTUDIO_COMMIT := //p' "$ROOT/Makefile")  # the pin's one home
VENDORED="$ROOT/../shared/vendor/threestudio-$COMMIT.tar.gz"
[[ -f "$VENDORED" ]] || VENDORED="/work/shared/vendor/threestudio-$COMMIT.tar.gz"
if [[ -n "$TS" && ! -f "$TS/launch.py" ]]; then
  echo "prepare_device.sh: --threestudio '$TS' has no launch.py" >&2; exit 2
fi
if [[ -z "$TS" && ! -f "$VENDORED" ]]; then
  echo "prepare_device.sh: no threestudio: set THREESTUDIO_ROOT or pass --threestudio PATH" >&2; exit 2
fi
cd "$ROOT"
PY="${PYTHON:-python3}"

# ------------------------------------------------------------------------------- wheels (.whl/)
# name==version; every one the device image lacks, or has in a version our pins do not work with.
# imageio-ffmpeg: 0.4.9 (27 MB, its own ffmpeg 4.2 for the videos) instead of the pinned 0.8.1,
# whose wheel (68 MB) alone is over the 64 MiB a call carries.
WHEELS=(
  diffusers==0.32.2 transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.25.2
  omegaconf==2.3.0 typeguard==4.6.1 imageio-ffmpeg==0.4.9 pytorch-fid==0.3.0
  trimesh==5.2.0 PyMCubes==0.1.6 nerfacc==0.5.3 xatlas==0.0.11
  fast-simplification==0.2.0
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64
  --platform manylinux1_x86_64)
rm -rf .whl && mkdir -p .whl
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$spec"
done
# omegaconf's parser runtime is published as a source archive only: build its (pure-Python) wheel.
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

# ------------------------------------------------------------------------------- sources (.device/)
rm -rf .device && mkdir -p .device/threestudio .device/official
if [[ -n "$TS" ]]; then
  TS_SRC="$TS"
else
  mkdir -p .device/tmp && tar -xzf "$VENDORED" -C .device/tmp && TS_SRC=".device/tmp/threestudio"
fi
# what launch.py imports and reads: the package, extern (guidance imports), the prompt library
for item in launch.py threestudio extern load/prompt_library.json configs; do
  mkdir -p ".device/threestudio/$(dirname "$item")"
  cp -r "$TS_SRC/$item" ".device/threestudio/$item"
done
rm -rf .device/tmp
# the official renderer: only the packages bench/official.py imports
for item in training torch_utils dnnlib camera_utils.py legacy.py; do
  [[ -e "$OFFICIAL/$item" ]] && cp -r "$OFFICIAL/$item" ".device/official/$item"
done
# (the import-only stand-ins for what threestudio imports at module level and the device lacks,
# portrait3d/cpu_stubs and bench/device_stubs, travel with the working tree: gpu_check.sh puts them
# on PYTHONPATH)
find .device -name "__pycache__" -prune -exec rm -rf {} +

# ------------------------------------------------------------------------------- size check
tree_kib=$(git ls-files -co --exclude-standard -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
carry_kib=$(du -sk .whl .device | awk '{s += $1} END {print s}')
total_mib=$(( (tree_kib + carry_kib) / 1024 ))
ls -la .whl
echo "working tree ${tree_kib} KiB + carried .whl/.device ${carry_kib} KiB = ${total_mib} MiB (limit 64)"
if (( tree_kib + carry_kib > 63 * 1024 )); then
  echo "prepare_device.sh: over the 64 MiB the device call carries; drop a wheel" >&2
  exit 1
fi
echo "ready: run bench/gpu_check.sh on the device with carry [\".whl\", \".device\"] (bench/README.md)"
