"""The import graph stays a house without circles (scripts/house_check.py, run by make lint):
the checker finds what it is for in a made-up package, and the real one is clean."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "house_check.py"


def _check(package: Path):
    out = subprocess.run([sys.executable, str(CHECK), str(package)], capture_output=True,
                         text=True, timeout=60, cwd=package.parent)
    return out.returncode, out.stdout.splitlines()


def test_the_checker_finds_circles_private_names_and_library_imports_of_the_cli(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import x\n")  # re-exports: not a circle
    (pkg / "cli" / "__init__.py").write_text("from ..a import x\n")
    (pkg / "a.py").write_text("from .b import x\n")
    # An import inside a function still ties the knot.
    (pkg / "b.py").write_text("def x():\n    from .a import y\n")
    (pkg / "c.py").write_text("from .a import _z\nfrom .cli import main\n")
    (pkg / "__main__.py").write_text("from .cli import main\n")  # the entry point may
    code, lines = _check(pkg)
    assert code == 1
    assert sorted(lines) == ["import circle: pkg.a -> pkg.b", "pkg.c imports the CLI (pkg.cli)",
                             "pkg.c imports the private name pkg.a._z"]


def test_the_package_has_no_circle_no_private_import_and_the_cli_at_the_edge():
    code, lines = _check(ROOT / "vggrpo")
    assert code == 0 and lines[0].startswith("house: "), lines
