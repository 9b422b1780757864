"""vggrpo.provenance: what a build's bytes depend on, read without failing anywhere."""

import builtins
import json
import platform

import diffusers
import numpy
import torch

from vggrpo.provenance import PACKAGES, build_environment


def test_environment_names_the_running_versions_threads_and_cpu():
    env = build_environment()
    json.dumps(env)  # it goes into quality.json as it is
    assert set(env["packages"]) == set(PACKAGES)
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["diffusers"] == diffusers.__version__
    assert env["packages"]["numpy"] == numpy.__version__
    assert env["python"] == platform.python_version()
    assert env["threads"] == torch.get_num_threads()
    assert env["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability()


def test_a_package_not_loaded_reads_its_installed_version(monkeypatch):
    from importlib import metadata

    monkeypatch.delitem(__import__("sys").modules, "safetensors", raising=False)
    assert build_environment()["packages"]["safetensors"] == metadata.version("safetensors")


def test_thread_count_is_the_one_at_the_time_of_the_call():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert build_environment()["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_cpuinfo_from_the_first_processor_only(monkeypatch, tmp_path):
    """A two-processor /proc/cpuinfo: the fields are the first block's, not the last's."""
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: First CPU\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "stepping\t: 1\n\nprocessor\t: 1\nmodel name\t: Second CPU\n"
                    "cpu family\t: 6\nmodel\t\t: 85\n")
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(fake if str(path) == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    cpu = build_environment()["cpu"]
    assert (cpu["model"], cpu["family"], cpu["model_number"], cpu["stepping"]) == (
        "First CPU", "25", "1", "1")


def test_no_cpuinfo_is_no_failure(monkeypatch):
    """A system without /proc/cpuinfo (macOS, a locked-down container) still gets a report."""
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    cpu = build_environment()["cpu"]
    assert cpu["family"] is None and cpu["model_number"] is None and cpu["stepping"] is None
    assert cpu["model"] == (platform.processor() or platform.machine())
