"""Bad input: a clear error that names the argument and what was expected, never a crash or a
silent wrong answer.

* every op of ``torch.ops.vggrpo`` (forward and backward, called directly with forged inputs) and
  every wrapper in ``vggrpo.ops``: wrong ranks, wrong fixed dims, each B/T(V)/H/W/N mismatch
  between arguments, non-float dtypes, bool/int64 for ``valid``/``count``/``winner``, None and
  non-tensors, 16-bit and mixed floats, out-of-range scalars, the CUDA kernels of a CPU-only
  build, tensors on two devices, too many points for the z-buffer key;
* the rewards and ``group_advantages``;
* what must be accepted: non-contiguous inputs (same result and gradients as contiguous copies),
  16-bit and mixed float inputs (promoted), empty batches (the reference twins too), NaN/inf in
  pointmaps and depths (those pixels are invalid, the reward stays finite; a NaN/inf camera is
  tests/test_rewards.py's), forged out-of-range winners (ignored, never read).

The raw-op tables are driven by the registered schemas, so an op that gains an optional argument
is still called correctly (the new argument is None) and one that gains a required argument fails
here loudly until SPECS below describes it.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

import vggrpo
from vggrpo import ops, reference
from vggrpo.data import make_scene

RAW = torch.ops.vggrpo
F32, F64 = torch.float32, torch.float64
NAN, INF = float("nan"), float("inf")

CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
CUDA_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)

# Sizes of the named dimensions of the raw-op inputs; all distinct so a message's numbers are
# unambiguous.
DIMS = {"B": 2, "T": 4, "V": 4, "H": 6, "W": 5, "N": 7, "L": 3}

# op -> {tensor argument: (shape pattern, kind)}. kind: "float", "bool", "count" (int64 >= 0),
# "winner" (int64 point index or -1). A pattern is what the C++ check states (docs/ops.md);
# so3 arguments ([..., 3, 3]) are checked by hand and have no generic pattern here.
BTHW3 = ("B", "T", "H", "W", "3")
BVHW = ("B", "V", "H", "W")
BTHW = ("B", "T", "H", "W")
SPECS = {
    "so3_log": {"R": (("L", "3", "3"), "float")},
    "so3_log_backward": {"grad_omega": (("L", "3"), "float"), "R": (("L", "3", "3"), "float")},
    "motion_smoothness": {"extrinsics": (("B", "T", "3|4", "4"), "float")},
    "motion_smoothness_backward": {
        "grad_trans": (("B",), "float"),
        "grad_rot": (("B",), "float"),
        "extrinsics": (("B", "T", "3|4", "4"), "float"),
    },
    "static_points": {"pointmaps": (BTHW3, "float"), "scene_flow": (BTHW3, "float")},
    "splat_depth": {
        "points": (("B", "N", "3"), "float"),
        "valid": (("B", "N"), "bool"),
        "extrinsics": (("B", "V", "3|4", "4"), "float"),
        "intrinsics": (("B", "V", "3", "3"), "float"),
    },
    "splat_depth_backward": {
        "grad_depth": (BVHW, "float"),
        "winner": (BVHW, "winner"),
        "points": (("B", "N", "3"), "float"),
        "extrinsics": (("B", "V", "3|4", "4"), "float"),
        "intrinsics": (("B", "V", "3", "3"), "float"),
    },
    "view_depth_error": {
        "rendered": (BVHW, "float"),
        "depths": (BVHW, "float"),
        "valid": (BVHW, "bool"),  # used only if the schema has it
    },
    "view_depth_error_backward": {
        "grad_err": (("B", "V"), "float"),
        "rendered": (BVHW, "float"),
        "depths": (BVHW, "float"),
        "count": (("B", "V"), "count"),
        "valid": (BVHW, "bool"),  # used only if the schema has it
    },
    "worst_k_mean": {"err": (("B", "V"), "float"), "count": (("B", "V"), "count")},
    "worst_k_mean_backward": {
        "grad": (("B",), "float"),
        "err": (("B", "V"), "float"),
        "count": (("B", "V"), "count"),
    },
    "reprojection_errors": {
        "pointmaps": (BTHW3, "float"),
        "depths": (BTHW, "float"),
        "extrinsics": (("B", "T", "3|4", "4"), "float"),
        "intrinsics": (("B", "T", "3", "3"), "float"),
        "scene_flow": (BTHW3, "float"),
    },
    "reprojection_errors_backward": {
        "grad_err": (("B", "T"), "float"),
        "count": (("B", "T"), "count"),
        "winner": (BTHW, "winner"),
        "valid": (BTHW, "bool"),
        "pointmaps": (BTHW3, "float"),
        "depths": (BTHW, "float"),
        "extrinsics": (("B", "T", "3|4", "4"), "float"),
        "intrinsics": (("B", "T", "3", "3"), "float"),
    },
}
SO3_OPS = ("so3_log", "so3_log_backward")
SCALARS = {"eps": 1e-8, "flow_threshold": 0.1, "height": DIMS["H"], "width": DIMS["W"], "k": 3,
           "need_winner": True}
OPS = list(SPECS)


def schema_args(op):
    return list(getattr(RAW, op).default._schema.arguments)


def is_optional(arg):
    return isinstance(arg.type, torch._C.OptionalType)


def tensor_args(op):
    """Names of the op's tensor arguments described in SPECS, in schema order."""
    return [a.name for a in schema_args(op) if a.name in SPECS[op]]


def required_tensor_args(op):
    return [a.name for a in schema_args(op) if a.name in SPECS[op] and not is_optional(a)]


def shape_of(pattern, dims=DIMS):
    return [dims[t] if t in dims else int(t.split("|")[0]) for t in pattern]


def pattern_str(pattern):
    return "[" + ", ".join(pattern) + "]"


def make_input(op, name, shape=None, dtype=None, seed=0):
    pattern, kind = SPECS[op][name]
    shape = shape_of(pattern) if shape is None else shape
    gen = torch.Generator().manual_seed(seed + 17 * len(name))
    if kind == "float":
        t = torch.randn(shape, generator=gen)
    elif kind == "bool":
        t = torch.rand(shape, generator=gen) > 0.3
    elif kind == "count":
        t = torch.randint(0, 10, shape, generator=gen)
    else:  # winner: an index into the op's point cloud, or -1
        n = DIMS["N"] if op == "splat_depth_backward" else DIMS["T"] * DIMS["H"] * DIMS["W"]
        t = torch.randint(-1, n, shape, generator=gen)
    return t if dtype is None else t.to(dtype)


def good_args(op, **override):
    """Valid positional arguments of a raw op, in schema order (optional args unknown to SPECS
    are None); ``override`` replaces some by name."""
    args = []
    for a in schema_args(op):
        if a.name in override:
            args.append(override[a.name])
        elif a.name in SPECS[op]:
            args.append(make_input(op, a.name))
        elif a.name in SCALARS:
            args.append(SCALARS[a.name])
        elif is_optional(a):
            args.append(None)
        else:
            raise KeyError(f"tests/test_errors.py: describe argument {a.name!r} of {op} in SPECS")
    return args


def call(op, **override):
    return getattr(RAW, op)(*good_args(op, **override))


