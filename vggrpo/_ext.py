"""Loads the compiled extension ``vggrpo._C`` and says plainly what to do when it cannot."""

from __future__ import annotations

import torch

_REBUILD = (
    "Rebuild it against the installed torch from the repository root: "
    "`pip install --no-build-isolation -e .` (or `make env`)."
)

try:
    from . import _C  # noqa: F401  (registers torch.ops.vggrpo.*)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        f"vggrpo's compiled extension vggrpo._C could not be loaded ({exc}). It is missing, or it "
        f"was built against a different torch than the installed {torch.__version__}. {_REBUILD}"
    ) from exc

if _C.torch_version != torch.__version__:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        f"vggrpo._C was built against torch {_C.torch_version}, but torch {torch.__version__} is "
        f"installed; a C++ extension only works with the torch it was compiled for. {_REBUILD}"
    )

#: True when the extension was compiled with its CUDA kernels.
cuda_built: bool = bool(_C.cuda_built)
#: True when the CPU kernels run in parallel with OpenMP (torch.set_num_threads applies).
openmp: bool = bool(_C.openmp)
