"""Data for vggrpo: procedural synthetic scenes with exact geometry and rendered RGB video, and a
torch Dataset of them (see :mod:`vggrpo.data.synthetic`); reading and writing user videos
(:mod:`vggrpo.data.video`: mp4/webm through PyAV, imported only when a video file is touched, or
folders of png/jpg frames)."""

from vggrpo.data.synthetic import (
    DEFAULT_ROOM,
    TRAJECTORIES,
    Box,
    BoxRoomSpec,
    SceneGeometry,
    SyntheticSceneDataset,
    camera_centres,
    camera_trajectory,
    make_scene,
    pinhole_intrinsics,
    render_box_room,
    sample_box_layout,
    sample_scene_specs,
    unproject_depth,
)
from vggrpo.data.video import VideoFolderDataset, read_video, resize_video, write_video

__all__ = [
    "Box",
    "DEFAULT_ROOM",
    "TRAJECTORIES",
    "SceneGeometry",
    "BoxRoomSpec",
    "pinhole_intrinsics",
    "camera_trajectory",
    "camera_centres",
    "unproject_depth",
    "render_box_room",
    "sample_box_layout",
    "sample_scene_specs",
    "make_scene",
    "SyntheticSceneDataset",
    "read_video",
    "write_video",
    "resize_video",
    "VideoFolderDataset",
]
