"""A training run's folder loses nothing and says when it cannot go on (issue #34): checkpoints
committed whole, the history kept across resumes, tampered states refused with one line, a NaN
never saved, atomic writes that respect what the path is."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from vggrpo import _io
from vggrpo.cli import main
from vggrpo.grpo import LORA_FILE, checkpoint_folders, latest_checkpoint

from grpo_setup import make_trainer

SMALL = dict(group_size=2, prompts_per_step=1, num_inference_steps=3, sde_window=(0, 2),
             lora_rank=2, lora_alpha=2.0)
SKIP = {"time_rollout_s", "time_reward_s", "time_update_s", "peak_memory_bytes"}


def _steps(history):
    return [h["step"] for h in history]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 3 steps, a checkpoint after each (the newest 2 kept)."""
    folder = tmp_path_factory.mktemp("run")
    trainer = make_trainer(**SMALL, steps=3)
    trainer.train(out_dir=folder, checkpoint_every=1, progress=False)
    return folder, trainer


def test_a_run_folder_holds_whole_checkpoints_and_the_exports(run):
    folder, trainer = run
    assert [k for k, _ in checkpoint_folders(folder)] == [2, 3]
    assert latest_checkpoint(folder) == folder / "checkpoint-3"
    assert sorted(p.name for p in (folder / "checkpoint-3").iterdir()) == \
        [LORA_FILE, "trainer_state.pt"]
    exported, kept = load_file(folder / LORA_FILE), load_file(folder / "checkpoint-3" / LORA_FILE)
    assert sorted(exported) == sorted(kept) and all(torch.equal(exported[k], kept[k])
                                                    for k in kept)
    history = json.loads((folder / "history.json").read_text())
    assert _steps(history["history"]) == [0, 1, 2] and history["checkpoint"] == "checkpoint-3"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_resuming_keeps_the_history_and_a_larger_steps_extends_the_run(run, tmp_path):
    folder, straight = run
    # The first 2 steps, then a resume that extends the run to 3: the same as 3 straight.
    make_trainer(**SMALL, steps=2).train(out_dir=tmp_path, progress=False)
    resumed = make_trainer(**SMALL, steps=3)
    assert resumed.load_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert _steps(resumed.history) == [0, 1]
    resumed.train(out_dir=tmp_path, progress=False)
    assert _steps(json.loads((tmp_path / "history.json").read_text())["history"]) == [0, 1, 2]
    a, b = straight.lora_state_dict(), resumed.lora_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in h.items() if k not in SKIP} for h in resumed.history] == \
        [{k: v for k, v in h.items() if k not in SKIP} for h in straight.history]
    # Resuming a finished run trains nothing and keeps every step of its history.
    again = make_trainer(**SMALL, steps=3)
    again.load_checkpoint(tmp_path)
    assert again.train(out_dir=tmp_path, progress=False) == []
    assert _steps(json.loads((tmp_path / "history.json").read_text())["history"]) == [0, 1, 2]


def test_resume_refuses_another_config_naming_the_key_and_a_shrunken_steps(run):
    folder, _ = run
    with pytest.raises(ValueError, match=r"another config \(lr: 0.01 there, 0.005 here\); only "
                                         r"steps may change"):
        make_trainer(**SMALL, steps=3, lr=5e-3).load_checkpoint(folder)
    with pytest.raises(ValueError, match="it is at step 3, beyond this config's steps = 2"):
        make_trainer(**SMALL, steps=2).load_checkpoint(folder)


def _tampered(run, tmp_path, change):
    """A copy of the run's newest checkpoint with its state changed by ``change(state)``."""
    import shutil

    folder, _ = run
    copy = tmp_path / "checkpoint-3"
    shutil.copytree(folder / "checkpoint-3", copy)
    state = torch.load(copy / "trainer_state.pt", weights_only=True)
    state = change(state)
    _io.save_state(copy / "trainer_state.pt", state)
    return copy


def _set(key, value):
    def change(state):
        state[key] = value
        return state
    return change


def _lr(value):
    def change(state):
        state["optimizer"]["param_groups"][0]["lr"] = value
        return state
    return change


def _moment(shape=None, value=None):
    def change(state):
        moments = state["optimizer"]["state"][0]
        moments["exp_avg"] = torch.zeros(shape) if shape else moments["exp_avg"].fill_(value)
        return state
    return change


@pytest.mark.parametrize("change,expected", [
    (lambda s: [s], "trainer_state.pt holds a list, expected a dict"),
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "lacks ['rng']"),
    (_set("rng", torch.zeros(3, dtype=torch.uint8)), "rng must be torch's RNG state"),
    (_set("step", -5), "step must be an int in [0, its config's steps], got -5"),
    (_set("step", 10**9), "step must be an int in [0, its config's steps], got 1000000000"),
    (_set("step", 2.7), "step must be an int in [0, its config's steps], got 2.7"),
    (_set("step", 2), "is of step 2, not of its folder's"),
    (_set("history", "x" * 10**6), "history must be a list of at most 3 step records"),
    (lambda s: {**s, "config": {**s["config"], "lr": [[[1]]] * 10**5}},
     "lr: [[[1]], [[1]], [[1]], [[1]], [[1]], [[1]], ...] there, 0.01 here"),
    (_lr(float("nan")), "optimizer lr must be finite and >= 0, got nan"),
    (_moment(shape=(7, 7)), "optimizer exp_avg of parameter 0 is [7, 7], the parameter"),
    (_moment(value=float("inf")), "optimizer exp_avg of parameter 0 must be a finite tensor"),
    (_set("schedule", []), "schedule must be the LR schedule's state"),
], ids=["list", "missing-key", "rng", "step-negative", "step-huge", "step-float",
        "step-of-another-folder", "history", "config-echo-capped", "nan-lr", "moment-shape",
        "moment-inf", "schedule"])
