#!/usr/bin/env bash
# One GPU check, in one device call (≤ 8 min wall on an H100/H200-class GPU), results under $OUT:
#
#   1. installs the wheels prepared by bench/prepare_device.sh (.whl/) into /tmp/site;
#   2. runs the test suite's CUDA subset (tests/test_cuda.py: generator, renderer, inversion step,
#      refinement step, SDEdit on CUDA against the CPU; one tiny launch.py --train with threestudio
#      on CUDA) and the meta-device tests → $OUT/cuda_tests.log;
#   3. runs bench/gpu_check.py: the candidates' UNet calls and the inversion step, then the
#      extension's own run (launch.py --train and --export, shortened) with random weights of the
#      real sizes, every stage timed and projected to the full pipeline, the true peak memory of each
#      stage and its resident part, and our renderer against the official one (the official ops in
#      their reference implementation: no nvcc needed) → $OUT/gpu_check.md, .json, .log.
#
#   bash bench/gpu_check.sh            # on the device (see bench/README.md for the `run` call)
#   bash bench/gpu_check.sh --dry-run  # here, on the CPU: tiny models, same script, same table
#
# $OUT defaults to ./gpu_check_out when unset (it is set on the device machine).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (use --dry-run or nothing)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
start=$(date +%s)
status=0

if (( DRY )); then
  PY="${PYTHON:-python}"
  # this checkout first (the setup's start-up file arms the CPU stand-ins)
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" bench/gpu_check.py --dry-run --out "$OUT" ${PORTRAIT3D_OFFICIAL_ROOT:+--official-root "$PORTRAIT3D_OFFICIAL_ROOT"} \
    2>&1 | tee "$OUT/gpu_check.log" || status=1
  echo "gpu_check.sh --dry-run: $(( $(date +%s) - start )) s, status $status; table: $OUT/gpu_check.md"
  exit $status
fi

PY=python3
for need in .whl .device/threestudio .device/official; do
  if [[ ! -e "$need" ]]; then
    echo "gpu_check.sh: $need is missing: run bench/prepare_device.sh here first and name .whl and" \
         ".device in the call's carry (bench/README.md)" >&2
    exit 2
  fi
done
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/pip.log" 2>&1 || { echo "gpu_check.sh: wheel install failed (see pip.log)"; cat "$OUT/pip.log"; exit 1; }
# carried wheels first, then the repo, then the import-only stand-ins (only of packages the image
# lacks: on PYTHONPATH a stand-in would hide an installed package of the same name)
export PYTHONPATH="/tmp/site:$ROOT:$ROOT/portrait3d/cpu_stubs:$ROOT/bench/device_stubs"
export THREESTUDIO_ROOT="$ROOT/.device/threestudio" PORTRAIT3D_OFFICIAL_ROOT="$ROOT/.device/official"
export PORTRAIT3D_CACHE=/tmp/portrait3d-cache
"$PY" -c "import torch, diffusers, transformers, numpy, skimage; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
torch.cuda.get_device_name(0), '| diffusers', diffusers.__version__, '| transformers', transformers.__version__,
'| numpy', numpy.__version__, '| scikit-image', skimage.__version__)" \
  2>&1 | tee "$OUT/versions.txt"

# 2. the CUDA subset (≤ 2.5 min) and the meta-device tests
timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_device_placement.py \
  2>&1 | tee "$OUT/cuda_tests.log"
(( ${PIPESTATUS[0]} == 0 )) || status=1

# 3. the pipeline at paper settings + renderer vs official (≤ 5 min)
timeout 300 "$PY" bench/gpu_check.py --device cuda --out "$OUT" --workdir /tmp/gpu_check 2>&1 | tee "$OUT/gpu_check.log"
(( ${PIPESTATUS[0]} == 0 )) || status=1

echo "gpu_check.sh: $(( $(date +%s) - start )) s, status $status; results in $OUT (gpu_check.md, gpu_check.json, cuda_tests.log)"
exit $status
