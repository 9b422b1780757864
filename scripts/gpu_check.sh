#!/usr/bin/env bash
# The GPU validation, for a machine with a CUDA GPU (e.g. the lent H100/H200): build vggrpo with
# its CUDA kernels, then run the stages named on the command line (all of them by default, in
# this order, most important first):
#
#   cuda      tests/test_cuda.py: CPU parity, opcheck, gradcheck, torch.compile, CUDA graphs
#   bench     bench/test_bench_cuda.py at the paper's scale (speed-up, memory, atomicMin ceiling)
#   sanitize  scripts/cuda_sanitize.py under compute-sanitizer memcheck, racecheck, synccheck and
#             initcheck (our kernels only)
#   rewards   bench/test_bench_rewards.py -k cuda: latent vs RGB reward on CUDA
#   tests     the whole test suite on this machine
#
#   OUT=/some/dir scripts/gpu_check.sh [stage ...]   # PYTHON=python3, MAX_JOBS=16 by default
#
# Device time is short (15 minutes a session, a machine's start included), so the whole check is
# one call that ends by itself: DEADLINE_S (default 540) after it starts, whatever happens. Each
# step has its own limit (seconds: BUILD_S, CUDA_S, BENCH_S, SANITIZE_S, REWARDS_S, TESTS_S), cut
# to the time left before the deadline; a step that overruns is stopped and reported, the next
# one runs, and a step that would get under MIN_STAGE_S (default 20) is reported as not run. The
# last lines printed are one line per stage: ok, failed, stopped at its limit, or not run. So:
#
#   run(command="scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# and, only if a stage failed fast and the machine is still warm (30 s), a second call of just
# that stage. Logs go to $OUT (default /tmp/vggrpo-gpu-check), at most 8 files, the most the
# device tool brings back: setup.log, build.log, one log per stage, bench/results/gpu-<device>.json.
#
# Needs torch (CUDA build), nvcc, ninja, numpy, pytest, pytest-benchmark; fetches nothing. The
# models side (LGM, sampler, GRPO, rewards bench, full test suite) also needs diffusers, peft,
# transformers, accelerate, huggingface_hub, safetensors, tqdm, pyyaml, av,
# opencv-python-headless, matplotlib, nvtx. The lent H100/H200 image has all but diffusers (and
# its importlib_metadata), nvtx and av: on a machine without a registry, carry those as wheels in
# .whl/ (Python 3.12, manylinux x86_64; `make gpu-wheels` downloads them). They are installed
# into /tmp/site first. `make cuda-build` (part of `make test`) builds the same extension against
# the GPU machine's torch on a machine without a GPU, so a compile error shows there first.
#
# It stops at once where torch sees no CUDA device (the GPU tests would all skip); REHEARSAL=1
# runs it through anyway, for a dry run of the flow on a machine without a GPU. Sourcing this
# file defines its functions and runs nothing (tests/test_gpu_scripts.py).
set -uo pipefail

ALL_STAGES=(cuda bench sanitize rewards tests)
status=0
summary=()

# stage_limit LIMIT_S: a step's own limit, cut to the seconds left before the call's deadline.
stage_limit() {
  local left=$((START + ${DEADLINE_S:-540} - $(date +%s)))
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# run_stage NAME LIMIT_S TAIL_LINES COMMAND...: output to $OUT/NAME.log, its tail to the console.
run_stage() {
  local name=$1 limit
  limit=$(stage_limit "$2")
  local lines=$3
  shift 3
  if [ "$limit" -lt "${MIN_STAGE_S:-20}" ]; then
    echo "== $name: not run, ${limit}s left before the call's deadline"
    summary+=("$name: not run (deadline)")
    status=1
    return
  fi
  echo "== $name (limit ${limit}s)"
  SECONDS=0
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -"$lines" "$OUT/$name.log"
  echo "== $name: exit $rc after ${SECONDS}s"
  if [ $rc -eq 0 ]; then
    summary+=("$name: ok (${SECONDS}s)")
  elif [ $rc -eq 124 ]; then
    echo "== $name: stopped at its time limit"
    summary+=("$name: stopped at its limit of ${limit}s")
  else
    summary+=("$name: failed, exit $rc (${SECONDS}s)")
  fi
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

print_summary() {
  echo "== summary (${DEADLINE_S:-540}s deadline, $(($(date +%s) - START))s used)"
  local line
  for line in "${summary[@]}"; do echo "   $line"; done
}

main() {
  cd "$(dirname "$0")/.." || exit 1
  START=$(date +%s)
  OUT=${OUT:-/tmp/vggrpo-gpu-check}
  PY=${PYTHON:-python3}
  export PYTHONUNBUFFERED=1
  local stages=("$@") s
  [ ${#stages[@]} -gt 0 ] || stages=("${ALL_STAGES[@]}")
  for s in "${stages[@]}"; do
    case " ${ALL_STAGES[*]} " in *" $s "*) ;; *) echo "gpu_check: unknown stage '$s'"; exit 2 ;; esac
  done
  mkdir -p "$OUT"

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
  # Without a visible device every GPU test would skip and its stage would read "ok".
  # REHEARSAL=1 lets the script run through on a machine without a GPU (a dry run of the flow).
  if [ "${REHEARSAL:-0}" != 1 ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2> /dev/null; then
    echo "gpu_check: torch sees no CUDA device; nothing here would test the kernels"
    exit 1
  fi

  # One architecture for the device at hand keeps the build short; the default list is 8.0;9.0.
  local arch limit
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2> /dev/null)
  limit=$(stage_limit "${BUILD_S:-240}")
  echo "== build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}, limit ${limit}s)"
  SECONDS=0
  if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} \
      timeout "$limit" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
      > "$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    exit 1
  fi
  echo "built in ${SECONDS}s"
  "$PY" -c "import vggrpo; assert vggrpo.cuda_built, 'built without CUDA'; print('vggrpo', vggrpo.__version__, 'cuda_built', vggrpo.cuda_built)" || exit 1

  # A stage command runs under timeout, hence in a child bash: sanitize needs these exported.
  export -f sanitize
  export PY

  for s in "${stages[@]}"; do
    case $s in
      cuda) run_stage cuda "${CUDA_S:-150}" 40 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider ;;
      bench) run_stage bench_cuda "${BENCH_S:-180}" 60 "$PY" -m pytest bench/test_bench_cuda.py -q -s -p no:cacheprovider ;;
      sanitize) run_stage sanitize "${SANITIZE_S:-150}" 120 bash -c sanitize ;;
      rewards) run_stage bench_rewards "${REWARDS_S:-90}" 20 "$PY" -m pytest bench/test_bench_rewards.py -q -k cuda \
        --benchmark-min-rounds=10 -p no:cacheprovider ;;
      tests) run_stage tests "${TESTS_S:-180}" 15 "$PY" -m pytest tests -q -p no:cacheprovider ;;
    esac
  done
  cp bench/results/gpu-*.json "$OUT/" 2>/dev/null || true
  print_summary
  exit $status
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
