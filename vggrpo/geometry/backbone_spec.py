"""A geometry backbone named by one string, as the command line and the configs take it.

``SPEC`` is one of:

* ``vggt:DIR``: VGGT from a local checkpoint (:meth:`VGGTAdapter.from_pretrained
  <vggrpo.geometry.adapters.VGGTAdapter.from_pretrained>`; the ``vggt`` package installed);
* ``any4d:DIR``: Any4D from a checkout of its repository, set up as its README says: the network
  is built from ``DIR/configs`` (:func:`~vggrpo.geometry.any4d.build_any4d_network`) and the
  weights come from the one checkpoint in ``DIR/checkpoints`` (``any4d_4v_combined.pth``);
  ``any4d:DIR,checkpoint=PATH`` names another checkpoint file or folder;
* ``MODULE:FUNCTION``: ``FUNCTION()`` of a Python module importable from the current directory or
  ``PYTHONPATH``, returning any object that follows
  :class:`~vggrpo.geometry.backbone.GeometryBackbone`.

A spec names code to run, so it is only ever taken from the user (an option, a config they
pass); an LGM folder records the backbone's type, never its spec.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Tuple

from .backbone import missing_backbone_members

__all__ = ["BACKBONE_SPEC_HELP", "parse_backbone_spec", "load_backbone"]

BACKBONE_SPEC_HELP = "vggt:DIR, any4d:DIR[,checkpoint=PATH] or MODULE:FUNCTION"
_CALLABLE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")


def parse_backbone_spec(spec: str) -> Tuple[str, str, dict]:
    """``(kind, target, options)`` of a spec: ``("vggt", DIR, {})``, ``("any4d", DIR,
    {"checkpoint": PATH})`` or ``("callable", "MODULE:FUNCTION", {})``. ValueError (one line,
    naming what was expected) for anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backbone spec: expected {BACKBONE_SPEC_HELP}, got {spec!r}")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("vggt", "any4d"):
        parts = rest.split(",")
        target, options = parts[0], {}
        for part in parts[1:]:
            key, eq, value = part.partition("=")
            if kind != "any4d" or key != "checkpoint" or not eq or not value:
                raise ValueError(f"backbone spec {spec!r}: unknown option {part!r} (expected "
                                 f"{BACKBONE_SPEC_HELP})")
            options[key] = value
        if not target:
            raise ValueError(f"backbone spec {spec!r}: expected {kind}:DIR, a local folder")
        return kind, target, options
    if _CALLABLE.match(spec):
        return "callable", spec, {}
    raise ValueError(f"backbone spec {spec!r}: expected {BACKBONE_SPEC_HELP}")


def _import_callable(spec: str) -> Any:
    module_name, _, function = spec.partition(":")
    # "the current directory or PYTHONPATH": a console script does not put the current directory
    # on sys.path, `python -m` does.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raises on import
        reason = " ".join(str(err).split())
        raise ValueError(f"backbone spec {spec!r}: module {module_name!r} does not import "
                         f"({type(err).__name__}: {reason[:200]})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"backbone spec {spec!r}: module {module_name!r} has no function "
                         f"{function!r}")
    return fn()


def load_backbone(spec: str):
    """The backbone a spec names, in eval mode (module docstring). Errors are one line each:
    ValueError for a malformed spec, a module that does not import, a missing function or a
    result that is not a backbone; FileNotFoundError for a missing folder; ImportError naming
    what to install."""
    kind, target, options = parse_backbone_spec(spec)
    if kind == "vggt":
        from .adapters import VGGTAdapter

        backbone = VGGTAdapter.from_pretrained(target)
    elif kind == "any4d":
        from .any4d import Any4DAdapter, build_any4d_network

        folder = Path(target).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"backbone spec {spec!r}: Any4D folder {str(folder)!r} not "
                                    f"found (expected a checkout of Any4D with configs/ and "
                                    f"checkpoints/)")
        checkpoint = options.get("checkpoint", folder / "checkpoints")
        backbone = Any4DAdapter.from_pretrained(
            checkpoint, lambda: build_any4d_network(folder / "configs"))
    else:
        backbone = _import_callable(target)
    missing = missing_backbone_members(backbone)
    if missing:
        raise ValueError(f"backbone spec {spec!r} gave a {type(backbone).__name__}, not a "
                         f"geometry backbone: it lacks {', '.join(missing)} "
                         f"(vggrpo.geometry.GeometryBackbone)")
    return backbone.eval() if hasattr(backbone, "eval") else backbone
