// Built only with CUDA: the same glue as the CPU registration, for the CUDA dispatch key.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(vggrpo, CUDA, m) { VGGRPO_IMPL_ALL(m) }
