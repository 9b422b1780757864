"""Weights of real geometry models on local disk: finding the file(s) and reading a state dict
without unpickling anything.

Nothing is ever downloaded: a path must exist on local disk (a hub id such as
``"facebook/VGGT-1B"`` is a FileNotFoundError unless it happens to be a local folder). Weights
load with safetensors (``.safetensors``, shards merged) or ``torch.load(weights_only=True)``
(``.pt`` / ``.pth`` / ``.bin``).

:func:`load_weights_into` loads a checkpoint into a built model without ever holding a second
copy of its weights: safetensors tensors are read from the file straight into the model's own
memory, ``.pt`` files are memory-mapped and copied tensor by tensor. So loading a model peaks at
about the model's size, not twice it (:func:`load_state_dict_file` then ``load_state_dict``).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .. import _io

__all__ = ["find_weights", "load_state_dict_file", "load_weights_into"]

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
            part = _load_pickle(f, mmap=False)
        state.update(part)
    return state


# --------------------------------------------------------------------------------------------------
# Loading into a built model, one tensor at a time
# --------------------------------------------------------------------------------------------------

# safetensors' dtype names (its format spec); the float8 ones where this torch has them.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    **{name: getattr(torch, attr) for name, attr in (("F8_E4M3", "float8_e4m3fn"),
                                                      ("F8_E5M2", "float8_e5m2"))
       if hasattr(torch, attr)},
}
# A header larger than this is not a weights file (safetensors itself caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class _Entry:
    """One tensor of a checkpoint, not yet read: its shape and dtype, and where it is."""

    shape: Tuple[int, ...]
    dtype: torch.dtype
    file: Path
    offset: int = 0  # safetensors: the first byte in the file
    tensor: Optional[Tensor] = None  # a pickle: the memory-mapped tensor

    def read_into(self, target: Tensor, handle) -> None:
        if self.tensor is not None:
            target.copy_(self.tensor)
            return
        # Straight into the target's memory when its layout is the file's; else via one tensor.
        direct = target.dtype == self.dtype and target.is_contiguous() \
            and target.device.type == "cpu"
        buffer = target if direct else torch.empty(self.shape, dtype=self.dtype)
        if buffer.numel():
            handle.seek(self.offset)
            view = buffer.reshape(-1).view(torch.uint8).numpy()
            if handle.readinto(view) != view.nbytes:
                raise ValueError(f"weights file {str(self.file)!r} ends inside a tensor")
        if not direct:
            target.copy_(buffer)


def _safetensors_entries(path: Path) -> Dict[str, _Entry]:
    """The tensors of a safetensors file, from its header alone (checked against the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{str(path)!r} is not a safetensors file (header size {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{str(path)!r} is not a safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a safetensors file (its header is not an object)")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{str(path)!r}: tensor {name!r} has a malformed or unsupported "
                             f"header entry {info!r}") from None
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != nbytes \
                or 8 + n + end > size:
            raise ValueError(f"{str(path)!r}: tensor {name!r} does not fit the file (shape "
                             f"{list(shape)} {info['dtype']}, bytes {begin}..{end})")
        entries[name] = _Entry(shape, dtype, path, 8 + n + begin)
    return entries


def _load_pickle(path: Path, mmap: bool) -> Dict[str, Tensor]:
    """The state dict of a torch checkpoint, ``weights_only`` (never unpickling objects), a
    ``{"model": ...}`` wrapper unwrapped; with ``mmap``, memory-mapped where the format allows."""
    try:
        try:
            part = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # The legacy (pre-zip) format cannot be mapped: read it whole.
            part = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{str(path)!r} holds objects other than tensors and plain containers, which "
            "vggrpo does not unpickle (weights_only=True); re-save its state dict with "
            f"torch.save(model.state_dict(), ...) or as safetensors "
            f"({_io.unpickling_refusal(err)})"
        ) from None
    part = _unwrap(part)
    if not isinstance(part, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(part).__name__})")
    return part


def _unwrap(part):
    # Training checkpoints wrap the weights: {"model": state_dict, "epoch": ..., ...}.
    if isinstance(part, dict) and not any(isinstance(v, Tensor) for v in part.values()):
        for key in ("model", "state_dict"):
            if isinstance(part.get(key), dict):
                return part[key]
    return part


def _pickle_entries(path: Path) -> Dict[str, _Entry]:
    """The tensors of a torch checkpoint, memory-mapped (read only as they are copied)."""
    part = _load_pickle(path, mmap=True)
    return {k: _Entry(tuple(v.shape), v.dtype, path, tensor=v)
            for k, v in part.items() if isinstance(v, Tensor)}


def load_weights_into(module: torch.nn.Module, files: Union[PathLike, List[PathLike]], *,
                      strict: bool = True, what: str = "model") -> Tuple[List[str], List[str]]:
    """Load weight files (safetensors shards, or one ``.pt`` / ``.pth`` / ``.bin``, a
    ``{"model": ...}`` wrapper unwrapped) into ``module``'s own parameters and buffers, as
    ``module.load_state_dict(state, strict)`` would, at the peak memory of the module alone
    (module docstring). Returns ``(missing, unexpected)`` keys.

    Everything is checked before anything is written, each a ValueError naming the file: a file
    that matches none of the module's tensors, a tensor of another shape, and with ``strict``
    missing or unexpected keys, and an integer or bool tensor where the module's is floating
    point. Another floating dtype than the module's is converted, as ``load_state_dict`` does.
    """
    if not isinstance(files, (list, tuple)):
        files = [files]
    paths = [Path(os.fspath(f)) for f in files]
    entries: Dict[str, _Entry] = {}
    for path in paths:
        if path.suffix.lower() in _SAFETENSORS:
            entries.update(_safetensors_entries(path))
        else:
            entries.update(_pickle_entries(path))
    own = module.state_dict()
    names = ", ".join(repr(str(p)) for p in paths)
    matched = [k for k in own if k in entries]
    if not matched:
        raise ValueError(f"{what} weights {names} match none of the model's {len(own)} tensors "
                         f"(file keys like {sorted(entries)[:3]}, model keys like "
                         f"{sorted(own)[:3]})")
    _io.check_floating({k: entries[k].dtype for k in matched if own[k].is_floating_point()},
                       f"{what} weights {names}")
    wrong = [k for k in matched if tuple(own[k].shape) != entries[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{what} weights {names} do not fit the model: {k} is "
                         f"{list(entries[k].shape)}, the model's {list(own[k].shape)} "
                         f"({len(wrong)} in all)")
    missing = sorted(set(own) - set(entries))
    unexpected = sorted(set(entries) - set(own))
    if strict and (missing or unexpected):
        parts = [f"{label} {keys[:5]}{'...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"{what} weights {names} do not fit the model: " + "; ".join(parts))
    handles: Dict[Path, object] = {}
    try:
        with torch.no_grad():
            # In file order: one sequential read per safetensors file.
            for k in sorted(matched, key=lambda k: (str(entries[k].file), entries[k].offset)):
                entry = entries[k]
                handle = None
                if entry.tensor is None:
                    if entry.file not in handles:
                        handles[entry.file] = open(entry.file, "rb")
                    handle = handles[entry.file]
                entry.read_into(own[k], handle)
    finally:
        for handle in handles.values():
            handle.close()
    return missing, unexpected
