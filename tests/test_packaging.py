"""Packaging: the source distribution holds what building vggrpo._C from it needs (MANIFEST.in),
and setup.py's build knobs mean what its docstring says."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _files_under(*folders: str) -> set[str]:
    out = set()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if not name.endswith((".pyc", ".so", ".o")):
                    out.add(str((Path(dirpath) / name).relative_to(ROOT)))
    return out


def test_sdist_holds_every_kernel_source_header_and_weight(tmp_path):
    # egg_info's --egg-base keeps the build's metadata out of the source tree.
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, VGGRPO_NO_CUDA="1"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (archive,) = tmp_path.glob("vggrpo-*.tar.gz")
    with tarfile.open(archive) as tar:
        top = archive.name[: -len(".tar.gz")] + "/"
        packed = {m.name[len(top):] for m in tar.getmembers() if m.isfile()}

    # A CPU build lists no header and no .cu among its sources; a CUDA build from the same
    # sdist needs the .cu files too.
    needed = _files_under("csrc/include", "csrc/kernels", "csrc/torch")
    assert any(f.endswith(".cu") for f in needed) and any(f.endswith(".h") for f in needed)
    assert sorted(needed - packed) == []
    weights = _files_under("vggrpo/weights")
    assert weights and sorted(weights - packed) == []
    assert {"setup.py", "pyproject.toml", "README.md", "vggrpo/py.typed"} <= packed
    # tests/ would come without the helpers and conftest it imports.
    assert not any(f.startswith("tests/") for f in packed)


def _setup_helpers() -> dict:
    """setup.py's module-level functions, without running setup(): importing it would build."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    tree.body = [node for node in tree.body
                 if isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom))
                 and not (isinstance(node, ast.ImportFrom) and node.module == "setuptools")]
    namespace: dict = {}
    exec(compile(tree, "setup.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "8.0;9.0"),
    ({"TORCH_CUDA_ARCH_LIST": ""}, "8.0;9.0"),
    ({"TORCH_CUDA_ARCH_LIST": "  "}, "8.0;9.0"),
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, "9.0"),
    ({"TORCH_CUDA_ARCH_LIST": "8.6;9.0+PTX"}, "8.6;9.0+PTX"),
])
def test_cuda_arch_list_defaults_to_a100_and_h100_when_unset_or_blank(environ, expected):
    assert _setup_helpers()["_cuda_arch_list"](environ) == expected
