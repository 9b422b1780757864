"""``vggrpo eval``: the Sampson epipolar error and the rewards of a folder of videos, as a CSV
and a summary."""

from __future__ import annotations

import json

from .options import add_video_size_options, output_folder, positive_int


def add_parser(sub) -> None:
    """Add this command to the ``vggrpo`` subparsers ``sub``."""
    e = sub.add_parser("eval", help="Sampson epipolar error and rewards of a folder of videos")
    e.add_argument("folder", help="folder of videos (mp4/webm) or frame folders")
    e.add_argument("--out", required=True, help="folder for metrics.csv and summary.json")
    add_video_size_options(e, frames_type=positive_int,
                           frames_help="frames read per video, at least 9", what="videos")
    e.set_defaults(fn=run)


def run(args) -> int:
    from ..evaluation import evaluate_folder

    summary = evaluate_folder(args.folder, output_folder(args.out), frames=args.frames,
                              height=args.height, width=args.width)
    print(json.dumps(summary, indent=2))
    return 0
