"""The ``vggrpo`` command: ``vggrpo <command> --help`` for each. One module per command, at the
edge of the package: the library never imports this package.

Commands:

* ``demo``: the world in miniature (docs/demo.md). GRPO with LoRA on the embedded base
  generator of box-room worlds with the embedded LGM's rewards; the same held-out noise sampled
  before and after, and with reward guidance, judged by referees on the decoded RGB frames that
  training never sees; the latent reward timed against the RGB reward. It writes
  ``summary.json``, ``reward_curve.png``, ``strip.png``, ``samples/{before,after,guided}/*.mp4``
  and the LoRA to ``--out``.
* ``reward``: score videos (files or frame folders) or saved latents (``.safetensors`` with a
  ``latents`` tensor ``[B,C,T,h,w]``).
* ``train-lgm``: stitch an LGM connector to a VAE.
* ``train``: GRPO from a TOML or YAML config, with a model from a local diffusers folder.
* ``sample``: sampling with reward guidance; writes latents, and a video with ``--decode``.
* ``eval``: the Sampson epipolar error and the rewards of a folder of videos, as a CSV and a
  summary.
* ``bench``: the latent reward against the RGB reward, and the fused geometry reward against its
  plain-PyTorch reference, timed on this machine; writes JSON.
* ``build-defaults``: rebuild the embedded tiny models offline.

Errors (a missing folder, a wrong layout, an unreadable video, a bad config, inputs that do not
fit the model) print one line, ``error: ...``, and exit with code 2; a bad option value (a count
below 1, a NaN weight) is refused by the parser, also with code 2, before anything loads. Every
output is written atomically, so nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import bench, build_defaults, demo, evaluate, reward, sample, train, train_lgm
from .options import USER_ERRORS, OneLineParser, error_line

__all__ = ["main", "build_parser", "COMMANDS"]

#: The command modules, in the order ``vggrpo --help`` lists them; each has ``add_parser(sub)``.
COMMANDS = (demo, reward, train_lgm, train, sample, evaluate, bench, build_defaults)


def build_parser() -> argparse.ArgumentParser:
    """The ``vggrpo`` parser with one subparser per command (``args.fn`` runs it)."""
    parser = OneLineParser(prog="vggrpo", description="World-consistent video generation "
                           "with latent geometry rewards (VGGRPO).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``vggrpo`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code (0, or 2
    for a user error, printed as one line on stderr)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.fn(args) or 0)
    except USER_ERRORS as err:
        print(error_line(err), file=sys.stderr)
        return 2
