"""The op tests of tests/ on a variant build of vggrpo._C, where the installed one cannot show it.

    python csrc/tests/torch_variant.py emulated [pytest args...]   # make cuda-emulated
    python csrc/tests/torch_variant.py cuda [pytest args...]       # make cuda-build

``emulated``: every op call takes the glue's CUDA branch (csrc/torch/ops.cpp built with
VGGRPO_WITH_CUDA and VGGRPO_EMULATED_CUDA), and the CUDA kernels are csrc/kernels/*.cu compiled
against the CPU emulation of the CUDA runtime in csrc/tests/cuda_emu/. So the code a GPU run would
take, from the schema through the glue's argument passing, scratch buffers and deterministic
switch to the kernels, is checked against the plain-PyTorch reference, gradcheck and opcheck,
minus what the emulation cannot show (docs/ops.md). Built in build/cuda_emu_torch.

``cuda``: the real CUDA build, exactly as ``FORCE_CUDA=1 pip install`` makes it (setup.py, nvcc,
the real CUDA glue and its CUDA-key registrations), against the torch of the interpreter that runs
this script, which must be a CUDA build (its wheel imports and runs on a machine without a GPU).
`make cuda-build` runs it with the GPU machine's torch, so a compile or link error in the CUDA
glue, or a CUDA registration that does not load, shows on CI and not in the first minutes of a
GPU session. Where a GPU is present tests/test_cuda.py runs too; elsewhere it skips. Built in
build/cuda_torch; CUDA_HOME is taken from the environment, else from the nvcc on PATH.

In both, the installed vggrpo._C is never touched: the variant is put in sys.modules before
vggrpo is imported, in a fresh process. Exit status: pytest's, except that "no tests ran" (5) is
a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "csrc" / "tests" / "cuda_emu"
BUILD = {"emulated": ROOT / "build" / "cuda_emu_torch", "cuda": ROOT / "build" / "cuda_torch"}

# The tests that drive the ops (numerics, gradients, opcheck, errors); the model-level tests only
# add time here.
OP_TEST_FILES = [
    "tests/test_so3.py",
    "tests/test_motion.py",
    "tests/test_geometry_ops.py",
    "tests/test_reference.py",
    "tests/test_rewards.py",
    "tests/test_errors.py",
]
TEST_FILES = {
    "emulated": OP_TEST_FILES,
    # test_library: the registrations (CUDA key from register_cuda.cpp), opcheck of every op,
    # torch.compile; test_cuda: the GPU parity tests, which run only where a GPU is.
    "cuda": OP_TEST_FILES + ["tests/test_library.py", "tests/test_cuda.py"],
}


def build_emulated():
    """Compiles the emulated variant (cached by ninja) and returns its module."""
    import torch
    from torch.utils.cpp_extension import load

    build_dir = BUILD["emulated"]
    build_dir.mkdir(parents=True, exist_ok=True)
    gen = build_dir / "kernels"
    gen.mkdir(exist_ok=True)
    emu_sources = []
    for cu in sorted((ROOT / "csrc" / "kernels").glob("*.cu")):
        out = gen / (cu.stem + "_emulated.cpp")
        subprocess.run(
            [sys.executable, str(EMU / "rewrite_launches.py"), str(cu), str(out)], check=True
        )
        emu_sources.append(str(out))
    csrc = ROOT / "csrc"
    # The glue as setup.py builds it, minus the CUDA-key registrations (no CUDA tensors here).
    sources = [
        str(p)
        for p in sorted((csrc / "torch").glob("*.cpp"))
        if p.name not in ("register_cuda.cpp", "no_cuda.cpp")
    ]
    sources += [str(p) for p in sorted((csrc / "kernels").glob("*_cpu.cpp"))]
    sources += emu_sources
    flags = [
        "-O2",
        "-std=c++17",
        "-fopenmp",
        "-ffp-contract=off",
        "-DVGGRPO_WITH_CUDA",
        "-DVGGRPO_EMULATED_CUDA",
        # The emulator switches fibers at every barrier (a syscall each, in swapcontext): with the
        # real 1024-thread per-view blocks this run took over 10 min instead of 2 (measured on the
        # 2-core CI machine, then stopped). Their code is the same for any
        # power-of-two block size; ctest test_cuda_emulated runs them at 1024.
        "-DVGGRPO_CUDA_VIEW_THREADS=256",
        # Escaped for the ninja file that load() writes (setup.py needs no escaping).
        f'-DVGGRPO_TORCH_VERSION=\\"{torch.__version__}\\"',
    ]
    return load(
        name="_C",
        sources=sources,
        # The emulation first: <cuda_runtime.h> must never resolve to a real toolkit here.
        extra_include_paths=[str(EMU), str(csrc / "include"), str(csrc / "kernels"),
                             str(csrc / "torch")],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )


def cuda_home() -> str:
    """The CUDA toolkit to build with: $CUDA_HOME, else the one the nvcc on PATH belongs to."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc may be a wrapper script outside the toolkit (as /usr/local/bin/nvcc here).
        candidates.append(Path(os.path.realpath(nvcc)).parents[1])
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    sys.exit("torch_variant cuda: no CUDA toolkit found (no nvcc on PATH with include/"
             "cuda_runtime.h beside it, no /usr/local/cuda); set CUDA_HOME")