def test_a_tampered_state_is_one_line_before_the_trainer_changes(run, tmp_path, change,
                                                                 expected):
    copy = _tampered(run, tmp_path, change)
    trainer = make_trainer(**SMALL, steps=3)
    before = {k: v.clone() for k, v in trainer.lora_state_dict().items()}
    with pytest.raises(ValueError) as err:
        trainer.load_checkpoint(copy)
    message = str(err.value)
    assert expected in message and "\n" not in message and len(message) < 600, message
    assert trainer.step_index == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.lora_state_dict().items())


def test_a_nan_adapter_stops_the_run_and_no_checkpoint_replaces_the_good_one(run, tmp_path):
    import shutil

    folder, _ = run
    shutil.copytree(folder, tmp_path / "run")
    trainer = make_trainer(**SMALL, steps=5)
    trainer.load_checkpoint(tmp_path / "run")
    good = (tmp_path / "run" / LORA_FILE).read_bytes()
    update = trainer.update

    def nan_update(rollout, adv):  # an update that diverges, as too high an lr would
        log = update(rollout, adv)
        with torch.no_grad():
            next(iter(trainer.lora_state_dict().values())).fill_(float("nan"))
        return log

    trainer.update = nan_update
    with pytest.raises(ValueError, match="step 3: the update made the adapter non-finite"):
        trainer.train(out_dir=tmp_path / "run", checkpoint_every=1, progress=False)
    assert trainer.step_index == 3
    with pytest.raises(ValueError, match="no checkpoint written, the last one in"):
        trainer.save_checkpoint(tmp_path / "run")
    assert (tmp_path / "run" / LORA_FILE).read_bytes() == good
    assert [k for k, _ in checkpoint_folders(tmp_path / "run")] == [2, 3]


def test_saving_into_a_folder_with_a_later_checkpoint_is_refused(run):
    folder, _ = run
    with pytest.raises(ValueError, match="holds checkpoint-3, a later step than this trainer's 0"):
        make_trainer(**SMALL, steps=3).save_checkpoint(folder)


def test_train_refuses_a_run_folder_without_resume(run, capsys):
    folder, _ = run
    config = folder.parent / "grpo.toml"
    config.write_text('model = "tiny"\n[grpo]\ngroup_size = 2\nsteps = 1\n')
    assert main(["train", "--config", str(config), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {folder} holds a run (checkpoint-3); pass --resume to continue "
                   f"it, or choose another folder"]


# -- atomic writes ---------------------------------------------------------------------------------

def test_an_atomic_write_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert _io.save_json(link, {"a": 1}) == target
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "new.json")
    _io.save_json(dangling, {"b": 2})
    assert dangling.is_symlink() and json.loads((tmp_path / "new.json").read_text()) == {"b": 2}


def test_an_atomic_write_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file .* refusing to replace it"):
        _io.save_json(fifo, {})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(ValueError, match="/dev/null exists and is not a regular file"):
        _io.save_json("/dev/null", {})
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(ValueError, match="the file name is 300 bytes; file systems allow 255"):
        _io.save_json(tmp_path / ("x" * 300), {})
    with pytest.raises(ValueError, match=f"output {tmp_path} is a folder; expected the path"):
        _io.save_json(tmp_path, {})
    with pytest.raises(ValueError, match="refusing to write a result holding NaN or infinity"):
        _io.save_json(tmp_path / "nan.json", {"x": math.nan})
    assert not (tmp_path / "nan.json").exists()


@pytest.mark.parametrize("out,expected", [
    ("/dev/null", "exists and is not a regular file"),
    ("/proc/x.json", "cannot write"),
    ("x" * 300 + ".json", "file systems allow 255"),
])
def test_reward_out_paths_are_refused_before_any_work(tmp_path, capsys, out, expected):
    out = out if out.startswith("/") else str(tmp_path / out)
    assert main(["reward", "--out", out, str(tmp_path / "absent.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and expected in err[0], err


# -- weight files of the wrong kind ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_weight_files_of_integer_or_bool_dtype_are_refused(tmp_path, dtype):
    from safetensors.torch import save_file

    from vggrpo.geometry.checkpoints import load_weights_into

    module = torch.nn.Linear(3, 2)
    save_file({k: v.to(dtype) for k, v in module.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    before = module.weight.detach().clone()
    with pytest.raises(ValueError, match=f"expected floating-point tensors, but 'bias' is "
                                         f"{dtype}"):
        load_weights_into(module, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="expected floating-point tensors"):
        _io.load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(module.weight, before)


# -- committing a folder ---------------------------------------------------------------------

def test_a_folder_commit_killed_between_its_renames_is_recovered(tmp_path):
    def write(text):
        return lambda tmp: (tmp / "a.txt").write_text(text)

    folder = _io.commit_folder(tmp_path / "checkpoint", write("one"))
    # What a kill after moving the old folder aside, before the new one goes in, leaves:
    os.rename(folder, tmp_path / ".checkpoint.old")
    (tmp_path / ".checkpoint.abc123.tmp").mkdir()
    assert _io.recover_folder(folder) and (folder / "a.txt").read_text() == "one"
    assert _io.remove_leftovers(tmp_path, ["checkpoint"]) == [".checkpoint.abc123.tmp"]
    _io.commit_folder(folder, write("two"))
    assert (folder / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # A write that fails leaves the committed folder as it was, and nothing else.
    with pytest.raises(RuntimeError):
        _io.commit_folder(folder, lambda tmp: (_ for _ in ()).throw(RuntimeError("disk")))
    assert (folder / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
