"""Safe, atomic file IO shared by the model and trainer checkpoints.

Files from users are untrusted: weights load with safetensors, training state with
``torch.load(weights_only=True)``, configs are JSON (never executed). Everything is written to a
temporary file in the destination folder and renamed into place, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Union

import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_write", "commit_folder", "recover_folder", "remove_leftovers", "writable_target",
           "check_writable", "check_can_create", "save_json",
           "load_json", "save_tensors", "load_tensors", "check_floating", "save_state",
           "load_state", "unpickling_refusal"]


def writable_target(path: PathLike, what: str = "output") -> Path:
    """The file a write to ``path`` lands in: ``path`` itself, or the target of a symlink (so a
    link stays a link and its target is replaced). Refused, with one line naming ``what``: a
    folder, a FIFO, a device or a socket (replacing one with a regular file would destroy it,
    and writing into it would not be atomic), a name longer than the file system allows, and a
    parent that is not a folder."""
    path = Path(path)
    for p in (path, Path(os.path.realpath(path))):  # the link's name, then its target's
        if len(os.fsencode(p.name)) > 255:
            raise ValueError(f"{what} {str(p)[:120]}...: the file name is "
                             f"{len(os.fsencode(p.name))} bytes; file systems allow 255")
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if os.path.lexists(path):
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"{what} {path} is a folder; expected the path of a file to write")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{what} {path} exists and is not a regular file (a FIFO, device "
                             f"or socket); refusing to replace it")
    parent = next((p for p in path.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a folder")
    return path


def check_writable(path: PathLike, what: str = "output") -> Path:
    """:func:`writable_target`, and a probe that a file can be created where it would be (a
    temporary file in the nearest existing folder, removed at once): a command checks its
    output this way before any work, so a read-only or virtual file system (``/sys``,
    ``/proc``) fails it in the first second, not after the work."""
    path = writable_target(path, what)
    check_can_create(path, what)
    return path


def check_can_create(path: PathLike, what: str = "output") -> None:
    """Probe that a file or folder can be created at ``path`` (its nearest existing folder
    takes a temporary file); a one-line ValueError naming ``what`` when it cannot."""
    path = Path(path)
    parent = next((p for p in path.parents if os.path.lexists(p)), Path("."))
    if os.path.isdir(path):
        parent = path
    try:
        fd, probe = tempfile.mkstemp(prefix=".vggrpo-probe.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot write in {parent} "
                         f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same folder, atomic).

    Through a symlink, the link's target is replaced (:func:`writable_target`); a path that
    exists and is not a regular file is refused. Returns the path written."""
    path = writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ValueError(f"output {path}: cannot write in {path.parent} "
                         f"({err.strerror or err})") from None
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


def commit_folder(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Write a folder as one unit: ``write(tmp_folder)`` fills a hidden folder beside ``path``,
    which is then renamed to ``path``. A kill at any moment leaves either the previous ``path``
    or the new one whole, never a mix of two writes, plus at most a hidden ``.<name>.*.tmp``
    leftover (:func:`remove_leftovers` clears it).

    An existing ``path`` is replaced: moved aside to ``.<name>.old``, the new folder renamed in,
    the old one removed. A kill between the two renames leaves no ``path`` but the previous
    one whole in ``.<name>.old``, which :func:`recover_folder` (called here first, and by a
    resume) puts back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    aside = path.parent / f".{path.name}.old"
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.lexists(path):
            shutil.rmtree(aside, ignore_errors=True)  # a kill's, after its new folder went in
            os.rename(path, aside)
        os.rename(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def recover_folder(path: PathLike) -> bool:
    """Put back the folder a killed :func:`commit_folder` left aside (``.<name>.old``) when
    ``path`` itself is missing. Returns whether it did."""
    path = Path(path)
    aside = path.parent / f".{path.name}.old"
    if not os.path.lexists(path) and aside.is_dir():
        os.rename(aside, path)
        return True
    return False


def remove_leftovers(folder: PathLike, prefixes: Iterable[str]) -> List[str]:
    """Delete the hidden temporaries that a killed :func:`atomic_write` or :func:`commit_folder`
    left in ``folder`` for final names starting with one of ``prefixes`` (``.<name>.*.tmp``,
    files or folders). Only those: other hidden files are the user's. Returns what was
    removed."""
    folder = Path(folder)
    removed: List[str] = []
    if not folder.is_dir():
        return removed
    prefixes = tuple(f".{n}" for n in prefixes)
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes) and entry.name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def save_json(path: PathLike, data: Dict[str, Any]) -> Path:
    """``data`` as JSON, atomically. A NaN or infinity anywhere in it is a ValueError before
    anything is written: ``NaN`` is not JSON, and a non-finite result is an error, not data."""
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(f"{path}: refusing to write a result holding NaN or infinity; "
                         f"nothing was written") from None
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def save_tensors(path: PathLike, tensors: Dict[str, Tensor], metadata: Dict[str, str] = None
                 ) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage; checkpoints own their copies.
    owned = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(owned, tmp, metadata=metadata))


def check_floating(dtypes: Dict[str, torch.dtype], what: str) -> None:
    """Refuse integer or bool tensors where floating-point weights belong: casting them to
    float would load a file of another kind (codes, masks) as weights without a word."""
    wrong = sorted(k for k, d in dtypes.items() if not d.is_floating_point)
    if wrong:
        raise ValueError(f"{what}: expected floating-point tensors, but {wrong[0]!r} is "
                         f"{dtypes[wrong[0]]} ({len(wrong)} of {len(dtypes)} are not floating "
                         f"point)")


def load_tensors(path: PathLike, what: str = "weights", device: str = "cpu", *,
                 floating: bool = True) -> Dict[str, Tensor]:
    """The tensors of a safetensors file, each a floating-point tensor (``floating``; else any
    dtype). Anything else is one ValueError naming ``what`` and the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _require_file(path, what)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{what} {path} is not a readable safetensors file: {err}") from None
    if floating:
        check_floating({k: v.dtype for k, v in tensors.items()}, f"{what} {path}")
    return tensors


def save_state(path: PathLike, state: Dict[str, Any]) -> Path:
    """Training state (optimizer, scheduler, RNG): plain containers of tensors and numbers."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: PathLike, what: str = "training state") -> Dict[str, Any]:
    path = _require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"{what} {path} could not be loaded safely: "
                         f"{unpickling_refusal(err)}") from None


def unpickling_refusal(err: BaseException) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file. Torch's own message
    spans lines and advises ``weights_only=False``, which would run the file's code: never."""
    import re

    text = " ".join(str(err).split())
    found = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if found:
        return (f"it holds objects other than tensors and plain containers ({found.group(0)}), "
                f"which vggrpo never unpickles")
    return text[:300]


def load_state_dict_strict(module: torch.nn.Module, tensors: Dict[str, Tensor], what: str) -> None:
    """``module.load_state_dict(strict=True)`` with one clear error listing what does not fit;
    integer or bool tensors where the module has floats, and NaN or infinite weights, are
    refused the same way, before anything is loaded."""
    own = module.state_dict()
    check_floating({k: v.dtype for k, v in tensors.items()
                    if k in own and own[k].is_floating_point()}, what)
    broken = sorted(k for k, v in tensors.items()
                    if v.is_floating_point() and not torch.isfinite(v).all())
    if broken:
        raise ValueError(f"{what}: {broken[0]} holds NaN or infinite values ({len(broken)} "
                         f"tensors in all); weights must be finite")
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
