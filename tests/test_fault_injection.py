"""Fault injection: ``vggrpo train`` killed with SIGKILL, then resumed, must end bitwise where an
uninterrupted run ends, or refuse with one line (issue #34).

Two kinds of kill, each in a fresh process (tests/scripts/kill_worker.py):

* **at a rename**: the process kills itself just before its N-th ``os.replace`` / ``os.rename``.
  Renames are where files and checkpoint folders become visible, so these are the kills inside
  a checkpoint's write (between its files, before its commit, between the commit and the
  exports);
* **at a time**: killed from outside after a random delay, anywhere in the run.

After every kill the run is resumed (``--resume``), and that run may be killed again; the chain
ends with a resume left to finish. ``make test`` runs a bounded plan (5 kills at renames, 2 at
random moments); ``make fault-injection`` runs ``VGGRPO_FAULT_KILLS`` (24) seeded random kills
and prints the counts the README reports.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "scripts" / "kill_worker.py"
CONFIG = """model = "tiny"
checkpoint_every = 1

[grpo]
group_size = 2
prompts_per_step = 1
num_inference_steps = 3
sde_window = [0, 2]
steps = 4
lora_rank = 2
lora_alpha = 2.0
"""
# The deterministic part of a step's record (the rest are timings and memory).
DETERMINISTIC = ("step", "loss", "kl", "grad_norm", "reward_motion", "reward_geo",
                 "ratio_mean", "advantage_mean")


def _run(config: Path, out: Path, kill_at_rename: int = 0, kill_after_s: float = 0.0,
         resume: bool = False):
    """One ``vggrpo train`` process; returns ``(returncode, stderr)`` (-9: killed)."""
    argv = [sys.executable, str(WORKER), str(kill_at_rename), "train", "--config", str(config),
            "--out", str(out)] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    if kill_after_s:
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _final(out: Path):
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    history = json.loads((out / "history.json").read_text())["history"]
    return lora, [{k: h.get(k) for k in DETERMINISTIC} for h in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final LoRA and history, and how long it took (s)."""
    folder = tmp_path_factory.mktemp("fault")
    config = folder / "grpo.toml"
    config.write_text(CONFIG)
    t0 = time.perf_counter()
    code, err = _run(config, folder / "reference")
    assert code == 0, err[-2000:]
    return config, _final(folder / "reference"), time.perf_counter() - t0


def run_kill_plan(reference, out: Path, plan):
    """Kill a run as ``plan`` says (``("rename", n)`` or ``("time", seconds)``), resuming after
    each kill, then let a last resume finish. Returns ``{"kills", "finished_early",
    "refusals"}``; asserts the end is the reference's, bitwise, unless a resume refused."""
    config, (want_lora, want_history), _ = reference
    counts = {"kills": 0, "finished_early": 0, "refusals": 0}
    for i, (kind, value) in enumerate(plan + [("none", 0)]):
        code, err = _run(config, out, kill_at_rename=value if kind == "rename" else 0,
                         kill_after_s=value if kind == "time" else 0.0, resume=i > 0)
        if code == -signal.SIGKILL:
            counts["kills"] += 1
            continue
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        if code == 2:  # a refusal: one line, and nothing more to check
            assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
            counts["refusals"] += 1
            return counts
        assert code == 0, f"{kind} {value}: exit {code}\n{err[-2000:]}"
        if kind != "none":
            counts["finished_early"] += 1  # the kill point lay beyond the run's end
    lora, history = _final(out)
    assert sorted(lora) == sorted(want_lora)
    for k in want_lora:  # bitwise: the bytes, not a tolerance
        assert lora[k].dtype == want_lora[k].dtype, k
        assert lora[k].contiguous().view(torch.uint8).equal(
            want_lora[k].contiguous().view(torch.uint8)), k
    assert history == want_history
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-3", "checkpoint-4"]
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    return counts


def test_kills_inside_the_checkpoint_write_resume_to_the_same_lora(reference, tmp_path):
    """A process renames 5 times a checkpoint, after the log's trim (1): the LoRA (2) and state
    (3) files into its hidden folder, the folder's commit (4), the LoRA export (5), the history
    export (6); from the third checkpoint on, a sixth hides the oldest one before it is
    deleted. Each process of the chain is killed before one of these, then resumed; the last
    resume finishes."""
    plan = [("rename", 3), ("rename", 4), ("rename", 5), ("rename", 6), ("rename", 2)]
    counts = run_kill_plan(reference, tmp_path / "run", plan)
    assert counts == {"kills": 5, "finished_early": 0, "refusals": 0}


def test_random_kills(reference, tmp_path):
    """``VGGRPO_FAULT_KILLS`` kills (2 in ``make test``; ``make fault-injection``: 24), seeded by
    ``VGGRPO_FAULT_SEED``, in chains of up to 4 before a resume finishes; half at a random
    rename (1-24; a run of 4 checkpoints makes about 23), half at a random moment of the run.
    A kill that comes after the run's end counts as finished early; chains are drawn until at
    least one kill has landed."""
    _, _, duration = reference
    total = int(os.environ.get("VGGRPO_FAULT_KILLS", "2"))
    rng = random.Random(int(os.environ.get("VGGRPO_FAULT_SEED", "0")))
    totals = {"kills": 0, "finished_early": 0, "refusals": 0, "chains": 0}
    # A kill planned past a run's end (a late rename, a slow timer) finishes early instead:
    # draw more chains until at least one kill landed, within a bound.
    while (totals["kills"] + totals["finished_early"] < total or totals["kills"] == 0) \
            and totals["chains"] < 4 * total + 4:
        plan = [("rename", rng.randint(1, 24)) if rng.random() < 0.5
                else ("time", rng.uniform(0.3, 1.05) * duration)
                for _ in range(min(rng.randint(1, 4),
                                   total - totals["kills"] - totals["finished_early"]))]
        counts = run_kill_plan(reference, tmp_path / f"run{totals['chains']}", plan)
        for k in counts:
            totals[k] += counts[k]
        totals["chains"] += 1
    print("\nfault injection:", json.dumps(totals))
    (Path(os.environ.get("VGGRPO_FAULT_REPORT", tmp_path / "report.json"))
     .write_text(json.dumps(totals) + "\n"))
    assert totals["refusals"] == 0 and totals["kills"] > 0
