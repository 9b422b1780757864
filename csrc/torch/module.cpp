// The Python module vggrpo._C: importing it runs the op registrations of the other files (static
// initialisers); it only reports how it was built. pybind11 alone, not <torch/extension.h>: that
// header (all of ATen and torch's Python bindings) tripled the build time of this file.
#include <pybind11/pybind11.h>

#ifndef VGGRPO_TORCH_VERSION
#define VGGRPO_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vggrpo's compiled ops; use them through vggrpo.ops";
#if defined(VGGRPO_WITH_CUDA)
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
#if defined(_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.attr("torch_version") = VGGRPO_TORCH_VERSION;
}
