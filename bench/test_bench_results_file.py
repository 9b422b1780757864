"""A partial benchmark run (``-k``, one file) must not replace a fuller results file."""

import json

from harness.report import results_path


def _payload(*names):
    return {"benchmarks": [{"name": n} for n in names]}


def test_a_partial_run_writes_beside_a_fuller_record(tmp_path):
    path = tmp_path / "cpu-host.json"
    assert results_path(path, _payload("a")) == path  # nothing there yet
    path.write_text(json.dumps(_payload("a", "b")))
    assert results_path(path, _payload("a")) == tmp_path / "cpu-host-subset.json"
    assert results_path(path, _payload("b", "a")) == path
    assert results_path(path, _payload("a", "b", "c")) == path
    path.write_text("{not json")
    assert results_path(path, _payload("a")) == path  # nothing readable to keep
