#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(vggrpo, CPU, m) { VGGRPO_IMPL_ALL(m) }