def raises(exc, fn, *names, contains=()):
    """Runs fn, expects `exc`, checks that the message names each argument (backticked) and
    contains each string of `contains`; returns the message."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert f"`{name}`" in msg, msg
    for s in contains:
        assert s in msg, msg
    return msg


def outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


# ------------------------------------------------------------------------------------------------
# Raw ops: the tables above are right (good inputs run)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_raw_good_inputs_run(op):
    outs = outputs(call(op))
    assert outs and all(o.device.type == "cpu" for o in outs)
    for o in outs:
        if o.is_floating_point():
            assert o.dtype == F32 and torch.isfinite(o).all()


@pytest.mark.parametrize(
    "op,arg",
    [(op, a.name) for op in OPS for a in schema_args(op) if a.name in SPECS[op] and is_optional(a)],
)
def test_raw_optional_none_accepted(op, arg):
    outs = outputs(call(op, **{arg: None}))
    assert all(torch.isfinite(o).all() for o in outs if o.is_floating_point())


# ------------------------------------------------------------------------------------------------
# Raw ops: shapes
# ------------------------------------------------------------------------------------------------

PATTERN_CASES = [(op, arg) for op in OPS if op not in SO3_OPS for arg in tensor_args(op)]


@pytest.mark.parametrize("change", ["extra", "missing"])
@pytest.mark.parametrize("op,arg", PATTERN_CASES)
def test_raw_wrong_rank(op, arg, change):
    pattern, kind = SPECS[op][arg]
    good = make_input(op, arg)
    bad = good.unsqueeze(-1) if change == "extra" else good[..., 0]
    raises(
        ValueError,
        lambda: call(op, **{arg: bad}),
        arg,
        contains=[
            f"vggrpo.{op}:",
            pattern_str(pattern),
            f"({len(pattern)} dims)",
            f"got {list(bad.shape)}",
            f"({bad.dim()} dims)",
        ],
    )


FIXED_CASES = [
    (op, arg, i)
    for op, arg in PATTERN_CASES
    for i, tok in enumerate(SPECS[op][arg][0])
    if not tok.isalpha()
]


@pytest.mark.parametrize("op,arg,index", FIXED_CASES)
def test_raw_wrong_fixed_dim(op, arg, index):
    pattern, kind = SPECS[op][arg]
    shape = shape_of(pattern)
    shape[index] = 2  # 2 is never an allowed fixed size (3, 4 or 3|4)
    bad = make_input(op, arg, shape=shape)
    raises(ValueError, lambda: call(op, **{arg: bad}), arg,
           contains=[pattern_str(pattern), str(shape)])


def _mismatch_cases():
    cases = []
    for op, arg in PATTERN_CASES:
        for dim in SPECS[op][arg][0]:
            if not dim.isalpha():
                continue
            holders = [a for a in tensor_args(op) if dim in SPECS[op][a][0]]
            if len(holders) >= 2:  # a dimension only one argument has cannot mismatch
                cases.append((op, arg, dim))
    return cases


MISMATCH_CASES = _mismatch_cases()


def test_mismatch_table_has_the_expected_cases():
    found = {(op, dim) for op, _, dim in MISMATCH_CASES}
    for pair in [("splat_depth", "B"), ("splat_depth", "N"), ("splat_depth", "V"),
                 ("reprojection_errors", "T"), ("reprojection_errors", "H"),
                 ("reprojection_errors", "W"), ("view_depth_error", "H"),
                 ("splat_depth_backward", "W"), ("reprojection_errors_backward", "T"),
                 ("motion_smoothness_backward", "B"), ("worst_k_mean", "V")]:
        assert pair in found


@pytest.mark.parametrize("op,arg,dim", MISMATCH_CASES)
def test_raw_dimension_mismatch(op, arg, dim):
    """One argument disagrees with the others on one named dimension: the message names that
    argument, the dimension and both sizes (whichever argument bound the dimension first)."""
    pattern, kind = SPECS[op][arg]
    shape = shape_of(pattern)
    good_size = DIMS[dim]
    for i, tok in enumerate(pattern):
        if tok == dim:
            shape[i] = good_size + 1
    bad = make_input(op, arg, shape=shape)
    msg = raises(ValueError, lambda: call(op, **{arg: bad}), arg, contains=[f"vggrpo.{op}:"])
    # "... with H=6 (from `pointmaps`), got [2, 4, 7, 5]" or "... with H=7 (from `depths`), got
    # [2, 4, 6, 5, 3]": the bound size after "H=", the other one in the shape that came.
    came = msg.split("got ")[-1]
    if f"{dim}={good_size} " in msg:  # bound by another argument; ours came with the bad size
        assert str(list(bad.shape)) in came, msg
    else:  # ours bound it first; another argument came with the good size
        assert f"{dim}={good_size + 1} " in msg and str(good_size) in came, msg
    assert "(from `" in msg, msg


def test_splat_depth_mismatch_message_is_exact():
    msg = raises(
        ValueError,
        lambda: call("splat_depth", intrinsics=torch.eye(3).expand(2, 8, 3, 3)),
        "intrinsics",
        "extrinsics",
    )
    assert msg.startswith(
        "vggrpo.splat_depth: expected `intrinsics` of shape [B, V, 3, 3] with V=4 (from "
        "`extrinsics`), got [2, 8, 3, 3]"
    ), msg


def test_so3_shapes():
    raises(ValueError, lambda: ops.so3_log(torch.zeros(3)), "R", contains=["[..., 3, 3]", "[3]"])
    raises(ValueError, lambda: ops.so3_log(torch.zeros(2, 3, 4)), "R",
           contains=["[..., 3, 3]", "[2, 3, 4]"])
    raises(ValueError, lambda: ops.so3_log(torch.zeros(4, 3)), "R", contains=["[4, 3]"])
    R = torch.eye(3).expand(5, 3, 3)
    for g in (torch.zeros(4, 3), torch.zeros(5, 3, 1), torch.zeros(5, 4), torch.zeros(3)):
        raises(ValueError, lambda: RAW.so3_log_backward(g, R), "grad_omega",
               contains=["[5, 3]", str(list(g.shape))])
    raises(ValueError, lambda: RAW.so3_log_backward(torch.zeros(5, 3), torch.zeros(5, 3, 2)), "R",
           contains=["[..., 3, 3]"])
    # any leading shape, including none and empty ones, is fine
    assert ops.so3_log(torch.eye(3)).shape == (3,)
    assert ops.so3_log(torch.eye(3).expand(2, 0, 3, 3)).shape == (2, 0, 3)


def test_extrinsics_accept_3x4_and_4x4_only():
    E = torch.eye(4)[:3].expand(2, 5, 3, 4)
    assert ops.motion_smoothness(torch.eye(4).expand(2, 5, 4, 4))[0].shape == (2,)
    for rows, cols in [(2, 4), (5, 4), (3, 3), (4, 3), (4, 5)]:
        raises(ValueError, lambda: ops.motion_smoothness(torch.zeros(2, 5, rows, cols)),
               "extrinsics", contains=["[B, T, 3|4, 4]", f"[2, 5, {rows}, {cols}]"])
    assert torch.isfinite(ops.motion_smoothness(E)[0]).all()


@pytest.mark.parametrize("op", ["static_points", "splat_depth", "reprojection_errors"])
def test_too_many_points_for_the_zbuffer_key(op):
    """N < 2**32: the point index must fit the key's low 32 bits. Expanded tensors cost nothing."""
    one = torch.zeros(1, 1, 1, 1, 3)
    cams = dict(extrinsics=torch.eye(4)[:3].expand(1, 1, 3, 4),
                intrinsics=torch.eye(3).expand(1, 1, 3, 3))
    if op == "static_points":
        fn = lambda: ops.static_points(one.expand(1, 2**16, 2**8, 2**8, 3))  # noqa: E731
    elif op == "splat_depth":
        fn = lambda: ops.splat_depth(torch.zeros(1, 1, 3).expand(1, 2**32, 3), None,  # noqa: E731
                                     cams["extrinsics"], cams["intrinsics"], 4, 4)
    else:
        E = torch.eye(4)[:3].expand(1, 2**8, 3, 4)
        K = torch.eye(3).expand(1, 2**8, 3, 3)
        big = (1, 2**8, 2**12, 2**12)
        fn = lambda: ops.reprojection_errors(  # noqa: E731
            one.expand(*big, 3), torch.zeros(1, 1, 1, 1).expand(*big), E, K)
    raises(ValueError, fn, contains=["at most 4294967295 points", "got 4294967296"])


# ------------------------------------------------------------------------------------------------
# Raw ops: dtypes, None, devices
# ------------------------------------------------------------------------------------------------

FLOAT_CASES = [(op, arg) for op in OPS for arg in tensor_args(op) if SPECS[op][arg][1] == "float"]
INDEX_CASES = [(op, arg) for op in OPS for arg in tensor_args(op) if SPECS[op][arg][1] != "float"]
BAD_FLOAT_DTYPES = [torch.int64, torch.int32, torch.bool, torch.complex64]


@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("op,arg", FLOAT_CASES)
def test_raw_non_float_dtype(op, arg, dtype):
    bad = make_input(op, arg).to(dtype) if dtype != torch.complex64 else \
        torch.complex(make_input(op, arg), make_input(op, arg))
    name = str(dtype)
    raises(TypeError, lambda: call(op, **{arg: bad}), arg,
           contains=[f"vggrpo.{op}:", "torch.float32 or torch.float64", f"got {name}"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.uint8, torch.bool,
                                   torch.int64], ids=str)
