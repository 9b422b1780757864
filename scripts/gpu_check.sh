#!/usr/bin/env bash
# The whole GPU validation in one call, for a machine with a CUDA GPU (e.g. the lent H100/H200):
# build vggrpo with its CUDA kernels, run the CUDA tests, the full test suite on that machine, and
# the GPU benchmarks at the paper's scale; logs and results go to $OUT (default
# /tmp/vggrpo-gpu-check), the results JSON also to bench/results/gpu-<device>.json.
#
#   OUT=/some/dir scripts/gpu_check.sh            # PYTHON=python3, MAX_JOBS=16 by default
#
# Needs torch (CUDA build), nvcc, ninja, numpy, pytest, pytest-benchmark; fetches nothing. The
# models side (LGM, sampler, GRPO, rewards bench, full test suite) also needs diffusers, peft,
# transformers, accelerate, huggingface_hub, safetensors, tqdm, pyyaml, av,
# opencv-python-headless, matplotlib, nvtx. The lent H100/H200 image has all but diffusers (and
# its importlib_metadata), nvtx and av: on a machine without a registry, carry those as wheels in
# .whl/ (Python 3.12, manylinux x86_64; see the device tool's README), e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata nvtx==0.2.17 av==18.1.0
# They are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vggrpo-gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
status=0

if ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/wheels.log" 2>&1 || { tail -20 "$OUT/wheels.log"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# One architecture for the device at hand keeps the build short; the default list is 8.0;9.0.
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "== build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch})"
if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
"$PY" -c "import vggrpo; assert vggrpo.cuda_built, 'built without CUDA'; print('vggrpo', vggrpo.__version__, 'cuda_built', vggrpo.cuda_built)" || exit 1

echo "== CUDA tests"
"$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/test_cuda.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== full test suite on this machine"
"$PY" -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== GPU benchmarks"
"$PY" -m pytest bench/test_bench_cuda.py -q -s -p no:cacheprovider 2>&1 | tee "$OUT/bench_cuda.log" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== latent vs RGB reward on CUDA (batch 4, embedded tiny models)"
"$PY" -m pytest bench/test_bench_rewards.py -q -k cuda --benchmark-min-rounds=10 \
  -p no:cacheprovider 2>&1 | tee "$OUT/bench_rewards.log" | tail -20
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
cp bench/results/gpu-*.json "$OUT/" 2>/dev/null || true
exit $status
