"""Builds vggrpo and its compiled extension vggrpo._C.

Install with ``pip install --no-build-isolation -e .``: the extension must be compiled against the
torch that will import it, and build isolation would fetch a different (often CUDA, several GB)
torch into a throw-away environment.

Environment knobs:
  VGGRPO_NO_CUDA=1        build the CPU extension even where CUDA could be built.
  FORCE_CUDA=1            build the CUDA kernels (needs a CUDA build of torch and nvcc); no GPU
                          is needed at build time.
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0": A100 and H100/H200; also when
                          set but blank).
  MAX_JOBS                parallel compile jobs (read by torch's ninja build).

CUDA is built when FORCE_CUDA=1, or when torch is a CUDA build (torch.version.cuda) and a CUDA
toolkit is found (CUDA_HOME); never by asking whether a GPU is present, so a GPU-less build box
builds CUDA when asked and a CPU build never pretends.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _cuda_arch_list(environ) -> str:
    # A blank TORCH_CUDA_ARCH_LIST (say `TORCH_CUDA_ARCH_LIST=$ARCH` with ARCH unset) would reach
    # torch's build as an empty list, where it fails with a bare IndexError.
    return environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or "8.0;9.0"


def _want_cuda(torch_mod, cuda_home, cuda_sources) -> bool:
    if _truthy("VGGRPO_NO_CUDA"):
        return False
    if not cuda_sources:
        # This version has no CUDA kernels (csrc/kernels/*.cu) yet: the CPU build is the build.
        if _truthy("FORCE_CUDA"):
            sys.exit(
                "vggrpo: FORCE_CUDA=1, but this version of vggrpo has no CUDA kernels "
                "(csrc/kernels/*.cu); unset FORCE_CUDA to build the CPU extension."
            )
        if torch_mod.version.cuda is not None:
            print("vggrpo: this version has no CUDA kernels yet; building the CPU extension "
                  "(CUDA tensors will get a clear 'built without CUDA' error).", file=sys.stderr)
        return False
    if _truthy("FORCE_CUDA"):
        if torch_mod.version.cuda is None:
            sys.exit(
                "vggrpo: FORCE_CUDA=1 needs a CUDA build of torch, but this torch "
                f"({torch_mod.__version__}) is CPU-only (torch.version.cuda is None). Install a "
                "CUDA build of torch, or unset FORCE_CUDA to build for the CPU."
            )
        if cuda_home is None:
            sys.exit(
                "vggrpo: FORCE_CUDA=1 but no CUDA toolkit was found. Set CUDA_HOME to the "
                f"toolkit matching torch's CUDA {torch_mod.version.cuda} "
                "(it must contain bin/nvcc)."
            )
        return True
    return torch_mod.version.cuda is not None and cuda_home is not None


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "kernels", "*.cu")))
    with_cuda = _want_cuda(torch, CUDA_HOME, cuda_sources)
    sources = sorted(glob.glob(os.path.join(csrc, "kernels", "*_cpu.cpp")))
    torch_glue = ["checks.cpp", "ops.cpp", "library.cpp", "module.cpp", "register_cpu.cpp"]
    sources += [os.path.join(csrc, "torch", f) for f in torch_glue]
    # -fno-math-errno: std::sqrt need not set errno on a negative argument, so loops over it
    # vectorise (static_points 1.65x faster on one thread of the AVX2 CI machine); values are
    # unchanged, as sqrt is correctly rounded either way.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
           f'-DVGGRPO_TORCH_VERSION="{torch.__version__}"']
    include_dirs = [os.path.join(HERE, csrc, "include"), os.path.join(HERE, csrc, "kernels")]
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch_list(os.environ)
        sources += cuda_sources
        sources += [os.path.join(csrc, "torch", "register_cuda.cpp")]
        return [
            CUDAExtension(
                name="vggrpo._C",
                sources=sources,
                include_dirs=include_dirs,
                define_macros=[("VGGRPO_WITH_CUDA", None)],
                extra_compile_args={
                    "cxx": cxx,
                    # --fmad=false: no fused multiply-add contraction, so projections and
                    # depths round exactly as on the CPU and both pick the same z-buffer winners.
                    "nvcc": ["-O3", "-std=c++17", "--fmad=false", "-DVGGRPO_WITH_CUDA"],
                },
                extra_link_args=["-fopenmp"],
            )
        ], True
    sources += [os.path.join(csrc, "torch", "no_cuda.cpp")]
    return [
        CppExtension(
            name="vggrpo._C",
            sources=sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ], False


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


ext_modules, _ = _extensions()
setup(
    name="vggrpo",
    version="0.1.0",
    description="World-consistent video generation: latent geometry rewards, fused CUDA/C++ "
    "ops, GRPO and reward guidance for diffusers video models.",
    packages=find_packages(include=["vggrpo", "vggrpo.*"]),
    # The embedded tiny models (a few MB of safetensors + JSON), loaded without any network.
    package_data={"vggrpo": ["py.typed", "weights/*.json", "weights/*/*.json",
                             "weights/*/*.safetensors"]},
    python_requires=">=3.10",
    # torch is not pinned here: the extension is built against the torch already installed
    # (see the module docstring); `make env` installs the tested versions.
    install_requires=["torch>=2.4", "numpy", "safetensors", "tqdm", "diffusers>=0.33",
                      "peft>=0.14", "pyyaml", "tomli>=1.1; python_version < '3.11'"],
    # av (PyAV) reads and writes video files (vggrpo.data.video); imported only when used.
    # tensorboard: the GRPO trainer's scalars (vggrpo.step_log), written only when it imports.
    extras_require={"test": ["pytest", "pytest-benchmark"], "video": ["av>=16"],
                    "nvtx": ["nvtx"], "metrics": ["opencv-python-headless"],
                    "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["vggrpo=vggrpo.cli:main"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": _build_ext()},
    zip_safe=False,
)