@pytest.mark.parametrize("op,arg", INDEX_CASES)
def test_raw_index_and_mask_dtypes(op, arg, dtype):
    kind = SPECS[op][arg][1]
    want = torch.bool if kind == "bool" else torch.int64
    bad = make_input(op, arg).to(dtype)
    if dtype == want:
        call(op, **{arg: bad})  # accepted
        return
    raises(TypeError, lambda: call(op, **{arg: bad}), arg,
           contains=[f"to be {want}", f"got {dtype}"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,arg", FLOAT_CASES)
def test_raw_ops_reject_16_bit_and_point_at_the_wrappers(op, arg, dtype):
    bad = make_input(op, arg, dtype=dtype)
    raises(TypeError, lambda: call(op, **{arg: bad}), arg,
           contains=[f"got {dtype}", "vggrpo.ops wrappers", "float32"])


MIXED_CASES = [
    (op, arg) for op, arg in FLOAT_CASES
    if sum(SPECS[op][a][1] == "float" for a in tensor_args(op)) >= 2
]


@pytest.mark.parametrize("op,arg", MIXED_CASES)
def test_raw_ops_reject_mixed_float_dtypes(op, arg):
    bad = make_input(op, arg, dtype=F64)
    raises(TypeError, lambda: call(op, **{arg: bad}), arg,
           contains=["to have the dtype of", "torch.float64", "promote"])


NONE_CASES = [(op, arg) for op in OPS for arg in required_tensor_args(op)
              if len(required_tensor_args(op)) >= 2]


@pytest.mark.parametrize("op,arg", NONE_CASES)
def test_raw_none_for_a_required_tensor(op, arg):
    raises(TypeError, lambda: call(op, **{arg: None}), arg, contains=["must be a tensor, got None"])


@pytest.mark.parametrize("bad", [[[1.0, 0.0, 0.0]] * 3, np.eye(3), 3.0],
                         ids=["list", "numpy", "float"])
def test_raw_non_tensor_is_refused_by_the_dispatcher(bad):
    # The dispatcher itself refuses before our code runs; its message names the argument.
    with pytest.raises(RuntimeError, match="argument 'R'"):
        RAW.so3_log(bad)


@pytest.mark.skipif(vggrpo.cuda_built, reason="a CUDA build runs the real CUDA kernels")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_of_a_cpu_only_build_says_how_to_fix_it(op):
    """The CPU wheel cannot make CUDA tensors, so call the CUDA registration directly."""
    kernel = getattr(RAW, op).default
    with pytest.raises(RuntimeError) as info:
        kernel.redispatch(CUDA_KEYS, *good_args(op))
    msg = str(info.value)
    assert f"vggrpo::{op} got a CUDA tensor" in msg, msg
    assert "built without CUDA" in msg and "FORCE_CUDA=1" in msg, msg
    assert "move the inputs to the CPU" in msg, msg


def test_every_registered_op_is_in_the_tables():
    """The parametrized tests above must see every op of the namespace (the CUDA stub test in
    particular)."""
    ns = [name for name in dir(RAW) if not name.startswith("_") and
          isinstance(getattr(RAW, name), torch._ops.OpOverloadPacket)]
    assert sorted(ns) == sorted(OPS)


DEVICE_CASES = [(op, arg) for op in OPS for arg in tensor_args(op) if len(tensor_args(op)) >= 2]


@pytest.mark.parametrize("op,arg", DEVICE_CASES)
def test_raw_mixed_devices(op, arg):
    """One argument on another device (meta; the CPU kernel is reached by redispatching, since
    normal dispatch would send any meta input to the fake kernel)."""
    kernel = getattr(RAW, op).default
    args = good_args(op, **{arg: make_input(op, arg).to("meta")})
    raises(ValueError, lambda: kernel.redispatch(CPU_KEYS, *args), arg,
           contains=["expected all tensors on one device", "meta", "cpu"])


# ------------------------------------------------------------------------------------------------
# Raw ops and wrappers: scalars
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, -1e-3, NAN, INF, -INF])
@pytest.mark.parametrize("where", ["raw", "raw_backward", "wrapper", "reward"])
def test_eps_must_be_finite_and_positive(eps, where):
    ext = make_input("motion_smoothness", "extrinsics")
    fn = {
        "raw": lambda: call("motion_smoothness", eps=eps),
        "raw_backward": lambda: call("motion_smoothness_backward", eps=eps),
        "wrapper": lambda: ops.motion_smoothness(ext, eps),
        "reward": lambda: vggrpo.camera_motion_reward(ext, eps=eps),
    }[where]
    raises(ValueError, fn, "eps", contains=["finite number > 0", "got "])


@pytest.mark.parametrize("threshold", [-0.1, -INF, NAN, INF])
@pytest.mark.parametrize("where", ["static_points", "reprojection_errors", "reward"])
def test_flow_threshold_must_be_finite_and_not_negative(threshold, where):
    if where == "reward":
        args = good_args("reprojection_errors")[:5]
        def fn():
            return vggrpo.geometry_reprojection_reward(*args, flow_threshold=threshold)
    else:
        fn = lambda: call(where, flow_threshold=threshold)  # noqa: E731
    raises(ValueError, fn, "flow_threshold", contains=["finite number >= 0"])


def test_flow_threshold_zero_is_allowed():
    pm = make_input("static_points", "pointmaps")
    flow = torch.zeros_like(pm)
    flow[0, 0, 0, 0, 0] = 1e-3
    points, valid = ops.static_points(pm, flow, 0.0)
    assert valid.sum() == valid.numel() - 1 and not valid[0, 0]


@pytest.mark.parametrize("k", [0, -1, -(2**40)])
@pytest.mark.parametrize("op", ["worst_k_mean", "worst_k_mean_backward"])
def test_k_must_be_at_least_one(op, k):
    raises(ValueError, lambda: call(op, k=k), "k", contains=[">= 1", f"got {k}"])
    if op == "worst_k_mean":
        raises(ValueError, lambda: ops.worst_k_mean(*good_args(op)[:2], k), "k",
               contains=[">= 1"])


@pytest.mark.parametrize("height,width", [(0, 5), (6, 0), (-1, 5), (6, -3), (0, 0)])
def test_height_and_width_at_least_one(height, width):
    fn = lambda: call("splat_depth", height=height, width=width)  # noqa: E731
    raises(ValueError, fn, "height", "width", contains=[">= 1", f"got {height} x {width}"])
    args = good_args("splat_depth")[:4]
    raises(ValueError, lambda: ops.splat_depth(*args, height, width), "height", "width")


@pytest.mark.parametrize("value", [2.5, 3.0, True, None, "4", torch.tensor(2.5)],
                         ids=["2.5", "3.0", "True", "None", "str", "float_tensor"])
def test_int_arguments_of_the_wrappers_are_ints(value):
    """``int(2.5)`` would silently truncate: float, bool, str and None are refused by name."""
    err, count = good_args("worst_k_mean")[:2]
    raises(TypeError, lambda: ops.worst_k_mean(err, count, value), "k", contains=["an int"])
    args = good_args("splat_depth")[:4]
    raises(TypeError, lambda: ops.splat_depth(*args, value, 5), "height", contains=["an int"])
    raises(TypeError, lambda: ops.splat_depth(*args, 6, value), "width", contains=["an int"])


def test_int_like_arguments_are_accepted():
    err, count = good_args("worst_k_mean")[:2]
    want = ops.worst_k_mean(err, count, 2)
    for k in (np.int64(2), np.int32(2), torch.tensor(2)):
        assert torch.equal(ops.worst_k_mean(err, count, k), want)
    args = good_args("splat_depth")[:4]
    want = ops.splat_depth(*args, 6, 5)
    got = ops.splat_depth(*args, np.int64(6), torch.tensor(5))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    raises(ValueError, lambda: ops.worst_k_mean(err, count, 10**30), "k", contains=["64-bit"])
    # a k larger than the number of views averages all of them
    assert torch.equal(ops.worst_k_mean(err, count, 2**62), ops.worst_k_mean(err, count, 4))


