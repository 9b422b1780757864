// Built only when vggrpo is compiled without CUDA. A CUDA tensor handed to a vggrpo op would
// otherwise hit PyTorch's generic "could not run ... with arguments from the CUDA backend"; this
// registration says what happened and how to fix it.
#include <torch/library.h>

#include "ops.h"

namespace {

void raise_built_without_cuda(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(),
              " got a CUDA tensor, but vggrpo was built without CUDA. Rebuild it on a machine with "
              "a CUDA build of torch and the matching CUDA toolkit (nvcc, CUDA_HOME): "
              "`FORCE_CUDA=1 pip install --no-build-isolation -e .`, or move the inputs to the CPU.");
}

}  // namespace

#define VGGRPO_STUB_ONE(name) \
  m.impl(#name, torch::CppFunction::makeFromBoxedFunction<&raise_built_without_cuda>());

TORCH_LIBRARY_IMPL(vggrpo, CUDA, m) { VGGRPO_FOR_EACH_OP(VGGRPO_STUB_ONE) }