def build_cuda() -> Path:
    """Runs setup.py's own build with FORCE_CUDA=1 into build/cuda_torch; returns the library."""
    import torch

    if torch.version.cuda is None:
        sys.exit(f"torch_variant cuda: this interpreter's torch {torch.__version__} is a CPU "
                 "build; run it with a CUDA build of torch (make cuda-build installs one)")
    out = BUILD["cuda"]
    env = dict(os.environ, FORCE_CUDA="1", CUDA_HOME=cuda_home())
    env.pop("VGGRPO_NO_CUDA", None)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--build-lib", str(out / "lib"),
         "--build-temp", str(out / "tmp")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        # ninja prints every command line: the error is at the end.
        sys.stderr.write(done.stdout[-20000:] + done.stderr[-20000:])
        sys.exit(f"torch_variant cuda: the CUDA build failed (exit {done.returncode})")
    (lib,) = (out / "lib" / "vggrpo").glob("_C.*.so")
    print(f"built the CUDA extension with CUDA_HOME={env['CUDA_HOME']}, TORCH_CUDA_ARCH_LIST="
          f"{env.get('TORCH_CUDA_ARCH_LIST', 'setup.py default')} in "
          f"{time.monotonic() - start:.0f} s: {lib}", flush=True)
    return lib


def load_cuda(lib: Path):
    import torch  # noqa: F401  (the extension links against torch's libraries)

    spec = importlib.util.spec_from_file_location("vggrpo._C", lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BUILD:
        print(f"usage: {Path(__file__).name} {{{'|'.join(BUILD)}}} [pytest args...]",
              file=sys.stderr)
        return 2
    variant, pytest_args = argv[0], argv[1:]
    if os.environ.get("VGGRPO_VARIANT_CHILD") != "1":
        # Build here (the compile's output stays readable), run pytest in a fresh process that
        # loads the variant before vggrpo.
        os.environ.setdefault("MAX_JOBS", "2")
        lib = build_emulated() if variant == "emulated" else build_cuda()
        env = dict(os.environ, VGGRPO_VARIANT_CHILD="1")
        if variant == "cuda":
            env["VGGRPO_VARIANT_LIB"] = str(lib)
        proc = subprocess.run([sys.executable, __file__, *argv], cwd=ROOT, env=env)
        return 1 if proc.returncode == 5 else proc.returncode

    if variant == "emulated":
        module = build_emulated()  # up to date: loads the built library
    else:
        module = load_cuda(Path(os.environ["VGGRPO_VARIANT_LIB"]))
    assert module.cuda_built, f"the {variant} variant must be built with VGGRPO_WITH_CUDA"
    sys.modules["vggrpo._C"] = module
    sys.path.insert(0, str(ROOT))
    import pytest

    import vggrpo

    assert vggrpo._ext._C is module, f"vggrpo loaded another extension than the {variant} variant"
    print(f"vggrpo ops on the {variant} variant ({module.__file__}, torch "
          f"{module.torch_version})", flush=True)
    return pytest.main(["-q", "-p", "no:cacheprovider", *TEST_FILES[variant], *pytest_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
