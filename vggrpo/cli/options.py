"""What the ``vggrpo`` commands share: one-line errors, option types that refuse a bad value in
the parser (before any work), loaders of what the user points at (``--lgm``, ``--vae``,
``--model``, prompt embeddings, configs), and checks of output paths.

Errors: a problem with the user's input, files or machine (:data:`USER_ERRORS`) prints one
line, ``error: ...``, and exits with code 2; argparse's own errors are one line too
(:class:`OneLineParser`), without the usage block, which ``--help`` shows.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import _io


class UsageError(Exception):
    """A problem with what the user gave us: reported as one line, exit code 2."""


#: What a command reports as ``error: ...`` (one line, exit code 2) rather than a traceback:
#: the user's input, files and machine. RecursionError: JSON nested too deep for the parser;
#: MemoryError: a size that cannot be allocated.
USER_ERRORS = (UsageError, OSError, ValueError, ImportError, RecursionError, MemoryError,
               NotImplementedError)


def error_line(err: BaseException, limit: int = 600) -> str:
    """``error: <message>`` on one line, at most about ``limit`` characters: messages from
    parsers and libraries can span lines (torch's size reports, YAML's context marks)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (RecursionError, MemoryError)):
        text = f"{type(err).__name__}: {text}"
    return "error: " + (text if len(text) <= limit else text[:limit] + "...")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: <prog>: <message>``, exit code
    2, without the usage block (``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} "
                     f"--help)\n")