@pytest.mark.parametrize("value", [None, "0.1", True, torch.zeros(2), [0.1]],
                         ids=["None", "str", "True", "2-element-tensor", "list"])
def test_float_arguments_of_the_wrappers_are_numbers(value):
    ext = make_input("motion_smoothness", "extrinsics")
    raises(TypeError, lambda: ops.motion_smoothness(ext, value), "eps", contains=["a number"])
    raises(TypeError, lambda: vggrpo.camera_motion_reward(ext, eps=value), "eps")
    pm = make_input("static_points", "pointmaps")
    raises(TypeError, lambda: ops.static_points(pm, None, value), "flow_threshold")
    args = good_args("reprojection_errors")[:5]
    raises(TypeError, lambda: ops.reprojection_errors(*args, value), "flow_threshold")


def test_float_like_arguments_are_accepted():
    ext = make_input("motion_smoothness", "extrinsics")
    want = ops.motion_smoothness(ext, 0.5)
    for eps in (np.float64(0.5), torch.tensor(0.5), 1 / 2):
        got = ops.motion_smoothness(ext, eps)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------------------------
# Wrappers (vggrpo.ops) and rewards: argument names, non-tensors, dtypes
# ------------------------------------------------------------------------------------------------

WRAPPERS = {name: getattr(ops, name) for name in ops.__all__}


def wrapper_args(name, **override):
    """Keyword arguments of a vggrpo.ops wrapper, taken from the raw op of the same name."""
    raw = dict(zip([a.name for a in schema_args(name)], good_args(name)))
    params = inspect.signature(WRAPPERS[name]).parameters
    kw = {p: raw[p] for p in params if p in raw}
    kw.update(override)
    return kw


def test_every_public_function_is_covered():
    assert set(WRAPPERS) == {"so3_log", "motion_smoothness", "static_points", "splat_depth",
                             "view_depth_error", "worst_k_mean", "reprojection_errors"}
    for name in WRAPPERS:
        assert name in OPS and name + "_backward" in OPS or name == "static_points"


WRAPPER_TENSOR_CASES = [
    (name, p) for name in WRAPPERS for p in inspect.signature(WRAPPERS[name]).parameters
    if p in SPECS[name]
]


def geometry_reward_args():
    names = ("pointmaps", "depths", "extrinsics", "intrinsics", "scene_flow")
    return dict(zip(names, good_args("reprojection_errors")[:5]))


REWARD_TENSOR_CASES = [("camera_motion_reward", "extrinsics")] + [
    ("geometry_reprojection_reward", a) for a in geometry_reward_args()
]


def call_public(fn_name, **override):
    if fn_name == "camera_motion_reward":
        kw = {"extrinsics": make_input("motion_smoothness", "extrinsics")}
        kw.update(override)
        return vggrpo.camera_motion_reward(**kw)
    if fn_name == "geometry_reprojection_reward":
        kw = geometry_reward_args()
        kw.update(override)
        return vggrpo.geometry_reprojection_reward(**kw)
    return WRAPPERS[fn_name](**wrapper_args(fn_name, **override))


def _is_optional_param(fn_name, p):
    if fn_name == "geometry_reprojection_reward":
        return p == "scene_flow"
    if fn_name == "camera_motion_reward":
        return False
    return any(a.name == p and is_optional(a) for a in schema_args(fn_name))


@pytest.mark.parametrize("bad", [None, "list", "numpy", 1.0],
                         ids=["None", "list", "numpy", "float"])
@pytest.mark.parametrize("fn_name,arg", WRAPPER_TENSOR_CASES + REWARD_TENSOR_CASES)
def test_public_functions_name_a_non_tensor(fn_name, arg, bad):
    if bad is None and _is_optional_param(fn_name, arg):
        outs = outputs(call_public(fn_name, **{arg: None}))  # optional: None means "not given"
        assert all(torch.isfinite(o).all() for o in outs if o.is_floating_point())
        return
    good = (make_input(fn_name, arg) if fn_name in SPECS else
            (make_input("motion_smoothness", arg) if arg == "extrinsics" and fn_name ==
             "camera_motion_reward" else geometry_reward_args()[arg]))
    value = {"list": good.tolist(), "numpy": good.numpy()}.get(bad, bad)
    msg = raises(TypeError, lambda: call_public(fn_name, **{arg: value}), arg,
                 contains=["must be a", type(value).__name__ if value is not None else "None"])
    assert "tensor" in msg.lower()


@pytest.mark.parametrize("dtype", BAD_FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    "fn_name,arg",
    [c for c in WRAPPER_TENSOR_CASES if SPECS[c[0]][c[1]][1] == "float"] + REWARD_TENSOR_CASES,
)
def test_public_functions_name_a_non_float_dtype(fn_name, arg, dtype):
    bad = torch.ones(call_shape(fn_name, arg), dtype=dtype)
    raises(TypeError, lambda: call_public(fn_name, **{arg: bad}), arg,
           contains=["torch.float32 or torch.float64", f"got {dtype}"])


def call_shape(fn_name, arg):
    if fn_name == "camera_motion_reward":
        return shape_of(SPECS["motion_smoothness"][arg][0])
    if fn_name == "geometry_reprojection_reward":
        return shape_of(SPECS["reprojection_errors"][arg][0])
    return shape_of(SPECS[fn_name][arg][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.uint8,
                                   torch.int64], ids=str)
def test_wrapper_valid_must_be_bool_and_is_reported_as_given(dtype):
    bad = make_input("splat_depth", "valid").to(dtype)
    raises(TypeError, lambda: call_public("splat_depth", valid=bad), "valid",
           contains=["to be torch.bool", f"got {dtype}"])


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.float64, torch.bool], ids=str)
def test_wrapper_count_must_be_int64(dtype):
    bad = make_input("worst_k_mean", "count").to(dtype)
    raises(TypeError, lambda: call_public("worst_k_mean", count=bad), "count",
           contains=["to be torch.int64", f"got {dtype}"])


@pytest.mark.parametrize("T", [0, 1, 2])
def test_motion_needs_three_frames(T):
    E = torch.eye(4)[:3].expand(2, T, 3, 4)
    for fn in (ops.motion_smoothness, vggrpo.camera_motion_reward,
               lambda e: RAW.motion_smoothness_backward(torch.zeros(2), torch.zeros(2), e, 1e-8)):
        raises(ValueError, lambda: fn(E), "extrinsics", contains=["T >= 3", f"[2, {T}, 3, 4]"])
    assert vggrpo.camera_motion_reward(torch.eye(4)[:3].expand(2, 3, 3, 4)).shape == (2,)


@pytest.mark.parametrize("shape", [(5, 3, 4), (2, 5, 3, 4, 1), (2, 5, 4), (2, 5, 12)])
def test_camera_motion_reward_wrong_rank(shape):
    raises(ValueError, lambda: vggrpo.camera_motion_reward(torch.zeros(shape)), "extrinsics",
           contains=["[B, T, 3|4, 4]", str(list(shape))])


@pytest.mark.parametrize(
    "arg,shape,contains",
    [
        ("pointmaps", (2, 4, 6, 5), ["(5 dims)"]),
        ("pointmaps", (2, 4, 6, 5, 2), ["[B, T, H, W, 3]"]),
        ("depths", (2, 4, 6, 7), ["W=5", "[2, 4, 6, 7]"]),
        ("depths", (2, 4, 9, 5), ["H=6"]),
        ("depths", (2, 3, 6, 5), ["T=4"]),
        ("depths", (3, 4, 6, 5), ["B=2"]),
        ("depths", (2, 4, 6, 5, 1), ["(4 dims)"]),
        ("extrinsics", (2, 3, 3, 4), ["T=4"]),
        ("extrinsics", (1, 4, 3, 4), ["B=2"]),
        ("extrinsics", (2, 4, 3, 3), ["[B, T, 3|4, 4]"]),
        ("intrinsics", (2, 5, 3, 3), ["T=4"]),
        ("intrinsics", (2, 4, 3), ["(4 dims)"]),
        ("intrinsics", (2, 4, 2, 3), ["[B, T, 3, 3]"]),
        ("scene_flow", (2, 4, 6, 4, 3), ["W=5"]),
        ("scene_flow", (2, 4, 6, 5), ["(5 dims)"]),
    ],
)
def test_geometry_reward_shape_errors(arg, shape, contains):
    bad = torch.zeros(shape)
    raises(ValueError, lambda: call_public("geometry_reprojection_reward", **{arg: bad}), arg,
           contains=contains)


