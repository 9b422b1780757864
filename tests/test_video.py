"""vggrpo.data.video: frame folders, video files, resizing, the folder dataset, errors."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vggrpo.data.video import (
    VideoFolderDataset,
    list_frames,
    natural_key,
    read_video,
    resize_video,
    write_video,
)

av = pytest.importorskip("av")

# Measured on the smooth test clip below (PyAV 18, libx264 CRF 16 4:2:0, VP9 CRF 20): mean absolute
# error on the [0, 1] scale 0.0072 (.mp4, .mov), 0.0058 (.webm), 0.0092 (odd size, 4:4:4); most of
# it is compression of such a tiny clip (a 128x192 clip: 0.0031). The bound leaves ~2x room for
# other encoder builds while still catching a wrong channel order, a shifted or dropped frame or a
# range error (each >= 0.05 here). The signed mean error measured 0.0002..0.0012; swscale's default
# chroma path (replicated chroma, truncation) gives ~-0.0045, which the bias bound rejects.
VIDEO_MAE_BOUND = 0.015
VIDEO_BIAS_BOUND = 0.0025


def smooth_clip(T=6, H=32, W=48) -> torch.Tensor:
    """A clip with smooth colours that move and differ frame to frame and channel to channel."""
    y = torch.linspace(0, 1, H)[:, None]
    x = torch.linspace(0, 1, W)[None, :]
    frames = []
    for t in range(T):
        r = 0.5 + 0.4 * torch.sin(4 * x + 0.9 * t)
        g = 0.5 + 0.4 * torch.cos(3 * y + 0.5 * t)
        b = 0.2 + 0.6 * x * y + 0.03 * t
        frames.append(torch.stack([r.expand(H, W), g.expand(H, W), b.expand(H, W)]))
    return torch.stack(frames)


def random_clip(T=5, H=9, W=13, seed=0) -> torch.Tensor:
    return torch.rand(T, 3, H, W, generator=torch.Generator().manual_seed(seed))


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


# --------------------------------------------------------------------------------------------------
# Frame folders
# --------------------------------------------------------------------------------------------------


def test_png_folder_round_trip_is_exact_to_8_bits(tmp_path):
    video = random_clip()
    out = write_video(tmp_path / "clip", video)
    assert out == tmp_path / "clip" and out.is_dir()
    assert len(list_frames(out)) == 5
    back = read_video(out)
    assert back.dtype == torch.float32 and back.shape == (5, 3, 9, 13)
    expected = (video * 255).round() / 255
    torch.testing.assert_close(back, expected, atol=1e-7, rtol=0)
    assert float((back - video).abs().max()) <= 0.5 / 255 + 1e-7
    assert leftovers(tmp_path) == []


def test_natural_order_of_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    # Frame t is a flat image of value 10 * t, written in an order that lexical sorting gets wrong.
    for t in [10, 2, 1, 0, 11, 3]:
        Image.fromarray(np.full((4, 5, 3), 10 * t, np.uint8)).save(folder / f"frame_{t}.png")
    names = [p.name for p in list_frames(folder)]
    assert names == ["frame_0.png", "frame_1.png", "frame_2.png", "frame_3.png", "frame_10.png",
                     "frame_11.png"]
    video = read_video(folder)
    values = (video[:, 0, 0, 0] * 255).round().tolist()
    assert values == [0, 10, 20, 30, 100, 110]
    assert sorted(["b2", "a10", "a2", "A1"], key=natural_key) == ["A1", "a2", "a10", "b2"]


def test_jpg_frames_and_grey_images_become_rgb(tmp_path):
    folder = tmp_path / "jpgs"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(np.full((6, 8), 50 * t + 20, np.uint8), mode="L").save(folder / f"{t}.JPG")
    video = read_video(folder)
    assert video.shape == (3, 3, 6, 8)
    # JPEG of a flat grey image is exact up to a level or so; all channels are equal.
    torch.testing.assert_close(video[:, 0], video[:, 2])
    assert abs(float(video[2].mean()) - 120 / 255) < 2 / 255


def test_frames_stride_and_resize(tmp_path):
    video = random_clip(T=9, H=20, W=30)
    write_video(tmp_path / "clip", video)
    full = read_video(tmp_path / "clip")
    assert read_video(tmp_path / "clip", frames=4).shape[0] == 4
    assert read_video(tmp_path / "clip", frames=50).shape[0] == 9  # short sources stay short
    strided = read_video(tmp_path / "clip", stride=3)
    torch.testing.assert_close(strided, full[::3])
    torch.testing.assert_close(read_video(tmp_path / "clip", stride=2, frames=3), full[0:6:2])
    small = read_video(tmp_path / "clip", height=10, width=12)
    assert small.shape == (9, 3, 10, 12)
    # Antialiased bilinear: the same as torch's, and the mean colour is kept.
    ref = torch.nn.functional.interpolate(full, size=(10, 12), mode="bilinear", antialias=True,
                                          align_corners=False)
    torch.testing.assert_close(small, ref.clamp(0, 1))
    assert read_video(tmp_path / "clip", height=10).shape[-2:] == (10, 15)  # aspect kept
    assert read_video(tmp_path / "clip", width=15).shape[-2:] == (10, 15)
    assert float(small.min()) >= 0 and float(small.max()) <= 1
    assert resize_video(full) is full


def test_frame_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}.*holds no"):
        read_video(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bad / "0.png")
    (bad / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="cannot read frame .*1.png"):
        read_video(bad)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mixed / "0.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(mixed / "1.png")
    with pytest.raises(ValueError, match=r"1.png' is 5x4 but the first frame"):
        read_video(mixed)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a folder of frames and not a video file"):
        read_video(text)
    with pytest.raises(ValueError, match="frames must be a positive int"):
        read_video(empty, frames=0)


# --------------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".webm"])
def test_video_file_round_trip_is_close(tmp_path, suffix):
    video = smooth_clip()
    path = write_video(tmp_path / f"clip{suffix}", video, fps=12)
    back = read_video(path)
    assert back.shape == video.shape and back.dtype == torch.float32
    mae = float((back - video).abs().mean())
    assert mae < VIDEO_MAE_BOUND, mae
    bias = float((back - video).mean())
    assert abs(bias) < VIDEO_BIAS_BOUND, bias
    # Frame t is closer to the source frame t than to its neighbours (no shift / drop / reorder).
    for t in range(video.shape[0]):
        errs = [(back[t] - video[s]).abs().mean() for s in range(video.shape[0])]
        assert int(torch.stack(errs).argmin()) == t
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(12)
    assert leftovers(tmp_path) == []


def test_odd_sized_mp4_keeps_its_size(tmp_path):
    video = smooth_clip(T=3, H=17, W=23)
    back = read_video(write_video(tmp_path / "odd.mp4", video))
    assert back.shape == (3, 3, 17, 23)
    assert float((back - video).abs().mean()) < VIDEO_MAE_BOUND


def test_video_file_frames_stride_resize(tmp_path):
    video = smooth_clip(T=8)
    path = write_video(tmp_path / "clip.mp4", video)
    full = read_video(path)
    assert read_video(path, frames=3).shape == (3, 3, 32, 48)
    torch.testing.assert_close(read_video(path, stride=3), full[::3])
    assert read_video(path, frames=2, height=16, width=20).shape == (2, 3, 16, 20)


def test_corrupt_video_file_is_value_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ValueError, match=f"cannot read video '{bad}'"):
        read_video(bad)
    truncated = tmp_path / "truncated.mp4"
    good = write_video(tmp_path / "good.mp4", smooth_clip())
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.mp4"):
        read_video(truncated)


def test_write_is_atomic_and_replaces(tmp_path):
    target = tmp_path / "out.mp4"
    write_video(target, smooth_clip(T=2))
    write_video(target, smooth_clip(T=4))
    assert read_video(target).shape[0] == 4
    folder = tmp_path / "frames"
    write_video(folder, random_clip(T=5))
    write_video(folder, random_clip(T=2, seed=1))  # the old, longer folder is replaced entirely
    assert len(list_frames(folder)) == 2
    assert sorted(os.listdir(tmp_path)) == ["frames", "out.mp4"]

    # A failing write leaves the previous output untouched and no temporary files behind.
    before = target.read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        write_video(target, torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"video must be \[T,3,H,W\]"):
        write_video(folder, torch.zeros(2, 4, 8, 8))
    assert target.read_bytes() == before and len(list_frames(folder)) == 2
    assert leftovers(tmp_path) == []


def test_write_refuses_bad_targets_and_settings_before_writing(tmp_path):
    clip = random_clip(T=2)
    for fps in (0, -1.0, float("nan"), float("inf"), "24"):
        with pytest.raises(ValueError, match=f"fps must be a positive number, got {fps!r}"):
            write_video(tmp_path / "a.mp4", clip, fps=fps)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.mp4': it is a folder"):
        write_video(tmp_path / "dir.mp4", clip)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="cannot write a frame folder at .*file': a file"):
        write_video(tmp_path / "file", clip)
    with pytest.raises(ValueError, match=r"at least one frame and pixel, got \[0, 3, 8, 8\]"):
        write_video(tmp_path / "b.mp4", torch.zeros(0, 3, 8, 8))
    assert sorted(os.listdir(tmp_path)) == ["dir.mp4", "file"]
    assert os.listdir(tmp_path / "dir.mp4") == [] and (tmp_path / "file").read_bytes() == b"x"


def test_write_failure_mid_encode_cleans_up(tmp_path, monkeypatch):
    import vggrpo.data.video as video_module

    def explode(folder, frames):
        (folder / "frame_00000.png").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(video_module, "_write_frames", explode)
    write_target = tmp_path / "frames"
    with pytest.raises(OSError, match="disk full"):
        write_video(write_target, random_clip())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("version", ["15.1.0", "9.2.0", "unknown"])
def test_too_old_pyav_is_one_clear_error(tmp_path, monkeypatch, version):
    """Before 16, PyAV cannot convert YUV <-> RGB accurately: an error, not a worse video."""
    good = write_video(tmp_path / "good.mp4", smooth_clip(T=2))
    old = type(av)("av")
    old.__version__ = version
    monkeypatch.setitem(sys.modules, "av", old)
    expected = rf"needs PyAV >= 16 .*found {version}; upgrade it with `pip install 'av>=16'`"
    with pytest.raises(ImportError, match=expected):
        read_video(good)
    with pytest.raises(ImportError, match=expected):
        write_video(tmp_path / "new.mp4", smooth_clip(T=2))
    assert sorted(os.listdir(tmp_path)) == ["good.mp4"]


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def test_video_folder_dataset(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "clip_10.mp4", smooth_clip(T=7))
    write_video(root / "clip_2", random_clip(T=6, H=12, W=20))
    write_video(root / "short", random_clip(T=3))
    (root / "readme.txt").write_text("ignored")
    (root / "no_frames").mkdir()
    ds = VideoFolderDataset(root, frames=5, height=16, width=24)
    assert [p.name for p in ds.paths] == ["clip_2", "clip_10.mp4", "short"]
    assert len(ds) == 3
    first = ds[0]
    assert first.shape == (5, 3, 16, 24) and first.dtype == torch.float32
    torch.testing.assert_close(first, read_video(root / "clip_2", frames=5, height=16, width=24))
    assert ds[1].shape == (5, 3, 16, 24)
    with pytest.raises(ValueError, match=r"short' has 3 frames .* fewer than the 5"):
        ds[2]


def test_video_folder_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolderDataset(tmp_path / "missing", 4, 8, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="holds no video files"):
        VideoFolderDataset(empty, 4, 8, 8)
    with pytest.raises(NotADirectoryError):
        VideoFolderDataset(empty / "notes.txt", 4, 8, 8)
    (empty / "broken.mp4").write_bytes(b"garbage" * 50)
    ds = VideoFolderDataset(empty, 4, 8, 8)
    with pytest.raises(ValueError, match="broken.mp4"):
        ds[0]
