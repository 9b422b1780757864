"""Weights of real geometry models on local disk: finding the file(s) and reading a state dict
without unpickling anything.

Nothing is ever downloaded: a path must exist on local disk (a hub id such as
``"facebook/VGGT-1B"`` is a FileNotFoundError unless it happens to be a local folder). Weights
load with safetensors (``.safetensors``, shards merged) or ``torch.load(weights_only=True)``
(``.pt`` / ``.pth`` / ``.bin``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Dict, List, Union

import torch
from torch import Tensor

__all__ = ["find_weights", "load_state_dict_file"]

PathLike = Union[str, "os.PathLike[str]"]

_SAFETENSORS = (".safetensors",)
_TORCH_PICKLES = (".pt", ".pth", ".bin")


def _local_path(path: PathLike, what: str) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{what} checkpoint path {str(p)!r} does not exist; vggrpo loads weights from local "
            "disk only and never downloads (fetch the checkpoint yourself and pass its folder or "
            "weights file)"
        )
    return p


def find_weights(path: PathLike, what: str = "model") -> List[Path]:
    """The weight file(s) of a local checkpoint.

    ``path`` is a weights file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) or a folder holding
    ``model.safetensors``, sharded ``*.safetensors``, or a single ``.pt`` / ``.pth`` / ``.bin``
    (``model.*`` preferred). FileNotFoundError names the path when it does not exist or holds no
    weights. Nothing is downloaded.
    """
    p = _local_path(path, what)
    if p.is_file():
        if p.suffix.lower() not in _SAFETENSORS + _TORCH_PICKLES:
            raise FileNotFoundError(
                f"{what} checkpoint {str(p)!r} is not a folder or a weights file "
                f"({', '.join(_SAFETENSORS + _TORCH_PICKLES)})"
            )
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{what} checkpoint path {str(p)!r} is not a folder or a file")
    files = sorted(f for f in p.iterdir() if f.is_file())
    if (p / "model.safetensors").is_file():
        return [p / "model.safetensors"]
    shards = [f for f in files if f.suffix.lower() in _SAFETENSORS]
    if shards:
        return shards
    for name in ("model.pt", "model.pth", "pytorch_model.bin"):
        if (p / name).is_file():
            return [p / name]
    pickles = [f for f in files if f.suffix.lower() in _TORCH_PICKLES]
    if len(pickles) == 1:
        return pickles
    if len(pickles) > 1:
        raise FileNotFoundError(
            f"{what} checkpoint folder {str(p)!r} holds several weight files "
            f"({', '.join(f.name for f in pickles)}); pass the one to load"
        )
    raise FileNotFoundError(
        f"{what} checkpoint folder {str(p)!r} holds no weights (expected model.safetensors, "
        "*.safetensors shards, or one .pt/.pth/.bin)"
    )


def load_state_dict_file(files: Union[PathLike, List[PathLike]]) -> Dict[str, Tensor]:
    """A CPU state dict from weight files (safetensors shards are merged).

    ``.pt`` / ``.pth`` / ``.bin`` load with ``torch.load(weights_only=True)`` (no arbitrary
    pickles); a top-level ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    if not isinstance(files, (list, tuple)):
        files = [files]
    state: Dict[str, Tensor] = {}
    for f in files:
        f = Path(os.fspath(f))
        if f.suffix.lower() in _SAFETENSORS:
            from safetensors.torch import load_file

            part = load_file(str(f), device="cpu")
        else:
            try:
                part = torch.load(str(f), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise ValueError(
                    f"{str(f)!r} holds objects other than tensors and plain containers, which "
                    "vggrpo does not unpickle (weights_only=True); re-save its state dict with "
                    f"torch.save(model.state_dict(), ...) or as safetensors ({err})"
                ) from err
            # Training checkpoints wrap the weights: {"model": state_dict, "epoch": ..., ...}.
            if isinstance(part, dict) and not any(isinstance(v, Tensor) for v in part.values()):
                for key in ("model", "state_dict"):
                    if isinstance(part.get(key), dict):
                        part = part[key]
                        break
        if not isinstance(part, dict):
            raise ValueError(f"{str(f)!r} does not hold a state dict (got {type(part).__name__})")
        state.update(part)
    return state