@pytest.mark.parametrize("topk", [0, -1, True, False, 2.5, 3.0, "3", None])
def test_geometry_reward_topk(topk):
    raises(ValueError, lambda: call_public("geometry_reprojection_reward", topk=topk), "topk",
           contains=["an int >= 1", repr(topk)])


def test_geometry_reward_topk_above_the_views_averages_all(scene):
    s, noisy = scene
    depths = noisy.clone()
    depths[0, 1] = NAN  # a view left out
    r, (err, count) = vggrpo.geometry_reprojection_reward(
        s.pointmaps, depths, s.extrinsics, s.intrinsics, topk=100, return_terms=True)
    assert count[0, 1] == 0 and (count[0, [0, 2, 3]] > 0).all() and (count[1] > 0).all()
    want = -torch.stack([err[b][count[b] > 0].double().mean() for b in range(2)]).float()
    torch.testing.assert_close(r, want)
    assert (r < 0).all()


# ------------------------------------------------------------------------------------------------
# group_advantages
# ------------------------------------------------------------------------------------------------


def _r(*values, dtype=F32):
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("group_size", [1, 0, -2, True, 2.0, "2", None])
def test_group_size(group_size):
    raises(ValueError, lambda: vggrpo.group_advantages({"a": _r(1, 2, 3, 4)}, group_size),
           "group_size", contains=["int >= 2", repr(group_size)])


def test_group_advantages_errors():
    ga = vggrpo.group_advantages
    msg = raises(ValueError, lambda: ga({"a": _r(1, 2, 3, 4, 5)}, 2))
    assert "(5)" in msg and "group_size (2)" in msg
    msg = raises(ValueError, lambda: ga({"a": torch.zeros(0)}, 2))
    assert "(0)" in msg and "positive multiple" in msg
    msg = raises(ValueError, lambda: ga({"motion": _r(1, 2, 3, 4), "geo": _r(1, 2)}, 2))
    assert "'geo' has 2 samples" in msg and "'motion' has 4" in msg
    msg = raises(ValueError, lambda: ga({}, 2))
    assert "non-empty mapping" in msg
    msg = raises(ValueError, lambda: ga([_r(1, 2)], 2))
    assert "mapping" in msg
    msg = raises(ValueError, lambda: ga({"geo": torch.zeros(2, 4)}, 2))
    assert "'geo'" in msg and "[N]" in msg and "[2, 4]" in msg
    msg = raises(ValueError, lambda: ga({"geo": torch.tensor(1.0)}, 2))
    assert "'geo'" in msg and "[]" in msg
    msg = raises(TypeError, lambda: ga({"geo": [1.0, 2.0]}, 2))
    assert "'geo'" in msg and "list" in msg
    msg = raises(TypeError, lambda: ga({"geo": np.ones(4)}, 2))
    assert "'geo'" in msg and "ndarray" in msg
    for dtype in (torch.bool, torch.complex64):
        msg = raises(TypeError, lambda: ga({"geo": torch.ones(4, dtype=dtype)}, 2))
        assert "'geo'" in msg and str(dtype) in msg
    for eps in (-1e-8, NAN, INF, None, "1e-8"):
        raises(ValueError, lambda: ga({"a": _r(1, 2, 3, 4)}, 2, eps=eps), "eps")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_group_advantages_non_finite_reward_is_named(bad):
    rewards = {"motion": _r(1, 2, 3, 4), "geo": _r(1, bad, 3, 4)}
    msg = raises(ValueError, lambda: vggrpo.group_advantages(rewards, 2))
    assert "'geo'" in msg and "1 non-finite" in msg and "'motion'" not in msg


@pytest.mark.parametrize("value", [0.1, 0.3, 0.7, 1 / 3, -0.123456, 1e6 + 0.1])
@pytest.mark.parametrize("group_size", [2, 3, 7, 8, 12, 16])
def test_group_of_equal_rewards_gets_exactly_zero(value, group_size):
    """A float32 mean of equal values can be an ulp off; over an equally tiny std that was an
    advantage of about +-0.4..0.9 for a group with no signal (fixed in rewards.py)."""
    r = torch.full((2 * group_size,), value, dtype=F32)
    r[group_size:] = value * 2 + 1  # a second, also constant, group
    for eps in (1e-8, 0.0):
        adv = vggrpo.group_advantages({"a": r, "b": r.double()}, group_size, eps=eps)
        assert adv.dtype == F64 and torch.equal(adv, torch.zeros_like(adv)), adv
        adv = vggrpo.group_advantages({"a": r}, group_size, eps=eps)
        assert adv.dtype == F32 and torch.equal(adv, torch.zeros_like(adv)), adv


def test_group_advantages_nearly_equal_rewards_are_still_normalised():
    base = 0.1
    nxt = float(np.nextafter(np.float32(base), np.float32(1)))
    r = torch.tensor([base, base, base, nxt], dtype=F32)
    adv = vggrpo.group_advantages({"a": r}, 4, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1, -1, -1, 3], dtype=F32) / math.sqrt(3))


# ------------------------------------------------------------------------------------------------
# Forged inputs to the backward ops
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene():
    s = make_scene(batch=2, frames=4, height=12, width=16, static_objects=2, seed=5)
    gen = torch.Generator().manual_seed(0)
    noisy = s.depths * (1 + 0.03 * torch.randn(s.depths.shape, generator=gen))
    return s, noisy


def _forge(winner, forged_values):
    """Puts forged indices on pixels that had a real winner; returns (forged, same with -1)."""
    flat = winner.reshape(-1)
    hits = torch.nonzero(flat >= 0).reshape(-1)
    picks = hits[torch.linspace(0, hits.numel() - 1, len(forged_values)).long()]
    forged, cleared = flat.clone(), flat.clone()
    forged[picks] = torch.tensor(forged_values, dtype=torch.int64)
    cleared[picks] = -1
    return forged.reshape(winner.shape), cleared.reshape(winner.shape)


def _forged_values(n):
    return [n, n + 1, n + 12345, 2**32, 2**40, 2**63 - 1, -2, -7, -(2**62), -(2**63)]


def test_splat_depth_backward_ignores_out_of_range_winners(scene):
    s, _ = scene
    points, valid = ops.static_points(s.pointmaps)
    depth, winner = ops.splat_depth(points, valid, s.extrinsics, s.intrinsics, s.height, s.width)
    n = points.shape[1]
    grad = torch.randn(depth.shape, generator=torch.Generator().manual_seed(1))
    forged, cleared = _forge(winner, _forged_values(n))
    got = RAW.splat_depth_backward(grad, forged, points, s.extrinsics, s.intrinsics)
    want = RAW.splat_depth_backward(grad, cleared, points, s.extrinsics, s.intrinsics)
    real = RAW.splat_depth_backward(grad, winner, points, s.extrinsics, s.intrinsics)
    for g, w, r in zip(got, want, real):
        assert torch.isfinite(g).all()
        assert torch.equal(g, w)
    assert not torch.equal(got[0], real[0])  # the forged pixels did carry gradient before


def test_reprojection_errors_backward_ignores_out_of_range_winners(scene):
    s, noisy = scene
    out = call("reprojection_errors", pointmaps=s.pointmaps, depths=noisy,
               extrinsics=s.extrinsics, intrinsics=s.intrinsics, scene_flow=None)
    count, winner, valid = out[1], out[2], out[3]
    n = s.frames * s.height * s.width
    forged, cleared = _forge(winner, _forged_values(n))
    grad_err = torch.randn(count.shape, generator=torch.Generator().manual_seed(2))
    common = dict(grad_err=grad_err, count=count, valid=valid, pointmaps=s.pointmaps, depths=noisy,
                  extrinsics=s.extrinsics, intrinsics=s.intrinsics)
    got = outputs(call("reprojection_errors_backward", winner=forged, **common))
    want = outputs(call("reprojection_errors_backward", winner=cleared, **common))
    real = outputs(call("reprojection_errors_backward", winner=winner, **common))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert torch.equal(g, w)
    assert not torch.equal(got[0], real[0])


