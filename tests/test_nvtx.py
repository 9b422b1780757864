"""NVTX ranges: the GRPO phases and every op push a named range; nothing breaks without nvtx."""

import contextlib

import pytest
import torch

import vggrpo
from vggrpo import _nvtx
from vggrpo.data import make_scene


class Recorder:
    def __init__(self):
        self.names = []

    def annotate(self, name, domain=None):
        assert domain == "vggrpo"
        self.names.append(name)
        return contextlib.nullcontext()


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(_nvtx, "_nvtx", rec)
    return rec


def test_rewards_and_ops_push_ranges(recorder):
    s = make_scene(1, 4, 12, 16, moving_objects=1)
    vggrpo.camera_motion_reward(s.extrinsics)
    vggrpo.geometry_reprojection_reward(s.pointmaps, s.depths, s.extrinsics, s.intrinsics,
                                        s.scene_flow)
    vggrpo.ops.so3_log(torch.eye(3)[None])
    assert recorder.names[:2] == ["vggrpo.camera_motion_reward", "vggrpo.motion_smoothness"]
    assert "vggrpo.geometry_reprojection_reward" in recorder.names
    assert "vggrpo.reprojection_errors" in recorder.names
    assert recorder.names[-1] == "vggrpo.so3_log"


def test_grpo_phases_push_ranges(recorder):
    from grpo_setup import make_trainer

    trainer = make_trainer(group_size=2, num_inference_steps=3, sde_window=(0, 1))
    trainer.train_step()
    phases = [n for n in recorder.names if n in ("vggrpo.rollout", "vggrpo.reward",
                                                 "vggrpo.update")]
    assert phases == ["vggrpo.rollout", "vggrpo.reward", "vggrpo.update"]
    assert "vggrpo.lgm" in recorder.names


def test_no_nvtx_package_is_a_no_op(monkeypatch):
    monkeypatch.setattr(_nvtx, "_nvtx", None)
    with _nvtx.nvtx_range("x"):
        pass
    s = make_scene(1, 4, 12, 16)
    assert vggrpo.camera_motion_reward(s.extrinsics).shape == (1,)


def test_ranges_do_not_break_compiled_graphs(recorder):
    s = make_scene(1, 4, 12, 16)
    fn = torch.compile(vggrpo.camera_motion_reward, fullgraph=True, backend="aot_eager")
    assert torch.allclose(fn(s.extrinsics), vggrpo.camera_motion_reward(s.extrinsics))
