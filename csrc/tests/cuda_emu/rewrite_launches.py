"""Rewrite the kernel launches of a CUDA source for the CPU emulation (cuda_runtime.h here).

    python rewrite_launches.py IN.cu OUT.cpp

Each ``name<<<config>>>(args);`` becomes
``::vggrpo_emu::Launch(config) << [&] { name(args); };``; everything else is copied unchanged,
line for line (a ``#line`` directive keeps compiler messages pointing at IN.cu). A launch this
cannot parse is an error, never a silent pass-through.
"""

from __future__ import annotations

import os
import sys
import tempfile


def _matching_paren(text: str, start: int) -> int:
    """Index of the ')' closing the '(' at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses after offset {start}")


def rewrite(text: str) -> tuple[str, int]:
    out = []
    pos = 0
    launches = 0
    while True:
        open_ = text.find("<<<", pos)
        if open_ < 0:
            out.append(text[pos:])
            return "".join(out), launches
        line = text.count("\n", 0, open_) + 1
        name_start = open_
        while name_start > 0 and (text[name_start - 1].isalnum() or text[name_start - 1] in "_:"):
            name_start -= 1
        name = text[name_start:open_]
        close = text.find(">>>", open_)
        if not name or close < 0:
            raise ValueError(f"line {line}: cannot parse the kernel launch")
        config = text[open_ + 3 : close]
        paren = close + 3
        while paren < len(text) and text[paren].isspace():
            paren += 1
        if paren >= len(text) or text[paren] != "(":
            raise ValueError(f"line {line}: expected '(' after '>>>'")
        end = _matching_paren(text, paren)
        args = text[paren + 1 : end]
        out.append(text[pos:name_start])
        out.append(f"::vggrpo_emu::Launch({config}) << [&] {{ {name}({args}); }}")
        pos = end + 1
        launches += 1


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        body, launches = rewrite(text)
    except ValueError as e:
        print(f"{src}: {e}", file=sys.stderr)
        return 1
    if "<<<" in text and launches == 0:
        print(f"{src}: no launch rewritten", file=sys.stderr)
        return 1
    text_out = f'#line 1 "{os.path.abspath(src)}"\n' + body
    if os.path.exists(dst):
        with open(dst, encoding="utf-8") as f:
            if f.read() == text_out:
                return 0  # unchanged: keep the mtime, so builds do not recompile it
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text_out)
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