def test_forged_counts_are_harmless():
    """A count of 0 or below means "no pixel": zero gradient, never a division by it."""
    grad_err, rendered, depths, count = (make_input("view_depth_error_backward", a)
                                         for a in ("grad_err", "rendered", "depths", "count"))
    rendered, depths = rendered.abs() + 0.1, depths.abs() + 0.1
    for c in (0, -1, -(2**62)):
        forged = count.clone()
        forged[0, 1] = c
        outs = outputs(call("view_depth_error_backward", grad_err=grad_err, rendered=rendered,
                            depths=depths, count=forged))
        for o in outs:
            assert torch.isfinite(o).all() and (o[0, 1] == 0).all()
        assert (outs[0][0, 0] != 0).any()
    err = make_input("worst_k_mean", "err")
    for c in (0, -5):
        forged = torch.full((2, 4), c, dtype=torch.int64)
        assert torch.equal(ops.worst_k_mean(err, forged), torch.zeros(2))
        g = RAW.worst_k_mean_backward(torch.ones(2), err, forged, 3)
        assert torch.equal(g, torch.zeros_like(g))


# ------------------------------------------------------------------------------------------------
# Non-contiguous inputs: accepted, same values and gradients as contiguous copies
# ------------------------------------------------------------------------------------------------


def _same_values_and_grads(fn, noncontig, diff_idx):
    """fn(*inputs) on the non-contiguous inputs and on contiguous copies: outputs equal bitwise,
    and the gradients (of a fixed random weighting of the float outputs) too."""
    assert any(not t.is_contiguous() for t in noncontig if t is not None)
    contig = [t.contiguous() if t is not None else None for t in noncontig]
    results = []
    for inputs in (noncontig, contig):
        leaves = [t.detach().requires_grad_(True) if i in diff_idx else t
                  for i, t in enumerate(inputs)]
        outs = outputs(fn(*leaves))
        gen = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                   for o in outs if o.is_floating_point())
        grads = torch.autograd.grad(loss, [leaves[i] for i in diff_idx], allow_unused=True)
        results.append((outs, grads))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        assert torch.equal(a, b)
    for a, b in zip(g1, g2):
        assert a is not None and torch.equal(a, b)
        assert torch.count_nonzero(a) > 0


def test_non_contiguous_so3_and_motion(scene):
    s, _ = scene
    R = s.extrinsics[..., :3, :3].transpose(-1, -2)  # R_wc, a transposed view
    _same_values_and_grads(ops.so3_log, [R], [0])
    E44 = torch.zeros(2, 4, 4, 4)
    E44[..., :3, :] = s.extrinsics
    E44[..., 3, 3] = 1
    jerky = E44.clone()
    jerky[:, 2, :3, 3] += 0.1
    _same_values_and_grads(lambda e: ops.motion_smoothness(e), [jerky[..., :3, :]], [0])
    storage = jerky.permute(1, 0, 3, 2).contiguous()  # [T, B, 4, 4] with rows and columns swapped
    _same_values_and_grads(vggrpo.camera_motion_reward, [storage.permute(1, 0, 3, 2)], [0])
    _same_values_and_grads(vggrpo.camera_motion_reward, [torch.cat([jerky, jerky], 1)[:, ::2]], [0])


def test_non_contiguous_geometry_ops(scene):
    s, noisy = scene
    pm = s.pointmaps.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2)  # channels-first
    full = torch.zeros(2, 4, 12, 32, 3)
    full[:, :, :, 1::2, 0] = 1.0  # the skipped columns: all dynamic
    full[:, :, 3:6, 0::2, 1] = 1.0  # the kept columns: rows 3..5 dynamic
    flow = full[:, :, :, ::2]  # every other column
    _same_values_and_grads(ops.static_points, [pm, flow], [0])
    assert ops.static_points(pm, flow)[1].reshape(2, 4, 12, 16)[:, :, 3:6].sum() == 0
    assert ops.static_points(pm, flow)[1].reshape(2, 4, 12, 16)[:, :, 6:].all()

    points, valid = ops.static_points(s.pointmaps)
    pts_t = points.transpose(1, 2).contiguous().transpose(1, 2)
    valid_strided = torch.stack([valid, valid], -1)[..., 0]
    E = torch.cat([s.extrinsics, torch.zeros(2, 4, 1, 4)], 2)[:, :, :3]
    K = s.intrinsics[:, :1].expand(2, 4, 3, 3)  # one camera model for all frames, stride 0
    K_want = s.intrinsics[:, :1].repeat(1, 4, 1, 1)
    _same_values_and_grads(lambda p, v, e, k: ops.splat_depth(p, v, e, k, 12, 16),
                           [pts_t, valid_strided, E, K], [0, 2])
    _same_values_and_grads(lambda p, v, e, k: ops.splat_depth(p, v, e, k, 12, 16),
                           [pts_t, valid_strided, E, K_want], [0, 2])

    rendered, _ = ops.splat_depth(points, valid, s.extrinsics, s.intrinsics, 12, 16)
    r_t = rendered.transpose(2, 3).contiguous().transpose(2, 3)
    d_s = torch.stack([noisy, -noisy], -1)[..., 0]  # every other element of a larger tensor
    _same_values_and_grads(ops.view_depth_error, [r_t, d_s], [0, 1])

    err = torch.rand(4, 2).t()
    count = torch.tensor([[5, 0, 3, 1, 9, 9, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2]])[:, ::2]
    _same_values_and_grads(lambda e, c: ops.worst_k_mean(e, c, 2), [err, count], [0])

    E44_t = _as44(s.extrinsics).transpose(-1, -2).contiguous().transpose(-1, -2)
    for extr, intr in ((E, K), (E44_t, s.intrinsics)):
        _same_values_and_grads(
            lambda p, d, e, k, f: ops.reprojection_errors(p, d, e, k, f),
            [pm, torch.stack([noisy, noisy], -1)[..., 1], extr, intr, flow],
            [0, 1, 2],
        )
    _same_values_and_grads(
        lambda p, d, e, k, f: vggrpo.geometry_reprojection_reward(p, d, e, k, f, topk=2),
        [pm, torch.stack([noisy, noisy], -1)[..., 1], E, K, flow],
        [0, 1, 2],
    )


def _as44(E):
    out = torch.zeros(*E.shape[:-2], 4, 4, dtype=E.dtype)
    out[..., :3, :] = E
    out[..., 3, 3] = 1
    return out


# ------------------------------------------------------------------------------------------------
# Mixed and 16-bit floats through the wrappers
# ------------------------------------------------------------------------------------------------


