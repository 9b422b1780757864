#define AT_PER_OPERATOR_HEADERS  // see ops.cpp
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS

#include "checks.h"

#include <cctype>
#include <sstream>

namespace vggrpo {
namespace glue {

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < sizes.size(); ++i) s << (i ? ", " : "") << sizes[i];
  s << "]";
  return s.str();
}

namespace {

bool is_name(const std::string& token) {
  return !token.empty() && std::isalpha(static_cast<unsigned char>(token[0]));
}

std::string pattern_str(std::initializer_list<const char*> pattern) {
  std::ostringstream s;
  s << "[";
  bool first = true;
  for (const char* p : pattern) {
    s << (first ? "" : ", ") << p;
    first = false;
  }
  s << "]";
  return s.str();
}

bool matches_number(const std::string& token, int64_t value) {
  std::stringstream choices(token);
  std::string one;
  while (std::getline(choices, one, '|')) {
    if (std::stoll(one) == value) return true;
  }
  return false;
}

}  // namespace

void ShapeCheck::operator()(const char* arg, const at::Tensor& t,
                            std::initializer_list<const char*> pattern) {
  TORCH_CHECK_TYPE(t.defined(), "vggrpo.", op_, ": `", arg, "` must be a tensor, got None");
  const auto sizes = t.sizes();
  const std::string expected = pattern_str(pattern);
  TORCH_CHECK_VALUE(sizes.size() == pattern.size(), "vggrpo.", op_, ": expected `", arg,
                    "` of shape ", expected, " (", pattern.size(), " dims), got ",
                    shape_str(sizes), " (", sizes.size(), " dims)");
  size_t i = 0;
  for (const char* p : pattern) {
    const std::string token(p);
    const int64_t value = sizes[i++];
    if (!is_name(token)) {
      TORCH_CHECK_VALUE(matches_number(token, value), "vggrpo.", op_, ": expected `", arg,
                        "` of shape ", expected, ", got ", shape_str(sizes));
      continue;
    }
    bool found = false;
    for (const Bound& b : bound_) {
      if (b.name != token) continue;
      found = true;
      TORCH_CHECK_VALUE(b.value == value, "vggrpo.", op_, ": expected `", arg, "` of shape ",
                        expected, " with ", token, "=", b.value, " (from `", b.source, "`), got ",
                        shape_str(sizes));
    }
    if (!found) bound_.push_back({token, value, arg});
  }
}

int64_t ShapeCheck::operator[](const char* name) const {
  for (const Bound& b : bound_) {
    if (b.name == name) return b.value;
  }
  TORCH_INTERNAL_ASSERT(false, "dimension ", name, " was never bound");
  return 0;
}

void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, "vggrpo.", op, ": expected `", arg,
                   "` to be torch.float32 or torch.float64, got ", dtype_name(dt),
                   (dt == at::kHalf || dt == at::kBFloat16
                        ? " (the vggrpo.ops wrappers compute 16-bit inputs in float32; call them "
                          "instead of torch.ops.vggrpo)"
                        : ""));
}

void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "vggrpo.", op, ": expected `", arg, "` to be ",
                   dtype_name(dtype), ", got ", dtype_name(t.scalar_type()));
}

void check_same_device_and_dtype(const char* op,
                                 std::initializer_list<std::pair<const char*, at::Tensor>> args) {
  const char* first_name = nullptr;
  at::Tensor first;
  const char* first_float_name = nullptr;
  at::Tensor first_float;
  for (const auto& a : args) {
    if (!a.second.defined()) continue;
    if (first_name == nullptr) {
      first_name = a.first;
      first = a.second;
    } else {
      TORCH_CHECK_VALUE(a.second.device() == first.device(), "vggrpo.", op,
                        ": expected all tensors on one device, but `", first_name, "` is on ",
                        first.device(), " and `", a.first, "` on ", a.second.device());
    }
    if (!at::isFloatingType(a.second.scalar_type())) continue;
    if (first_float_name == nullptr) {
      first_float_name = a.first;
      first_float = a.second;
    } else {
      TORCH_CHECK_TYPE(a.second.scalar_type() == first_float.scalar_type(), "vggrpo.", op,
                       ": expected `", a.first, "` to have the dtype of `", first_float_name,
                       "` (", dtype_name(first_float.scalar_type()), "), got ",
                       dtype_name(a.second.scalar_type()),
                       " (the vggrpo.ops wrappers promote mixed float inputs)");
    }
  }
}

}  // namespace glue
}  // namespace vggrpo
