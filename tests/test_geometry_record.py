"""The Geometry record: it refuses fields that disagree with its depths, naming the field."""

import pytest
import torch

from vggrpo.geometry import Geometry

B, T, H, W = 2, 3, 4, 5


def fields(dtype=torch.float32, **changes):
    f = {"extrinsics": torch.zeros(B, T, 3, 4, dtype=dtype),
         "intrinsics": torch.zeros(B, T, 3, 3, dtype=dtype),
         "depths": torch.ones(B, T, H, W, dtype=dtype),
         "pointmaps": torch.zeros(B, T, H, W, 3, dtype=dtype),
         "scene_flow": torch.zeros(B, T, H, W, 3, dtype=dtype),
         "confidences": {"depth": torch.ones(B, T, H, W, dtype=dtype)}}
    f.update(changes)
    return f


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consistent_fields_are_taken_and_mapped(dtype):
    g = Geometry(**fields(dtype))
    assert (g.batch, g.frames, g.image_size) == (B, T, (H, W))
    g64 = g.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in (g64.extrinsics, g64.confidences["depth"]))
    assert Geometry(**fields(dtype, extrinsics=torch.zeros(B, T, 4, 4, dtype=dtype),
                             scene_flow=None, confidences=None)).scene_flow is None


@pytest.mark.parametrize("changes,expected", [
    ({"depths": torch.ones(B, T, H)}, r"depths must be \[B,T,H,W\], got \(2, 3, 4\)"),
    ({"extrinsics": torch.zeros(B, T, 3, 3)},
     r"extrinsics must be \[2, 3, 3, 4\] or \[2, 3, 4, 4\] \(from depths \[2, 3, 4, 5\]\), "
     r"got \[2, 3, 3, 3\]"),
    ({"intrinsics": torch.zeros(B, T + 1, 3, 3)}, r"intrinsics must be \[2, 3, 3, 3\]"),
    ({"pointmaps": torch.zeros(B, T, W, H, 3)}, r"pointmaps must be \[2, 3, 4, 5, 3\]"),
    ({"scene_flow": torch.zeros(B, T, H, W)}, r"scene_flow must be \[2, 3, 4, 5, 3\]"),
    ({"confidences": {"depth": torch.ones(B, T, H, W, 1)}},
     r"confidences\['depth'\] must be \[2, 3, 4, 5\], got \[2, 3, 4, 5, 1\]"),
    ({"extrinsics": torch.zeros(B, T, 3, 4, dtype=torch.float64)},
     r"extrinsics is torch.float64 on cpu; every field must match depths \(torch.float32 on cpu\)"),
    ({"confidences": {"depth": torch.ones(B, T, H, W, dtype=torch.float16)}},
     r"confidences\['depth'\] is torch.float16 on cpu; every field must match depths"),
    ({"depths": torch.ones(B, T, H, W, dtype=torch.int64),
      "extrinsics": torch.zeros(B, T, 3, 4, dtype=torch.int64),
      "intrinsics": torch.zeros(B, T, 3, 3, dtype=torch.int64),
      "pointmaps": torch.zeros(B, T, H, W, 3, dtype=torch.int64), "scene_flow": None,
      "confidences": None}, "depths must be floating point, got torch.int64"),
])
def test_disagreeing_fields_are_named(changes, expected):
    with pytest.raises(ValueError, match=f"^{expected}"):
        Geometry(**fields(**changes))


@pytest.mark.parametrize("changes,expected", [
    ({"pointmaps": [[0.0]]}, "pointmaps must be a torch.Tensor, got list"),
    ({"confidences": torch.ones(B, T, H, W)}, "confidences must be a dict of tensors or None, "
                                               "got Tensor"),
    ({"confidences": {"depth": 1.0}}, r"confidences\['depth'\] must be a torch.Tensor, got float"),
])
def test_fields_that_are_not_tensors_are_a_type_error(changes, expected):
    with pytest.raises(TypeError, match=f"^{expected}$"):
        Geometry(**fields(**changes))


def test_a_field_on_another_device_is_named():
    # The meta device stands in for a GPU: the check reads only the tensors' metadata.
    with pytest.raises(ValueError, match=r"^intrinsics is torch.float32 on meta; every field"):
        Geometry(**fields(intrinsics=torch.zeros(B, T, 3, 3, device="meta")))