def _equal_outputs(got, want, dtype):
    got, want = outputs(got), outputs(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.is_floating_point():
            assert g.dtype == dtype, (g.dtype, dtype)
        assert torch.equal(g, w)


def test_mixed_float32_float64_is_computed_in_float64(scene):
    s, noisy = scene
    pm, E, K, flow = s.pointmaps, s.extrinsics, s.intrinsics, s.scene_flow
    d = lambda t: t.double()  # noqa: E731
    _equal_outputs(ops.static_points(pm, d(flow)), ops.static_points(d(pm), d(flow)), F64)
    points, valid = ops.static_points(pm)
    _equal_outputs(ops.splat_depth(points, valid, d(E), K, 12, 16),
                   ops.splat_depth(d(points), valid, d(E), d(K), 12, 16), F64)
    _equal_outputs(ops.splat_depth(points, valid, E, d(K), 12, 16),
                   ops.splat_depth(d(points), valid, d(E), d(K), 12, 16), F64)
    rendered, _ = ops.splat_depth(points, valid, E, K, 12, 16)
    _equal_outputs(ops.view_depth_error(rendered, d(noisy)),
                   ops.view_depth_error(d(rendered), d(noisy)), F64)
    _equal_outputs(ops.reprojection_errors(pm, d(noisy), E, K, flow),
                   ops.reprojection_errors(d(pm), d(noisy), d(E), d(K), d(flow)), F64)
    _equal_outputs(ops.reprojection_errors(pm, noisy, E, K, d(flow)),
                   ops.reprojection_errors(d(pm), d(noisy), d(E), d(K), d(flow)), F64)
    _equal_outputs(vggrpo.geometry_reprojection_reward(pm, noisy, d(E), K),
                   vggrpo.geometry_reprojection_reward(d(pm), d(noisy), d(E), d(K)), F64)
    # gradients come back in each input's own dtype
    pm_l, d_l = pm.clone().requires_grad_(True), d(noisy).requires_grad_(True)
    vggrpo.geometry_reprojection_reward(pm_l, d_l, E, K).sum().backward()
    assert pm_l.grad.dtype == F32 and d_l.grad.dtype == F64
    assert torch.isfinite(pm_l.grad).all() and pm_l.grad.abs().sum() > 0


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_16_bit_floats_are_computed_in_float32(scene, half):
    s, noisy = scene
    h = lambda t: t.to(half)  # noqa: E731
    f = lambda t: t.to(half).float()  # noqa: E731  (the same rounded values, in float32)
    pm, E, K, flow = s.pointmaps, s.extrinsics, s.intrinsics, s.scene_flow
    _equal_outputs(ops.so3_log(h(E[..., :3])), ops.so3_log(f(E[..., :3])), F32)
    jerky = E.clone()
    jerky[:, 2, :, 3] += 0.2
    _equal_outputs(ops.motion_smoothness(h(jerky)), ops.motion_smoothness(f(jerky)), F32)
    _equal_outputs(vggrpo.camera_motion_reward(h(jerky)),
                   vggrpo.camera_motion_reward(f(jerky)), F32)
    _equal_outputs(ops.static_points(h(pm), h(flow)), ops.static_points(f(pm), f(flow)), F32)
    _equal_outputs(ops.static_points(h(pm), flow), ops.static_points(f(pm), flow), F32)
    points, valid = ops.static_points(pm)
    _equal_outputs(ops.splat_depth(h(points), valid, E, h(K), 12, 16),
                   ops.splat_depth(f(points), valid, E, f(K), 12, 16), F32)
    rendered, _ = ops.splat_depth(points, valid, E, K, 12, 16)
    _equal_outputs(ops.view_depth_error(h(rendered), h(noisy)),
                   ops.view_depth_error(f(rendered), f(noisy)), F32)
    err, count = ops.view_depth_error(rendered, noisy)
    _equal_outputs(ops.worst_k_mean(h(err), count), ops.worst_k_mean(f(err), count), F32)
    _equal_outputs(ops.reprojection_errors(h(pm), h(noisy), h(E), h(K)),
                   ops.reprojection_errors(f(pm), f(noisy), f(E), f(K)), F32)
    _equal_outputs(vggrpo.geometry_reprojection_reward(h(pm), noisy, E, K),
                   vggrpo.geometry_reprojection_reward(f(pm), noisy, E, K), F32)
    # 16-bit mixed with float64: float64 wins
    _equal_outputs(ops.view_depth_error(h(rendered), noisy.double()),
                   ops.view_depth_error(f(rendered).double(), noisy.double()), F64)
    # gradients reach the 16-bit leaves, finite and in their dtype
    leaf = h(pm).requires_grad_(True)
    vggrpo.geometry_reprojection_reward(leaf, noisy, E, K).sum().backward()
    assert leaf.grad.dtype == half and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# NaN / inf: those pixels are invalid, the reward stays finite
# ------------------------------------------------------------------------------------------------


def _geo_with_grads(pm, depths, E, K, flow=None, topk=3):
    pm, depths, E = (t.detach().clone().requires_grad_(True) for t in (pm, depths, E))
    r, (err, count) = vggrpo.geometry_reprojection_reward(pm, depths, E, K, flow, topk=topk,
                                                          return_terms=True)
    r.sum().backward()
    return r.detach(), err.detach(), count, pm.grad, depths.grad, E.grad


def _pixels(shape, every, offset):
    mask = torch.zeros(shape, dtype=torch.bool).reshape(-1)
    mask[offset::every] = True
    return mask.reshape(shape)


BAD_DEPTHS = [NAN, INF, -INF, 0.0, -1.5, -0.0, -1e-30]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_bad_depths_are_invalid_pixels(scene, dtype):
    s, noisy = scene
    s = s.to(dtype)
    noisy = noisy.to(dtype)
    bad = _pixels(noisy.shape, 7, 3)
    values = torch.tensor(BAD_DEPTHS, dtype=dtype).repeat(bad.sum() // len(BAD_DEPTHS) + 1)
    corrupted = noisy.clone()
    corrupted[bad] = values[: int(bad.sum())]
    zeroed = noisy.clone()
    zeroed[bad] = 0
    got = _geo_with_grads(s.pointmaps, corrupted, s.extrinsics, s.intrinsics)
    want = _geo_with_grads(s.pointmaps, zeroed, s.extrinsics, s.intrinsics)
    clean = _geo_with_grads(s.pointmaps, noisy, s.extrinsics, s.intrinsics)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        assert torch.equal(g, w)
    assert (got[2] < clean[2]).all()  # fewer pixels counted
    assert (got[4][bad] == 0).all() and got[4].abs().sum() > 0
    assert (got[0] < 0).all()


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_bad_points_are_like_dynamic_pixels(scene, dtype):
    """A pointmap pixel with a NaN/inf coordinate drops out exactly like a pixel that the scene
    flow marks dynamic; zero and negative coordinates are ordinary points."""
    s, noisy = scene
    s = s.to(dtype)
    noisy = noisy.to(dtype)
    shape = s.depths.shape
    bad = _pixels(shape, 5, 1)
    ordinary = _pixels(shape, 11, 4) & ~bad
    pm = s.pointmaps.clone()
    n_ordinary = int(ordinary.sum())
    odd_points = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -2.0, -3.0], [0.0, -0.5, 4.0]], dtype=dtype)
    pm[ordinary] = odd_points.repeat(n_ordinary // 3 + 1, 1)[:n_ordinary]
    corrupted = pm.clone()
    idx = torch.nonzero(bad)
    for j, (b, t, y, x) in enumerate(idx.tolist()):
        value = (NAN, INF, -INF)[j % 3]
        if j % 4 == 3:
            corrupted[b, t, y, x] = value  # all three coordinates
        else:
            corrupted[b, t, y, x, j % 3] = value  # one coordinate
    dynamic = torch.zeros_like(pm)
    dynamic[bad] = torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
    got = _geo_with_grads(corrupted, noisy, s.extrinsics, s.intrinsics)
    want = _geo_with_grads(pm, noisy, s.extrinsics, s.intrinsics, flow=dynamic)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.isfinite(g).all(), i
        assert torch.equal(g, w), i
    assert (got[3][bad] == 0).all() and got[3].abs().sum() > 0
    # a NaN or inf flow is a dynamic pixel as well
    flow_bad = torch.zeros_like(pm)
    flow_bad[bad] = torch.tensor([NAN, INF, -INF], dtype=dtype)
    flow_bad[bad & _pixels(shape, 2, 0)] = torch.tensor([0.0, NAN, 0.0], dtype=dtype)
    got_flow = _geo_with_grads(pm, noisy, s.extrinsics, s.intrinsics, flow=flow_bad)
    for g, w in zip(got_flow, want):
        assert torch.equal(g, w)
    # the ops on their own: not valid, zero in the cloud, never rendered
    points, valid = ops.static_points(corrupted)
    assert not valid.reshape(shape)[bad].any() and valid.reshape(shape)[~bad].all()
    assert torch.isfinite(points).all()
    depth, winner = ops.splat_depth(corrupted.reshape(2, -1, 3), None, s.extrinsics, s.intrinsics,
                                    12, 16)
    assert torch.isfinite(depth).all()
    for b in range(2):
        bad_idx = torch.nonzero(bad[b].reshape(-1)).reshape(-1)
        assert not torch.isin(winner[b], bad_idx).any()


def test_a_view_with_all_depths_nan_is_left_out(scene):
    s, noisy = scene
    depths = noisy.clone()
    depths[0, 2] = NAN
    depths[1, 0] = -INF
    r, err, count, g_pm, g_d, g_E = _geo_with_grads(s.pointmaps, depths, s.extrinsics,
                                                    s.intrinsics, topk=2)
    assert count[0, 2] == 0 and count[1, 0] == 0 and (count[0, [0, 1, 3]] > 0).all()
    assert err[0, 2] == 0 and err[1, 0] == 0
    for b in range(2):
        others = err[b][count[b] > 0]
        torch.testing.assert_close(r[b], -others.topk(2).values.mean(), rtol=1e-6, atol=0)
    for g in (r, g_pm, g_d, g_E):
        assert torch.isfinite(g).all()
    assert (g_d[0, 2] == 0).all() and (g_d[1, 0] == 0).all()
    # the worst of the valid views is selected even though the left-out view's error would be 0
    assert (r < 0).all()


@pytest.mark.parametrize("what", ["nan_everything", "inf_points", "nan_depths", "no_depth"])
def test_nothing_valid_gives_zero_reward_and_zero_gradients(scene, what):
    s, noisy = scene
    pm, depths = s.pointmaps, noisy
    if what == "nan_everything":
        pm, depths = torch.full_like(pm, NAN), torch.full_like(depths, NAN)
    elif what == "inf_points":
        pm = torch.full_like(pm, INF)
    elif what == "nan_depths":
        depths = torch.full_like(depths, NAN)
    else:
        depths = -depths
    r, err, count, g_pm, g_d, g_E = _geo_with_grads(pm, depths, s.extrinsics, s.intrinsics)
    assert torch.equal(r, torch.zeros(2))
    assert torch.equal(count, torch.zeros(2, 4, dtype=torch.int64))
    for g in (err, g_pm, g_d, g_E):
        assert torch.equal(g, torch.zeros_like(g))


def test_nan_in_worst_k_err_ranks_first_and_is_not_hidden():
    """NaN errors cannot come out of the fused path (it only counts valid pixels), but a NaN
    passed to worst_k_mean directly is not silently dropped: it ranks first, as documented."""
    err = torch.tensor([[1.0, NAN, 3.0, 2.0]])
    count = torch.tensor([[1, 1, 1, 1]])
    assert torch.isnan(ops.worst_k_mean(err, count, 2)).all()
    count = torch.tensor([[1, 0, 1, 1]])  # a view with no count is left out, NaN or not
    assert torch.equal(ops.worst_k_mean(err, count, 2), torch.tensor([2.5]))


# ------------------------------------------------------------------------------------------------
# Empty batches
# ------------------------------------------------------------------------------------------------


def test_empty_batch_every_op_and_reward():
    z = torch.zeros
    assert ops.so3_log(z(0, 3, 3)).shape == (0, 3)
    e_t, e_r = ops.motion_smoothness(z(0, 5, 3, 4))
    assert e_t.shape == e_r.shape == (0,)
    points, valid = ops.static_points(z(0, 4, 6, 5, 3), z(0, 4, 6, 5, 3))
    assert points.shape == (0, 120, 3) and valid.shape == (0, 120) and valid.dtype == torch.bool
    depth, winner = ops.splat_depth(z(0, 7, 3), None, z(0, 4, 3, 4), z(0, 4, 3, 3), 6, 5)
    assert depth.shape == winner.shape == (0, 4, 6, 5) and winner.dtype == torch.int64
    err, count = ops.view_depth_error(z(0, 4, 6, 5), z(0, 4, 6, 5))
    assert err.shape == count.shape == (0, 4) and count.dtype == torch.int64
    assert ops.worst_k_mean(z(0, 4), torch.zeros(0, 4, dtype=torch.int64)).shape == (0,)
    err, count = ops.reprojection_errors(z(0, 4, 6, 5, 3), z(0, 4, 6, 5), z(0, 4, 3, 4),
                                         z(0, 4, 3, 3))
    assert err.shape == count.shape == (0, 4)

    E = z(0, 5, 4, 4, requires_grad=True)
    r = vggrpo.camera_motion_reward(E)
    assert r.shape == (0,) and r.dtype == F32
    r.sum().backward()
    assert E.grad.shape == (0, 5, 4, 4)
    leaves = [z(0, 4, 6, 5, 3, dtype=F64, requires_grad=True), z(0, 4, 6, 5, requires_grad=True),
              z(0, 4, 3, 4, requires_grad=True)]
    r, terms = vggrpo.geometry_reprojection_reward(*leaves, z(0, 4, 3, 3), return_terms=True)
    assert r.shape == (0,) and r.dtype == F64 and terms.view_counts.shape == (0, 4)
    r.sum().backward()
    assert [t.grad.shape for t in leaves] == [t.shape for t in leaves]
    # empty in another dimension: no point, no pixel, no view
    assert ops.splat_depth(z(2, 0, 3), None, z(2, 4, 3, 4), z(2, 4, 3, 3), 6, 5)[1].eq(-1).all()
    err, count = ops.reprojection_errors(z(2, 4, 0, 5, 3), z(2, 4, 0, 5), z(2, 4, 3, 4),
                                         z(2, 4, 3, 3))
    assert torch.equal(count, torch.zeros(2, 4, dtype=torch.int64))
    r = vggrpo.geometry_reprojection_reward(z(2, 0, 6, 5, 3), z(2, 0, 6, 5), z(2, 0, 3, 4),
                                            z(2, 0, 3, 3))
    assert torch.equal(r, torch.zeros(2))
    assert ops.worst_k_mean(z(3, 0), torch.zeros(3, 0, dtype=torch.int64)).eq(0).all()


def test_empty_batch_reference_twins_agree():
    z = torch.zeros
    pm, depths, E, K = z(0, 4, 6, 5, 3), z(0, 4, 6, 5), z(0, 4, 3, 4), z(0, 4, 3, 3)
    E5 = z(0, 5, 4, 4)
    pairs = [
        (reference.static_points(pm, pm, 0.1), ops.static_points(pm, pm, 0.1)),
        (reference.reprojection_errors(pm, depths, E, K),
         ops.reprojection_errors(pm, depths, E, K)),
        ([reference.geometry_reprojection_reward(pm, depths, E, K)],
         [vggrpo.geometry_reprojection_reward(pm, depths, E, K)]),
        ([reference.camera_motion_reward(E5)], [vggrpo.camera_motion_reward(E5)]),
    ]
    for theirs, ours in pairs:
        assert [(t.shape, t.dtype) for t in theirs] == [(t.shape, t.dtype) for t in ours]


# ------------------------------------------------------------------------------------------------
# No partial state after an error
# ------------------------------------------------------------------------------------------------


def test_an_error_leaves_nothing_behind(scene):
    s, noisy = scene
    args = (s.pointmaps, noisy, s.extrinsics, s.intrinsics, s.scene_flow)
    snapshot = [a.clone() for a in args]
    first = _geo_with_grads(*args)
    bad_calls = [
        lambda: vggrpo.geometry_reprojection_reward(s.pointmaps, noisy[:, :3], *args[2:]),
        lambda: vggrpo.geometry_reprojection_reward(*args, topk=0),
        lambda: vggrpo.geometry_reprojection_reward(*args, flow_threshold=NAN),
        lambda: vggrpo.geometry_reprojection_reward(s.pointmaps.long(), *args[1:]),
        lambda: ops.splat_depth(s.pointmaps.reshape(2, -1, 3), None, s.extrinsics,
                                s.intrinsics[:, :3], 12, 16),
        lambda: RAW.reprojection_errors_backward(
            torch.ones(2, 4), torch.ones(2, 4, dtype=torch.int32),
            torch.zeros(2, 4, 12, 16, dtype=torch.int64),
            torch.ones(2, 4, 12, 16, dtype=torch.bool), *args[:4]),
    ]
    for bad in bad_calls:
        # a failing call inside a graph that requires grad, then the same good call again
        pm = s.pointmaps.clone().requires_grad_(True)
        with pytest.raises((ValueError, TypeError)):
            bad()
        with pytest.raises(ValueError):
            vggrpo.geometry_reprojection_reward(pm, noisy[..., :-1], *args[2:])
        again = _geo_with_grads(*args)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    for a, b in zip(args, snapshot):
        assert torch.equal(a, b)  # inputs untouched
    # the motion path too
    E = s.extrinsics
    want = vggrpo.camera_motion_reward(E)
    with pytest.raises(ValueError):
        vggrpo.camera_motion_reward(E[:, :2])
    assert torch.equal(vggrpo.camera_motion_reward(E), want)
