"""Peak memory of loading a large checkpoint into a built model (the real-backbone adapters).

``VGGTAdapter.from_pretrained`` and ``Any4DAdapter.from_pretrained`` build the network, then load
its checkpoint. Loading the whole state dict and then ``load_state_dict`` holds the model and a
second copy of its weights together: twice the model (10 GB for VGGT-1B). ``load_weights_into``
reads each tensor straight into the model (safetensors) or copies it from a memory-mapped file
(``.pt``), so the peak is about the model itself.

Each way runs in a fresh child process on a randomly initialised model of ``MODEL_MIB`` MiB of
float32 weights (a stack of 2048x2048 linears), from a safetensors file and from a ``.pt``. The
child reports, over the load alone (after the model is built):

* ``anon``: the peak anonymous RSS above the built model's, sampled every millisecond from
  ``/proc/self/status`` (``RssAnon``). Memory the kernel cannot drop: what runs a machine out of
  memory;
* ``rss``: the peak RSS above the built model's (``VmHWM`` after a reset, Linux). It counts the
  pages of a memory-mapped file too, which the kernel can drop.

Both are reported as a fraction of the model's size. The target, checked with
``--vggrpo-check-targets``: ``anon <= 0.25`` for ``load_weights_into``. The old way holds the
second copy in anonymous memory for a ``.pt`` (~1.0) and in mapped file pages for safetensors
(``rss`` ~1.0); ``load_weights_into`` reads safetensors with no mapping at all (both ~0) and maps
a ``.pt`` (``rss`` ~1.0, pages the kernel can drop; ``anon`` ~0). A full run writes
``bench/results/checkpoint-loading-<machine>.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# 256 MiB in CI's quick run; VGGRPO_BENCH_CHECKPOINT_MIB=2048 (say) for a closer look.
MODEL_MIB = int(os.environ.get("VGGRPO_BENCH_CHECKPOINT_MIB", 256))
TARGET_EXTRA_ANON = 0.25

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    import torch
    from torch import nn

    from vggrpo.geometry.checkpoints import load_state_dict_file, load_weights_into

    def status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    way, path, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(layers)])
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS
    built = status()
    peak = [built["RssAnon"]]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status()["RssAnon"])
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    if way == "state_dict":
        state = load_state_dict_file(path)
        model.load_state_dict(state)
        del state
    else:
        load_weights_into(model, path)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    end = status()
    peak[0] = max(peak[0], end["RssAnon"])
    print(json.dumps({"model_bytes": model_bytes, "seconds": seconds,
                      "anon": (peak[0] - built["RssAnon"]) / model_bytes,
                      "rss": (end["VmHWM"] - built["VmRSS"]) / model_bytes}))
""")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch
    from safetensors.torch import save_file
    from torch import nn

    layers = MODEL_MIB * 2**20 // (2048 * 2048 * 4)
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(layers)])
    folder = tmp_path_factory.mktemp("ckpt")
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    torch.save({"model": model.state_dict(), "epoch": 1}, folder / "model.pt")
    del model
    return folder, layers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_checkpoint_loading_peak_memory(checkpoints, request):
    folder, layers = checkpoints
    results = {}
    for fmt in ("safetensors", "pt"):
        for way in ("state_dict", "load_weights_into"):
            proc = subprocess.run([sys.executable, "-c", CHILD, way,
                                   str(folder / f"model.{fmt}"), str(layers)],
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            results[f"{way} {fmt}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [f"checkpoint loading, {MODEL_MIB} MiB model: extra peak as a fraction of the model"]
    for name, r in results.items():
        lines.append(f"  {name:32s} anon {r['anon']:.2f}  rss {r['rss']:.2f}  "
                     f"{r['seconds']:.2f} s")
    report = "\n".join(lines)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:  # shown whatever the capture mode
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + report)
    if request.config.getoption("benchmark_min_rounds") >= 3:  # a measurement, not a smoke run
        from harness.machine import machine_slug
        from harness.settings import RESULTS_DIR

        from vggrpo import _io

        _io.save_json(RESULTS_DIR / f"checkpoint-loading-{machine_slug()}.json",
                      {"model_mib": MODEL_MIB, "results": results,
                       "notes": "extra peak over the built model, fractions of its size; anon: "
                                "RssAnon sampled every 1 ms, rss: VmHWM (file pages included)"})
    # What could fail whatever the machine: the old way does hold a second copy (the pickle's in
    # anonymous memory; safetensors' memory-maps the file, so it shows in the RSS).
    assert results["state_dict pt"]["anon"] > 0.5
    assert results["state_dict safetensors"]["rss"] > 0.5
    if request.config.getoption("--vggrpo-check-targets"):
        for fmt in ("safetensors", "pt"):
            got = results[f"load_weights_into {fmt}"]["anon"]
            assert got <= TARGET_EXTRA_ANON, (fmt, got, report)
