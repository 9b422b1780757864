"""tests/ on a variant build of vggrpo._C, for what the installed one cannot show.

    python csrc/tests/torch_variant.py emulated [pytest args...]   # make cuda-emulated
    python csrc/tests/torch_variant.py cuda [pytest args...]       # make cuda-build
    python csrc/tests/torch_variant.py cpu [pytest args...]        # make floor

``emulated``: every op call takes the glue's CUDA branch (csrc/torch/ops.cpp built with
VGGRPO_WITH_CUDA and VGGRPO_EMULATED_CUDA), and the CUDA kernels are csrc/kernels/*.cu compiled
against the CPU emulation of the CUDA runtime in csrc/tests/cuda_emu/. So the code a GPU run would
take, from the schema through the glue's argument passing, scratch buffers and deterministic
switch to the kernels, is checked against the plain-PyTorch reference, gradcheck and opcheck,
minus what the emulation cannot show (docs/ops.md). Built in build/cuda_emu_torch.

``cuda``: the real CUDA build, exactly as ``FORCE_CUDA=1 pip install`` makes it (setup.py, nvcc,
the real CUDA glue and its CUDA-key registrations), against the torch of the interpreter that runs
this script, which must be a CUDA build (its wheel imports and runs on a machine without a GPU).
`make cuda-build` runs it with the GPU machine's torch and Python, so a compile or link error in
the CUDA glue, a CUDA registration that does not load, or a test that fails under that torch or
Python shows on CI and not in the first minutes of a GPU session. The whole of tests/ runs on it
(tests/test_cuda.py skips where there is no GPU). Built in build/cuda_torch; CUDA_HOME is taken
from the environment, else from the nvcc on PATH.

``cpu``: the CPU build, exactly as ``VGGRPO_NO_CUDA=1 pip install`` makes it, against the torch
of the interpreter that runs this script. `make floor` runs it in .venv-floor, the oldest Python,
torch, diffusers and peft that setup.py admits, so that the floors it states stay true. Built in
build/cpu_torch-<Python version>.

In all three, the installed vggrpo._C is never touched: pytest runs in a fresh process whose
PYTHONPATH starts with csrc/tests/variant_site, whose sitecustomize.py loads the variant as
vggrpo._C before anything imports vggrpo, in that process and in every process it starts (CLI
and torchrun tests). Exit status: pytest's, except that "no tests ran" (5) is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "csrc" / "tests" / "cuda_emu"
BUILD = {
    "emulated": ROOT / "build" / "cuda_emu_torch",
    "cuda": ROOT / "build" / "cuda_torch",
    "cpu": ROOT / "build" / f"cpu_torch-{sys.version_info[0]}.{sys.version_info[1]}",
}

# The tests that drive the ops (numerics, gradients, opcheck, errors); the model-level tests only
# add time here.
OP_TEST_FILES = [
    "tests/test_so3.py",
    "tests/test_motion.py",
    "tests/test_geometry_ops.py",
    "tests/test_reference.py",
    "tests/test_rewards.py",
    "tests/test_errors.py",
    "tests/test_threads.py",
]
TEST_FILES = {
    "emulated": OP_TEST_FILES,
    # Everything: another torch and Python than the main environment's (test_library checks the
    # CUDA-key registrations; test_cuda runs only where a GPU is), but for the 30-step learning
    # test: its code path is the CPU suite's and the shorter GRPO tests' (which run here), and
    # its 35-40 s kept CI over its 20-minute budget. scripts/gpu_check.sh runs it on the GPU.
    "cuda": ["tests", "--deselect", "tests/test_grpo.py::test_short_run_raises_the_mean_reward"],
    "cpu": ["tests"],
}
SITE = ROOT / "csrc" / "tests" / "variant_site"


def build_emulated() -> Path:
    """Compiles the emulated variant (cached by ninja); returns the library."""
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
        "-fno-math-errno",
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
    module = load(
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
    return Path(module.__file__)


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


def build_setup(variant: str) -> Path:
    """Runs setup.py's own build (FORCE_CUDA=1 for ``cuda``, VGGRPO_NO_CUDA=1 for ``cpu``) into
    BUILD[variant]; returns the library."""
    import torch

    out = BUILD[variant]
    if variant == "cuda":
        if torch.version.cuda is None:
            sys.exit(f"torch_variant cuda: this interpreter's torch {torch.__version__} is a CPU "
                     "build; run it with a CUDA build of torch (make cuda-build installs one)")
        env = dict(os.environ, FORCE_CUDA="1", CUDA_HOME=cuda_home())
        env.pop("VGGRPO_NO_CUDA", None)
    else:
        env = dict(os.environ, VGGRPO_NO_CUDA="1")
        env.pop("FORCE_CUDA", None)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--build-lib", str(out / "lib"),
         "--build-temp", str(out / "tmp")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        # ninja prints every command line: the error is at the end.
        sys.stderr.write(done.stdout[-20000:] + done.stderr[-20000:])
        sys.exit(f"torch_variant {variant}: the build failed (exit {done.returncode})")
    lib = out / "lib" / "vggrpo" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    how = (f"the CUDA extension with CUDA_HOME={env['CUDA_HOME']}, TORCH_CUDA_ARCH_LIST="
           f"{env.get('TORCH_CUDA_ARCH_LIST', 'setup.py default')}" if variant == "cuda"
           else "the CPU extension")
    print(f"built {how} in {time.monotonic() - start:.0f} s: {lib}", flush=True)
    return lib


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BUILD:
        print(f"usage: {Path(__file__).name} {{{'|'.join(BUILD)}}} [pytest args...]",
              file=sys.stderr)
        return 2
    variant, pytest_args = argv[0], argv[1:]
    os.environ.setdefault("MAX_JOBS", "2")
    lib = build_emulated() if variant == "emulated" else build_setup(variant)
    path = [str(SITE), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, VGGRPO_VARIANT_LIB=str(lib), PYTHONPATH=os.pathsep.join(path))
    check = ("import vggrpo, torch; c = vggrpo._ext._C; "
             f"assert c.__file__ == {str(lib)!r}, ('vggrpo loaded', c.__file__); "
             f"assert c.cuda_built == {variant != 'cpu'}, ('cuda_built', c.cuda_built); "
             f"print('vggrpo ops on the {variant} variant (%s, torch %s, Python %s)' % "
             "(c.__file__, torch.__version__, __import__('platform').python_version()))")
    if subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env).returncode != 0:
        return 1
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *TEST_FILES[variant], *pytest_args], cwd=ROOT, env=env)
    return 1 if proc.returncode == 5 else proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