def int_at_least(low: int):
    what = "a positive int" if low == 1 else f"an int >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def wan_frames(text: str) -> int:
    """A frame count the Wan VAE encodes: 1 + 4k (it maps frames 1 + 4k to latent frames 1 + k)."""
    value = positive_int(text)
    if (value - 1) % 4:
        raise argparse.ArgumentTypeError(f"expected 1 + 4k frames (e.g. 9, 13, 17), got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_float_above(low: float, *, or_equal: bool):
    what = f"a finite number {'>=' if or_equal else '>'} {low:g}"

    def parse(text: str) -> float:
        value = finite_float(text)
        if value < low or (value == low and not or_equal):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_float = finite_float_above(0.0, or_equal=False)
non_negative_float = finite_float_above(0.0, or_equal=True)


def add_video_size_options(parser: argparse.ArgumentParser, *, frames_type,
                           frames_help: str, what: str) -> None:
    """``--frames`` (default 17), ``--height`` 96 and ``--width`` 160 (pixels): how the videos a
    command reads are cut and resized (``reward``, ``eval``, ``train-lgm``)."""
    parser.add_argument("--frames", type=frames_type, default=17,
                        help=f"{frames_help} (default: %(default)s)")
    for name, default in (("height", 96), ("width", 160)):
        parser.add_argument(f"--{name}", type=positive_int, default=default,
                            help=f"{what} are resized to this {name} in pixels "
                                 f"(default: %(default)s)")


def add_backbone_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    from ..geometry.backbone_spec import BACKBONE_SPEC_HELP

    parser.add_argument("--backbone", metavar="SPEC",
                        help=f"the real backbone the LGM folder was stitched to: "
                             f"{BACKBONE_SPEC_HELP} (default: none, for an LGM with its own "
                             f"tiny backbone{extra})")


def load_lgm(spec: str, backbone: Optional[str] = None):
    """The LGM of ``--lgm`` (a folder, or "default"), with the backbone of ``--backbone`` when
    it was stitched to a real one."""
    from ..defaults import load_default_lgm
    from ..geometry.backbone_spec import load_backbone
    from ..lgm import LatentGeometryModel

    if spec == "default":
        if backbone is not None:
            raise UsageError("--backbone is for an LGM folder stitched to a real backbone "
                             "(--lgm DIR); the default LGM carries its own tiny one")
        return load_default_lgm()
    # Before the backbone, which may take minutes to build.
    LatentGeometryModel.read_config(spec)
    # Not through load_default_lgm: a missing folder of the user's is not a missing embedded
    # default, and that error's advice (rebuild the defaults) would send them the wrong way.
    return LatentGeometryModel.from_pretrained(
        spec, backbone=None if backbone is None else load_backbone(backbone))


def load_vae(spec: str):
    from ..defaults import load_tiny_wan_vae

    if spec == "tiny":
        return load_tiny_wan_vae()
    from ..vae import load_vae_folder

    folder = Path(spec)
    sub = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (sub / "config.json").is_file():
        raise UsageError(f"{folder} is not a diffusers VAE folder: expected config.json (or "
                         f"vae/config.json in a pipeline folder)")
    return load_vae_folder(sub)


def check_pipeline_layout(folder: Path) -> None:
    """A local diffusers Wan folder (Wan2.1 T2V-1.3B or Wan2.2 TI2V-5B layout)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    need = ["model_index.json", "transformer/config.json", "vae/config.json"]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise UsageError(f"{folder} does not have the diffusers Wan layout: missing "
                         f"{', '.join(missing)} (expected e.g. Wan2.1-T2V-1.3B-Diffusers or "
                         f"Wan2.2-TI2V-5B-Diffusers)")


def load_transformer(spec: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    from ..defaults import tiny_wan_transformer

    if spec == "tiny":
        model = tiny_wan_transformer(0)
        return model if dtype == torch.float32 else model.to(dtype)
    folder = Path(spec)
    check_pipeline_layout(folder)
    return WanTransformer3DModel.from_pretrained(str(folder / "transformer"), torch_dtype=dtype,
                                                 local_files_only=True)


def load_embeds(path: Optional[str], transformer, count: int = 2):
    """``(prompt_embeds [P,L,D], negative or None)`` from a safetensors file, or seeded random
    embeddings for the tiny model."""
    if path is None:
        dim = int(transformer.config.text_dim)
        gen = torch.Generator().manual_seed(0)
        return torch.randn(count, 8, dim, generator=gen), None
    tensors = _io.load_tensors(path, "prompt embeddings")
    if "prompt_embeds" not in tensors:
        raise UsageError(f"{path} must hold a 'prompt_embeds' tensor [P,L,D] (and optionally "
                         f"'negative_prompt_embeds'); it has {sorted(tensors)}")
    return tensors["prompt_embeds"], tensors.get("negative_prompt_embeds")


def check_lgm_vae(lgm, model: str, vae=None, name: Optional[str] = None) -> None:
    """When the LGM records the VAE it was stitched to, that VAE must be the model's: ``vae``
    when given (sample --decode has one; ``name`` names it), else the model's own (the tiny VAE
    for ``model == "tiny"``, ``model/vae`` for a pipeline folder). Run before the transformer
    loads, which takes minutes for a real model."""
    if lgm.vae_signature is None:
        return
    name = name or f"the VAE of model {model}"
    if vae is None:
        if model != "tiny":
            check_pipeline_layout(Path(model))
        vae = load_vae(model)
    # A matching channel count is not enough: the default LGM (tiny VAE) and Wan2.1 both read
    # 16, and its rewards on Wan2.1 latents would be noise that trains or guides nothing.
    lgm.check_vae(vae, name=name)


def check_finite_rewards(rewards: Dict[str, torch.Tensor], what: str) -> None:
    """A NaN or infinite score is an error, not a result: it would print as ``nan``, and JSON
    cannot hold it."""
    for name, values in rewards.items():
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise UsageError(f"{what}: the {name} reward is {float(values[bad[0]])} for video "
                             f"{bad[0]} ({len(bad)} of {values.numel()} not finite): the LGM's "
                             f"weights or the latents are out of range; nothing written")


def read_config(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the same parser, as a package before it joined the standard library
                import tomli as tomllib

            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UsageError("YAML configs need PyYAML (pip install pyyaml); or use TOML") \
                    from None
            # Data only: never executes anything (safe_load), and no aliases: nine levels of
            # *alias lists make a 281-byte file expand to a billion entries.
            class NoAliasLoader(yaml.SafeLoader):
                def compose_node(self, parent, index):
                    if self.check_event(yaml.AliasEvent):
                        mark = self.peek_event().start_mark
                        raise UsageError(f"config {p}: line {mark.line + 1}: YAML aliases "
                                         f"(*name) are not allowed in a config; write the "
                                         f"value out")
                    return super().compose_node(parent, index)

            data = yaml.load(text, Loader=NoAliasLoader)
        else:
            raise UsageError(f"config {p} must be .toml, .yaml or .yml")
    except UsageError:
        raise
    except Exception as err:  # parser errors of either format
        raise UsageError(f"config {p} could not be parsed: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {p} must hold a table/mapping at the top level")
    return data


def _check_out_parents(out: Path) -> None:
    # The nearest existing ancestor must be a folder, or the write fails only after the work.
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")


def output_folder(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    _check_out_parents(out)
    try:
        _io.check_can_create(out, "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None
    return out


def output_file(path: str) -> Path:
    """An --out that names a file, checked before any work (the atomic rename into it would
    fail only at the end): not a folder, FIFO or device, a name the file system takes, a
    place a file can be created. A symlink is written through (its target replaced)."""
    try:
        return _io.check_writable(path, "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None


def time_pair(a, b, rounds: int) -> Dict[str, float]:
    """Median wall time of ``a()`` and ``b()`` called alternately under no_grad."""
    ta, tb = [], []
    with torch.no_grad():
        a(), b()  # warm-up
        for _ in range(rounds):
            for fn, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"a_median_s": ma, "b_median_s": mb, "ratio": ma / mb, "rounds": rounds}
