#!/usr/bin/env bash
# The GPU validation, for a machine with a CUDA GPU (e.g. the lent H100/H200): build vggrpo with
# its CUDA kernels, then run the stages named on the command line (all of them by default):
#
#   cuda      tests/test_cuda.py: CPU parity, opcheck, gradcheck, torch.compile, CUDA graphs
#   bench     bench/test_bench_cuda.py at the paper's scale (speed-up, memory, atomicMin ceiling)
#   sanitize  scripts/cuda_sanitize.py under compute-sanitizer memcheck, racecheck, synccheck and
#             initcheck (our kernels only)
#   tests     the whole test suite on this machine
#   rewards   bench/test_bench_rewards.py -k cuda: latent vs RGB reward on CUDA
#
#   OUT=/some/dir scripts/gpu_check.sh [stage ...]   # PYTHON=python3, MAX_JOBS=16 by default
#
# The device tool runs one command for at most 10 minutes, so every stage has its own time limit
# (seconds: BUILD_S, CUDA_S, BENCH_S, SANITIZE_S, TESTS_S, REWARDS_S) and a stage that overruns is
# reported and the next one runs. Two calls fit the limit: `scripts/gpu_check.sh cuda bench`, then
# `scripts/gpu_check.sh sanitize tests rewards` (a warm machine keeps the build; a fresh one
# rebuilds). Logs go to $OUT (default /tmp/vggrpo-gpu-check), at most 8 files, the most the device
# tool brings back: setup.log, build.log, one log per stage, and bench/results/gpu-<device>.json.
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
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(cuda bench sanitize tests rewards)
for s in "${stages[@]}"; do
  case $s in cuda|bench|sanitize|tests|rewards) ;; *) echo "gpu_check: unknown stage '$s'"; exit 2 ;; esac
done
status=0

{
  if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl/ failed"; exit 1; }
  fi
} > "$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; exit 1; }
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -1
  command -v compute-sanitizer || echo "no compute-sanitizer"
} >> "$OUT/setup.log" 2>&1
cat "$OUT/setup.log"

# One architecture for the device at hand keeps the build short; the default list is 8.0;9.0.
arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "== build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch})"
SECONDS=0
if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} \
    timeout "${BUILD_S:-300}" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
echo "built in ${SECONDS}s"
"$PY" -c "import vggrpo; assert vggrpo.cuda_built, 'built without CUDA'; print('vggrpo', vggrpo.__version__, 'cuda_built', vggrpo.cuda_built)" || exit 1

# run_stage NAME LIMIT_S TAIL_LINES COMMAND...: output to $OUT/NAME.log, its tail to the console.
run_stage() {
  local name=$1 limit=$2 lines=$3
  shift 3
  echo "== $name (limit ${limit}s)"
  SECONDS=0
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -"$lines" "$OUT/$name.log"
  echo "== $name: exit $rc after ${SECONDS}s"
  [ $rc -eq 124 ] && echo "== $name: stopped at its time limit"
  [ $rc -eq 0 ] || status=1
}

sanitize() {
  if ! command -v compute-sanitizer > /dev/null; then echo "no compute-sanitizer"; return 1; fi
  local rc=0 tool filter
  for tool in memcheck racecheck synccheck initcheck; do
    # Our kernels only (their names hold the namespace), except for initcheck: it must see
    # torch's kernels write the buffers ours then read. torch's caching allocator is off, so an
    # access past one of our buffers is not hidden inside a larger cached block.
    filter=(--kernel-name kns=vggrpo)
    [ "$tool" = initcheck ] && filter=()
    echo "-- compute-sanitizer --tool $tool ${filter[*]}"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "${filter[@]}" "$PY" scripts/cuda_sanitize.py 2>&1 | tail -25
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
  return $rc
}
# A stage command runs under timeout, hence in a child bash: sanitize needs these exported.
export -f sanitize
export PY

for s in "${stages[@]}"; do
  case $s in
    cuda) run_stage cuda "${CUDA_S:-150}" 40 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider ;;
    bench) run_stage bench_cuda "${BENCH_S:-240}" 60 "$PY" -m pytest bench/test_bench_cuda.py -q -s -p no:cacheprovider ;;
    sanitize) run_stage sanitize "${SANITIZE_S:-240}" 120 bash -c sanitize ;;
    tests) run_stage tests "${TESTS_S:-240}" 15 "$PY" -m pytest tests -q -p no:cacheprovider ;;
    rewards) run_stage bench_rewards "${REWARDS_S:-120}" 20 "$PY" -m pytest bench/test_bench_rewards.py -q -k cuda \
      --benchmark-min-rounds=10 -p no:cacheprovider ;;
  esac
done
cp bench/results/gpu-*.json "$OUT/" 2>/dev/null || true
exit $status
