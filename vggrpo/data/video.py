"""Reading and writing user videos: video files (PyAV) and folders of frames (Pillow).

Videos are tensors ``[T,3,H,W]`` float32 in [0, 1] (RGB, frame-major), the layout the LGM trains on
and the samplers produce.

* :func:`read_video` reads an ``.mp4`` / ``.mov`` / ``.webm`` / ``.mkv`` / ``.avi`` file (PyAV
  >= 16, ``pip install "av>=16"``) or a folder of ``.png`` / ``.jpg`` / ``.jpeg`` frames (ordered
  by the numbers in their names: ``frame_2`` before ``frame_10``), with optional temporal
  subsampling (``stride``), truncation (``frames``) and resizing (bilinear with antialiasing).
* :func:`write_video` writes a video file (H.264 for ``.mp4`` / ``.mov`` / ``.mkv`` / ``.avi``,
  VP9 for ``.webm``) or, for a path without a video suffix, a folder of PNG frames; atomically:
  everything is written to a hidden temporary sibling first and then renamed into place with
  ``os.replace``, so readers never see a half-written file.
* :class:`VideoFolderDataset` serves every video file / frame folder directly under a root folder as
  ``[frames,3,H,W]`` clips.

Errors: a missing path is a FileNotFoundError; an unreadable or corrupt file, an empty frame folder
or frames of different sizes are ValueErrors naming the path and the reason.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
import warnings
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import is_positive_int

__all__ = [
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MAX_FRAME_PIXELS",
    "natural_key",
    "list_frames",
    "read_video",
    "write_video",
    "resize_video",
    "VideoFolderDataset",
    "import_av",
]

PathLike = Union[str, "os.PathLike[str]"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# PyAV 16 is the oldest release that takes swscale flags as a plain int and converts exactly as
# 18 does (measured: bit-identical RGB after a YUV round trip on 16.0, 16.1, 17.1 and 18.1). 15.1
# accepts the int but converts differently; 14 and older raise on it.
AV_MIN_VERSION = (16, 0)
AV_INSTALL_HINT = f"pip install 'av>={AV_MIN_VERSION[0]}'"

# libswscale's flag bits (swscale.h), fixed across FFmpeg releases. PyAV 18 names them in its
# Interpolation enum, 16 and 17 do not, so they are passed as an int.
_SWS_BILINEAR = 0x2
_SWS_FULL_CHR_H_INT = 0x2000
_SWS_ACCURATE_RND = 0x40000


def import_av():
    """The ``av`` module (PyAV), or one ImportError saying how to install a version that can
    do the accurate YUV <-> RGB conversion (>= 16). Commands that will write videos call it
    before any work."""
    try:
        import av
    except ImportError as err:
        raise ImportError(f"reading and writing video files needs PyAV ({err}); install it with "
                          f"`{AV_INSTALL_HINT}`") from err
    found = str(getattr(av, "__version__", "unknown"))
    numbers = re.match(r"(\d+)\.(\d+)", found)
    if numbers is None or (int(numbers[1]), int(numbers[2])) < AV_MIN_VERSION:
        raise ImportError(f"reading and writing video files needs PyAV >= {AV_MIN_VERSION[0]} "
                          f"(older releases cannot do the accurate YUV <-> RGB conversion), found "
                          f"{found}; upgrade it with `{AV_INSTALL_HINT}`")
    return av


def natural_key(name: str) -> Tuple:
    """Sort key that orders the digit runs of ``name`` by value (``frame_2`` < ``frame_10``).

    Text parts compare case-insensitively; the full name breaks ties so the order is total.
    """
    parts = re.split(r"(\d+)", name)
    key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")
    return key + ((2, 0, name),)


def _is_hidden(path: Path) -> bool:
    # Hidden entries include write_video's temporary files and folders.
    return path.name.startswith(".")


def list_frames(folder: PathLike) -> List[Path]:
    """The image files (``.png``, ``.jpg``, ``.jpeg``, any case) directly in ``folder``, in natural
    order of their names; hidden files are skipped."""
    folder = Path(folder)
    files = [p for p in folder.iterdir()
             if p.is_file() and not _is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is None:
        return
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _wanted(stride: int, frames: Optional[int]):
    """Yields whether to keep each source frame (every ``stride``-th, at most ``frames``)."""
    kept = 0
    index = 0
    while True:
        if frames is not None and kept >= frames:
            return
        take = index % stride == 0
        kept += take
        index += 1
        yield take


#: The most pixels a frame file may declare (8192 x 8192): its header is checked before any
#: pixel is decoded, so a small file claiming a huge image costs nothing.
MAX_FRAME_PIXELS = 8192 * 8192


def _read_frame_folder(folder: Path, stride: int, frames: Optional[int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = list_frames(folder)
    if not files:
        raise ValueError(f"frame folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} frames")
    files = files[::stride]
    if frames is not None:
        files = files[:frames]
    arrays = []
    for f in files:
        try:
            with warnings.catch_warnings():
                # Refused below with the file's name, before any pixel is decoded.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(f) as img:
                    width, height = img.size
                    if width * height > MAX_FRAME_PIXELS:
                        raise ValueError(f"it declares {width}x{height} pixels, more than the "
                                         f"{MAX_FRAME_PIXELS} a frame may have (a "
                                         f"decompression bomb, or far too large a frame)")
                    arr = np.asarray(img.convert("RGB"))
        except Image.DecompressionBombError as err:
            raise ValueError(f"cannot read frame {str(f)!r}: {err}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read frame {str(f)!r}: {err}") from None
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(
                f"frame {str(f)!r} is {arr.shape[1]}x{arr.shape[0]} but the first frame "
                f"{str(files[0])!r} is {arrays[0].shape[1]}x{arrays[0].shape[0]} (W x H)"
            )
        arrays.append(arr)
    return np.stack(arrays)


def _to_rgb(frame) -> np.ndarray:
    # swscale's default YUV 4:2:0 -> RGB path replicates chroma and truncates: on smooth content
    # that costs ~4x the error (and a -1 level bias) of interpolated chroma with accurate rounding.
    return frame.reformat(format="rgb24",
                          interpolation=_SWS_BILINEAR | _SWS_ACCURATE_RND | _SWS_FULL_CHR_H_INT,
                          src_color_range=frame.color_range).to_ndarray()


def _read_video_file(path: Path, stride: int, frames: Optional[int]) -> np.ndarray:
    av = import_av()
    arrays = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"cannot read video {str(path)!r}: it has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # decoding is the slow part; use the codec's threads
            wanted = _wanted(stride, frames)
            for frame in container.decode(stream):
                take = next(wanted, None)
                if take is None:
                    break
                if take:
                    arrays.append(_to_rgb(frame))
    except (av.FFmpegError, OSError) as err:
        raise ValueError(f"cannot read video {str(path)!r}: {err}") from err
    if not arrays:
        raise ValueError(f"cannot read video {str(path)!r}: no frames could be decoded")
    return np.stack(arrays)


def resize_video(
    video: Tensor, height: Optional[int] = None, width: Optional[int] = None
) -> Tensor:
    """Bilinear resize with antialiasing of ``video`` ``[T,3,H,W]`` (float) to ``height x width``.

    One of the two may be None: it is then chosen to keep the aspect ratio (rounded, >= 1). Values
    stay within the input range (the antialiasing filter has non-negative weights).
    """
    _check_positive("height", height)
    _check_positive("width", width)
    H, W = video.shape[-2:]
    if height is None and width is None:
        return video
    if height is None:
        height = max(1, round(H * width / W))
    if width is None:
        width = max(1, round(W * height / H))
    if (height, width) == (H, W):
        return video
    return F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)


def read_video(
    path: PathLike,
    *,
    frames: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    stride: int = 1,
) -> Tensor:
    """A video as ``[T,3,H,W]`` float32 RGB in [0, 1].

    ``path``: a video file (``.mp4``, ``.mov``, ``.webm``, ``.mkv``, ``.avi``; needs PyAV) or a
    folder of ``.png`` / ``.jpg`` / ``.jpeg`` frames in natural order of their names (all the same
    size). ``stride`` keeps every ``stride``-th frame (temporal subsampling, starting at frame 0);
    ``frames`` then keeps at most the first ``frames`` of those (decoding stops there), so ``T`` may
    be smaller when the source is short. ``height`` / ``width`` resize (bilinear, antialiased); with
    only one given the aspect ratio is kept.

    FileNotFoundError when ``path`` does not exist; ValueError naming the path and the reason for
    an unsupported suffix, a corrupt or undecodable file, an empty frame folder or frames of
    different sizes.
    """
    _check_positive("frames", frames)
    _check_positive("stride", stride)
    _check_positive("height", height)
    _check_positive("width", width)
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"video {str(p)!r} does not exist")
    if p.is_dir():
        arrays = _read_frame_folder(p, stride, frames)
    elif p.suffix.lower() in VIDEO_SUFFIXES:
        arrays = _read_video_file(p, stride, frames)
    else:
        raise ValueError(
            f"cannot read {str(p)!r}: not a folder of frames and not a video file "
            f"({', '.join(VIDEO_SUFFIXES)})"
        )
    # Converted in chunks so a long full-resolution clip is never held in float32 at full size.
    chunks = []
    for start in range(0, arrays.shape[0], 16):
        part = torch.from_numpy(arrays[start:start + 16]).permute(0, 3, 1, 2)
        part = part.to(torch.float32).div_(255.0)
        chunks.append(resize_video(part, height, width).clamp_(0.0, 1.0))
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _to_uint8(video: Tensor) -> np.ndarray:
    if not isinstance(video, Tensor) or video.dim() != 4 or video.shape[1] != 3:
        got = list(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be [T,3,H,W] with values in [0,1], got {got}")
    if video.shape[0] < 1 or video.shape[2] < 1 or video.shape[3] < 1:
        raise ValueError(f"video must have at least one frame and pixel, got {list(video.shape)}")
    v = video.detach().to("cpu")
    if v.dtype == torch.uint8:
        out = v
    else:
        if not bool(torch.isfinite(v).all()):
            raise ValueError("video has non-finite values")
        out = (v.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous().numpy()  # [T,H,W,3]


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    # Same folder as the target so os.replace is a rename within one file system (atomic).
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}{suffix}"


def _encode_file(path: Path, frames: np.ndarray, fps: float) -> None:
    av = import_av()
    T, H, W, _ = frames.shape
    suffix = path.suffix.lower()
    if suffix == ".webm":
        candidates = ["libvpx-vp9", "libvpx"]
    else:
        candidates = ["libx264", "h264", "mpeg4"]
    codec = next((c for c in candidates if c in av.codecs_available), None)
    if codec is None:
        raise RuntimeError(f"this PyAV build has none of the encoders {candidates} for {suffix}")
    # 4:2:0 chroma needs even sizes; odd-sized videos keep full chroma instead of being cropped.
    even = H % 2 == 0 and W % 2 == 0
    pix_fmt = "yuv420p" if even or codec == "mpeg4" else "yuv444p"
    if codec == "mpeg4" and not even:
        raise ValueError(f"the mpeg4 encoder needs even frame sizes, got {H}x{W}")
    options = {}
    if codec in ("libx264", "h264"):
        options = {"crf": "16", "preset": "medium"}
    elif codec.startswith("libvpx"):
        options = {"crf": "20", "b": "0"}
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), mode="w", format={".mov": "mov", ".mkv": "matroska",
                                                      ".webm": "webm", ".avi": "avi"}.get(suffix,
                                                                                          "mp4"))
    try:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        # Converted here rather than by the encoder so the chroma is rounded accurately.
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(frames[t], format="rgb24")
            frame = frame.reformat(format=pix_fmt, interpolation=_SWS_BILINEAR | _SWS_ACCURATE_RND)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    digits = max(5, len(str(len(frames) - 1)))
    for t, arr in enumerate(frames):
        Image.fromarray(arr).save(folder / f"frame_{t:0{digits}d}.png")


def write_video(path: PathLike, video: Tensor, fps: float = 8) -> Path:
    """Write ``video`` ``[T,3,H,W]`` (float in [0,1], clamped and rounded to 8 bits; or uint8).

    A path with a video suffix (any case) becomes a video file: ``.mp4`` / ``.mov`` / ``.mkv`` /
    ``.avi`` H.264 (CRF 16, ``yuv420p``, or ``yuv444p`` when a side is odd, which keeps the exact
    size but fewer players support it), ``.webm`` VP9 (CRF 20); ``fps`` frames per second.
    Any other path becomes a folder of lossless PNG frames ``frame_00000.png, ...``.
    An H.264 file is not byte-reproducible: 40 writes of the same frames, each followed by a
    decode, gave 5 different files (x264 through PyAV 18 and 19, with one encoder thread or
    several), whose frames differ by up to 8 of 255 levels in a few pixels. Write PNG frames
    where exact pixels matter.

    The output is written to a hidden temporary sibling and moved into place with ``os.replace``;
    an existing target is replaced (for a folder: moved aside, the new one renamed in, the old one
    deleted). The parent folder is created if needed. Returns the path.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    frames = _to_uint8(video)
    p = Path(os.fspath(path)).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    is_file = p.suffix.lower() in VIDEO_SUFFIXES
    if is_file:
        if p.is_dir():
            raise IsADirectoryError(f"cannot write video file {str(p)!r}: it is a folder")
        tmp = _temp_sibling(p, p.suffix)
        try:
            _encode_file(tmp, frames, float(fps))
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
        return p

    if p.exists() and not p.is_dir():
        raise FileExistsError(f"cannot write a frame folder at {str(p)!r}: a file is there")
    tmp = _temp_sibling(p)
    old = None
    try:
        tmp.mkdir()
        _write_frames(tmp, frames)
        if p.exists():
            old = _temp_sibling(p, ".old")
            os.replace(p, old)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            if p.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:  # the swap failed half-way: put the previous frames back
                os.replace(old, p)
    return p


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class VideoFolderDataset(torch.utils.data.Dataset):
    """Fixed-size clips of the videos directly under ``root``.

    Items are every video file (``.mp4``, ``.mov``, ``.webm``, ``.mkv``, ``.avi``) and every
    sub-folder holding ``.png`` / ``.jpg`` / ``.jpeg`` frames directly under ``root`` (hidden
    entries skipped; natural order of names). ``dataset[i]`` is the first ``frames`` frames (after
    taking every ``stride``-th) resized to ``height x width`` (aspect ratio not kept):
    ``[frames,3,height,width]`` float32 in [0, 1]. ``paths`` lists the sources.

    FileNotFoundError when ``root`` does not exist, NotADirectoryError when it is a file,
    ValueError when it holds no videos; reading a clip shorter than ``frames`` is a ValueError
    naming the file.
    """

    def __init__(self, root: PathLike, frames: int, height: int, width: int, *, stride: int = 1):
        for name, value in (("frames", frames), ("height", height), ("width", width),
                            ("stride", stride)):
            _check_positive(name, value)
        self.root = Path(os.fspath(root)).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"video folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"video folder {str(self.root)!r} is not a folder")
        self.frames, self.height, self.width, self.stride = frames, height, width, stride
        paths = []
        for entry in self.root.iterdir():
            if _is_hidden(entry):
                continue
            if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
                paths.append(entry)
            elif entry.is_dir() and list_frames(entry):
                paths.append(entry)
        if not paths:
            raise ValueError(
                f"video folder {str(self.root)!r} holds no video files "
                f"({', '.join(VIDEO_SUFFIXES)}) or frame folders ({', '.join(IMAGE_SUFFIXES)})"
            )
        self.paths: Sequence[Path] = tuple(sorted(paths, key=lambda p: natural_key(p.name)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        path = self.paths[index]
        video = read_video(path, frames=self.frames, height=self.height, width=self.width,
                           stride=self.stride)
        if video.shape[0] < self.frames:
            raise ValueError(
                f"video {str(path)!r} has {video.shape[0]} frames (stride {self.stride}), fewer "
                f"than the {self.frames} this dataset needs"
            )
        return video
