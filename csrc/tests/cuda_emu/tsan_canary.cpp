// Checks the check: small kernels with a planted concurrency bug, each of which the ThreadSanitizer
// build of the emulation must report as a data race (ctest tsan_reports_<bug>), and their correct
// twins, which must run clean and compute the right values (tsan_canary_clean). If a planted bug
// stops being reported, test_cuda_emulated_tsan no longer sees what it is there to see (the
// workers that run blocks side by side, the fiber annotations of cuda_runtime.h).
//
//   tsan_canary clean | plain_store | missing_barrier | plain_add
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_common.cuh"

namespace {

constexpr unsigned kBlocks = 4;
constexpr unsigned kThreads = 64;
constexpr unsigned kSlots = 8;

// A z-buffer: every thread of every block lowers one of kSlots keys; the planted bug is the
// z-buffer's atomicMin written as a plain read-compare-store.
bool zbuffer(bool plain_store) {
  std::vector<unsigned long long> slot(kSlots, ~0ull);
  vggrpo_emu::Launch(dim3(kBlocks), dim3(kThreads)) << [&] {
    const unsigned i = blockIdx.x * kThreads + threadIdx.x;
    const unsigned long long key = 1000 - i;
    unsigned long long* s = &slot[i % kSlots];
    if (plain_store) {
      if (key < *s) *s = key;
    } else {
      if (key < vggrpo::kernels::cuda::racing_load(s)) atomicMin(s, key);
    }
  };
  bool ok = cudaGetLastError() == cudaSuccess;
  // Slot j's minimum comes from the largest thread index i with i % kSlots == j.
  for (unsigned j = 0; j < kSlots; ++j) {
    ok = ok && slot[j] == 1000 - (kBlocks * kThreads - kSlots + j);
  }
  return ok;
}

// Neighbours in shared memory: the planted bug is the missing barrier between write and read.
bool neighbours(bool barrier) {
  std::vector<unsigned> out(kBlocks * kThreads, 0);
  vggrpo_emu::Launch(dim3(kBlocks), dim3(kThreads)) << [&] {
    __shared__ unsigned s[kThreads];
    s[threadIdx.x] = threadIdx.x;
    if (barrier) __syncthreads();
    out[blockIdx.x * kThreads + threadIdx.x] = s[(threadIdx.x + 1) % kThreads];
  };
  bool ok = cudaGetLastError() == cudaSuccess;
  for (unsigned i = 0; i < kBlocks * kThreads; ++i) ok = ok && out[i] == (i + 1) % kThreads;
  return ok;
}

// A gradient scatter: the planted bug is atomicAdd written as +=.
bool scatter(bool plain_add) {
  std::vector<double> sum(kSlots, 0.0);
  vggrpo_emu::Launch(dim3(kBlocks), dim3(kThreads)) << [&] {
    double* s = &sum[(blockIdx.x * kThreads + threadIdx.x) % kSlots];
    if (plain_add) {
      *s += 1.0;
    } else {
      atomicAdd(s, 1.0);
    }
  };
  bool ok = cudaGetLastError() == cudaSuccess;
  for (double v : sum) ok = ok && v == double(kBlocks * kThreads / kSlots);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tsan_canary clean|plain_store|missing_barrier|plain_add\n");
    return 2;
  }
  if (vggrpo_emu::workers() < 2) {
    std::fprintf(stderr, "tsan_canary: needs 2 or more workers, has %u\n", vggrpo_emu::workers());
    return 2;
  }
  const char* what = argv[1];
  if (std::strcmp(what, "clean") == 0) {
    const bool ok = zbuffer(false) && neighbours(true) && scatter(false);
    std::printf("tsan_canary clean: %s\n", ok ? "ok" : "WRONG VALUES");
    return ok ? 0 : 1;
  }
  if (std::strcmp(what, "plain_store") == 0) return zbuffer(true) ? 0 : 1;
  if (std::strcmp(what, "missing_barrier") == 0) return neighbours(false) ? 0 : 1;
  if (std::strcmp(what, "plain_add") == 0) return scatter(true) ? 0 : 1;
  std::fprintf(stderr, "tsan_canary: unknown case '%s'\n", what);
  return 2;
}
