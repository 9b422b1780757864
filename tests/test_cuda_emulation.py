"""The launch rewrite behind the emulated CUDA kernel tests (csrc/tests/cuda_emu/).

The emulated kernels themselves are checked against the CPU kernels by the C++ tests
test_cuda_emulated, test_cuda_emulated_asan and test_cuda_emulated_tsan (ctest, part of
`make test`); this file checks the source rewrite that makes them compile as C++.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "csrc" / "tests" / "cuda_emu" / "rewrite_launches.py"


def _module():
    spec = importlib.util.spec_from_file_location("rewrite_launches", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rewrite_keeps_nested_arguments_and_line_count():
    rw = _module()
    src = (
        "void f() {\n"
        "  kern<<<dim3(g(1), 2), 256, 0, s>>>(a, static_cast<T*>(nullptr),\n"
        "      h(b, (c)));\n"
        "  int x = 1 << 3;\n"
        "}\n"
    )
    out, n = rw.rewrite(src)
    assert n == 1
    assert out.count("\n") == src.count("\n")
    assert "::vggrpo_emu::Launch(dim3(g(1), 2), 256, 0, s) << [&] { kern(a, " in out
    assert "h(b, (c))); };" in out
    assert "int x = 1 << 3;" in out


@pytest.mark.parametrize(
    "bad",
    ["  <<<1, 2>>>(a);\n", "  k<<<1, 2>>> ;\n", "  k<<<1, 2>>>(a, (b);\n", "  k<<<1, 2(a);\n"],
)
def test_rewrite_rejects_what_it_cannot_parse(bad):
    rw = _module()
    with pytest.raises(ValueError):
        rw.rewrite(bad)


def test_every_kernel_source_rewrites_every_launch(tmp_path):
    sources = sorted((ROOT / "csrc" / "kernels").glob("*.cu"))
    assert sources, "no csrc/kernels/*.cu"
    for cu in sources:
        out = tmp_path / (cu.stem + ".cpp")
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(cu), str(out)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        text = out.read_text()
        assert "<<<" not in text and ">>>" not in text
        launches = len(re.findall(r"<<<", cu.read_text()))
        assert launches > 0
        assert text.count("::vggrpo_emu::Launch(") == launches
        assert text.startswith(f'#line 1 "{cu}"')


def test_cli_reports_usage_and_errors(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "rewrite_launches.py IN.cu OUT.cpp" in proc.stderr
    bad = tmp_path / "bad.cu"
    bad.write_text("void f() { k<<<1, 2>>> ; }\n")
    out = tmp_path / "bad.cpp"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(bad), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "bad.cu: line 1" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]
