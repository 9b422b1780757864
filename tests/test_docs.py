"""The Python examples in README.md and docs/*.md work as written.

Every ```python block is parsed; its imports must resolve and every call of a vggrpo callable
must fit that callable's signature (argument count and keyword names), so a renamed argument
cannot leave a stale example behind. Blocks are then run, offline, in a fresh namespace and in
an empty working folder, with the tiny models standing in for the names an example takes as
given (``transformer``, ``vae``, ...; see ``GIVEN``). A block whose fence is preceded by an
HTML comment saying "does not run it" (a Wan2.1-size training run) is only checked.

The README's command table must list every ``vggrpo`` command; every command line in the docs
must use only options its command has; the README's ``grpo.toml`` must pass every check
``vggrpo train`` makes before it loads a model.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _given():
    """The objects an example names without defining them, at the tiny test sizes."""
    from vggrpo.defaults import load_default_lgm, load_tiny_wan_vae, tiny_wan_transformer

    g = torch.Generator().manual_seed(0)
    return {
        "transformer": tiny_wan_transformer(),                 # WanTransformer3DModel
        "vae": load_tiny_wan_vae(),                            # its AutoencoderKLWan
        "lgm": load_default_lgm(),                             # stitched to that VAE
        "prompt_embeds": torch.randn(2, 8, 16, generator=g),   # [P,L,D]
        "neg": torch.randn(2, 8, 16, generator=g),             # negative prompt embeddings
        "noise": torch.randn(2, 16, 3, 12, 20, generator=g),   # [P,C,T',h,w] starting latents
    }


GIVEN = ("transformer", "vae", "lgm", "prompt_embeds", "neg", "noise")


def _blocks():
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            run = not (before.startswith("<!--") and "does not run it" in before)
            out.append(pytest.param(m.group(1), run, id=f"{path.name}:{line}"))
    return out


BLOCKS = _blocks()


def test_the_docs_hold_the_examples_this_file_checks():
    # A change of fence style or file layout would otherwise leave every example unchecked, and
    # a stray marker would leave a runnable one unrun.
    ids = [p.id for p in BLOCKS]
    for name in ("README.md", "grpo.md", "lgm.md"):
        assert any(i.startswith(name + ":") for i in ids), (name, ids)
    check_only = [p for p in BLOCKS if not p.values[1]]
    assert [p.id.split(":")[0] for p in check_only] == ["README.md"], ids
    assert "GRPOTrainer(" in check_only[0].values[0]


def _free_names(tree: ast.AST) -> set:
    bound, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return {n for n in used - bound if not hasattr(builtins, n)}


def _imported(tree: ast.AST) -> dict:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                importlib.import_module(a.name)
                top = a.name.split(".")[0]
                names[a.asname or top] = importlib.import_module(a.asname and a.name or top)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for a in node.names:
                assert hasattr(module, a.name), f"{node.module} has no {a.name}"
                names[a.asname or a.name] = getattr(module, a.name)
    return names


def _resolve(func: ast.expr, names: dict, instances: dict):
    """The object a call's ``f`` or ``a.b.f`` names, when it starts at an imported name, and
    whether it is a method of an instance (``x.f`` after ``x = SomeClass(...)``)."""
    if isinstance(func, ast.Name):
        return names.get(func.id), False
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in instances:
            return getattr(instances[func.value.id], func.attr, None), True
        owner, _ = _resolve(func.value, names, instances)
        return (getattr(owner, func.attr, None) if owner is not None else None), False
    return None, False


def _instances(tree: ast.AST, names: dict) -> dict:
    """``{x: SomeClass}`` for each ``x = SomeClass(...)`` of an imported class."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call):
            cls, _ = _resolve(node.value.func, names, {})
            if inspect.isclass(cls):
                out[node.targets[0].id] = cls
    return out


def _is_ours(obj) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "vggrpo"


