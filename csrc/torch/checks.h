// Input validation for the tensor glue. Every op checks all of its inputs here before touching a
// pointer, and every failure names the op, the argument, what was expected and what came:
//   vggrpo.splat_depth: expected `extrinsics` of shape [B, V, 3|4, 4], got [2, 7, 3, 4]
//   (V=8 from `intrinsics`)
// Shape and value errors raise ValueError, dtype errors TypeError, in Python.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace vggrpo {
namespace glue {

std::string dtype_name(at::ScalarType t);
std::string shape_str(at::IntArrayRef sizes);

// Binds named dimensions across the arguments of one call. Pattern tokens: a number ("3"), a
// choice of numbers ("3|4"), or a name ("B") that must take the same value everywhere it appears.
class ShapeCheck {
 public:
  explicit ShapeCheck(const char* op) : op_(op) {}
  void operator()(const char* arg, const at::Tensor& t, std::initializer_list<const char*> pattern);
  // Value bound to a name by an earlier call (the name must have been bound).
  int64_t operator[](const char* name) const;

 private:
  struct Bound {
    std::string name;
    int64_t value;
    std::string source;
  };
  const char* op_;
  std::vector<Bound> bound_;
};

// float32 or float64 (the wrappers in vggrpo.ops promote float16/bfloat16 before calling).
void check_floating(const char* op, const char* arg, const at::Tensor& t);
// `arg` has exactly `dtype`.
void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype);
// All named tensors (undefined ones skipped) on one device and, for the floating ones, in the
// dtype of the first.
void check_same_device_and_dtype(const char* op,
                                 std::initializer_list<std::pair<const char*, at::Tensor>> args);

}  // namespace glue
}  // namespace vggrpo
