"""Safe, atomic file IO shared by the model and trainer checkpoints.

Files from users are untrusted: weights load with safetensors, training state with
``torch.load(weights_only=True)``, configs are JSON (never executed). Everything is written to a
temporary file in the destination folder and renamed into place, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_write", "save_json", "load_json", "save_tensors", "load_tensors",
           "save_state", "load_state"]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same folder, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_json(path: PathLike, data: Dict[str, Any]) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    return atomic_write(path, write)


def _require_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load_json(path: PathLike, what: str = "config") -> Dict[str, Any]:
    path = _require_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def save_tensors(path: PathLike, tensors: Dict[str, Tensor], metadata: Dict[str, str] = None
                 ) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage; checkpoints own their copies.
    owned = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(owned, tmp, metadata=metadata))


def load_tensors(path: PathLike, what: str = "weights", device: str = "cpu") -> Dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _require_file(path, what)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{what} {path} is not a readable safetensors file: {err}") from None


def save_state(path: PathLike, state: Dict[str, Any]) -> Path:
    """Training state (optimizer, scheduler, RNG): plain containers of tensors and numbers."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: PathLike, what: str = "training state") -> Dict[str, Any]:
    path = _require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{what} {path} could not be loaded safely: {err}") from None


def dataclass_from_dict(cls, data: Any):
    """``cls(**data)`` for a config dataclass, refusing anything but a JSON object of its fields
    (a config written for another model must not half-load)."""
    import dataclasses

    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected a subset of "
                         f"{sorted(known)}")
    return cls(**data)


def load_state_dict_strict(module: torch.nn.Module, tensors: Dict[str, Tensor], what: str) -> None:
    """``module.load_state_dict(strict=True)`` with one clear error listing what does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape mismatch for {k}: expected {list(own[k].shape)}, "
                         f"got {list(tensors[k].shape)} ({len(wrong)} in all)")
        raise ValueError(f"{what} does not fit the model config: " + "; ".join(parts))
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
