"""Data for vggrpo: procedural synthetic scenes with exact geometry (see :mod:`vggrpo.data.synthetic`)."""

from vggrpo.data.synthetic import (
    DEFAULT_ROOM,
    TRAJECTORIES,
    Box,
    BoxRoomSpec,
    SceneGeometry,
    camera_centres,
    camera_trajectory,
    make_scene,
    pinhole_intrinsics,
    render_box_room,
    sample_box_layout,
    sample_scene_specs,
    unproject_depth,
)

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
]