@pytest.mark.parametrize("source, run", BLOCKS)
def test_an_example_fits_the_api(source, run):
    tree = ast.parse(source)
    free = _free_names(tree)
    assert free <= set(GIVEN), f"the example uses {sorted(free - set(GIVEN))}, defined nowhere"
    names = _imported(tree)
    instances = _instances(tree, names)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target, method = _resolve(node.func, names, instances)
        if target is None or not callable(target) or not _is_ours(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or \
                any(k.arg is None for k in node.keywords):
            continue
        args = ([None] if method and inspect.isfunction(target) else []) + list(node.args)
        try:
            inspect.signature(target).bind(*args, **{k.arg: k.value for k in node.keywords})
        except TypeError as e:
            pytest.fail(f"line {node.lineno}: {ast.unparse(node.func)}(...) does not fit "
                        f"{inspect.signature(target)}: {e}")
        checked += 1
    assert checked > 0, "the example calls nothing of vggrpo's that could be checked"


@pytest.mark.parametrize("source, run", [p for p in BLOCKS if p.values[1]])
def test_an_example_runs(source, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "my_videos/" in source:  # docs/lgm.md trains on a folder of the user's videos
        from vggrpo.data import make_scene
        from vggrpo.data.video import write_video

        for i in range(2):
            video = make_scene(batch=1, frames=17, height=48, width=80, seed=i).video[0]
            write_video(tmp_path / "my_videos" / f"clip{i}", video)  # png frames
    given = _given()
    free = _free_names(ast.parse(source))
    torch.manual_seed(0)
    exec(compile(source, "<example>", "exec"), {k: given[k] for k in free})


def _command_options() -> dict:
    """``{command: {option strings}}`` of the ``vggrpo`` command line."""
    import argparse

    from vggrpo.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings}
            for name, p in sub.choices.items()}


def _command_lines():
    """``(file, command, rest)`` of every command line in the docs: code spans and lines of
    bash blocks that start with ``vggrpo``, ``python -m vggrpo`` or ``torchrun ... -m``; a
    ``python -m vggrpo.<module>`` line is reported as the command ``vggrpo.<module>``, which
    does not exist (those became ``vggrpo`` commands)."""
    pattern = re.compile(r"^(?:python -m vggrpo\.(\w+)"
                         r"|(?:torchrun .*?-m |python -m )?vggrpo ([a-z][\w-]*))(.*)$")
    for path in [*DOCS, ROOT / "bench" / "README.md"]:
        text = path.read_text(encoding="utf-8")
        lines = re.findall(r"`([^`\n]+)`", text)
        for block in re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", text, re.S | re.M):
            lines += block.replace("\\\n", " ").splitlines()  # continued lines joined
        for line in lines:
            m = pattern.match(line.strip())
            if m:
                module, command, rest = m.groups()
                yield path.name, f"vggrpo.{module}" if module else command, rest


def test_the_readme_cli_table_names_every_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `vggrpo ([\w-]+)[^`]*` \|", text, re.M)
    commands = set(_command_options())
    assert sorted(rows) == sorted(commands), "one README row per command"


def test_every_command_line_in_the_docs_names_real_options():
    options = _command_options()
    lines = list(_command_lines())
    assert len(lines) >= 15 and {c for _, c, _ in lines} >= set(options), lines
    for name, command, rest in lines:
        named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))
        assert command in options, (name, command)
        assert named <= options[command], (name, command, sorted(named - options[command]))


def test_the_readme_train_config_is_accepted_up_to_loading_the_models(tmp_path, monkeypatch,
                                                                        capsys):
    """The README's grpo.toml gets past every key, kind and [grpo]/[reward] check: the run
    stops only where it would load the LGM folder it names, which does not exist here."""
    from vggrpo.cli import main

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1 and "[grpo]" in blocks[0] and "[reward]" in blocks[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo.toml").write_text(blocks[0])
    assert main(["train", "--config", "grpo.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LGM folder not found: runs/lgm/lgm "), err
