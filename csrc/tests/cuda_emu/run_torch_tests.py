"""The torch ops' CUDA branch, end to end on a machine without a GPU.

    python csrc/tests/cuda_emu/run_torch_tests.py [pytest args...]

Builds a test-only variant of the extension vggrpo._C in which every op call takes the glue's
CUDA branch (csrc/torch/ops.cpp with VGGRPO_WITH_CUDA and VGGRPO_EMULATED_CUDA), and whose CUDA
kernels are csrc/kernels/*.cu compiled against the CPU emulation of the CUDA runtime here; then
runs the op test files of tests/ on it (CPU tensors throughout). So the code a GPU run would take,
from the schema through the glue's argument passing, scratch buffers and deterministic switch to
the kernels, is checked against the plain-PyTorch reference, gradcheck and opcheck, minus what
the emulation cannot show (docs/ops.md). The build goes to build/cuda_emu_torch; the installed
vggrpo._C is never touched (the variant is put in sys.modules before vggrpo is imported).

Exit status: pytest's, except that "no tests ran" (5) is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EMU = ROOT / "csrc" / "tests" / "cuda_emu"
BUILD = ROOT / "build" / "cuda_emu_torch"

# The tests that drive the ops (numerics, gradients, opcheck, errors); the model-level tests only
# add time here.
TEST_FILES = [
    "tests/test_so3.py",
    "tests/test_motion.py",
    "tests/test_geometry_ops.py",
    "tests/test_reference.py",
    "tests/test_rewards.py",
    "tests/test_errors.py",
]


def build():
    """Compiles the variant (cached by ninja) and returns its module."""
    import torch
    from torch.utils.cpp_extension import load

    BUILD.mkdir(parents=True, exist_ok=True)
    gen = BUILD / "kernels"
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
        build_directory=str(BUILD),
        verbose=False,
    )


def main(argv: list[str]) -> int:
    if os.environ.get("VGGRPO_EMULATED_CHILD") != "1":
        # Build here (the compile's output stays readable), run pytest in a fresh process that
        # loads the variant before vggrpo.
        os.environ.setdefault("MAX_JOBS", "2")
        build()
        env = dict(os.environ, VGGRPO_EMULATED_CHILD="1")
        proc = subprocess.run([sys.executable, __file__, *argv], cwd=ROOT, env=env)
        return 1 if proc.returncode == 5 else proc.returncode

    module = build()  # up to date: loads the built library
    assert module.cuda_built, "the emulated variant must be built with VGGRPO_WITH_CUDA"
    sys.modules["vggrpo._C"] = module
    import pytest

    import vggrpo

    assert vggrpo._ext._C is module, "vggrpo loaded another extension than the emulated variant"
    print(f"vggrpo ops on the emulated CUDA branch ({module.__file__})", flush=True)
    return pytest.main(["-q", "-p", "no:cacheprovider", *TEST_FILES, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
