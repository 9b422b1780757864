"""The synthetic scene generator at the size the tests, README examples and the demo use
(``make_scene(2, 8, 60, 104)``, two moving objects), on one intra-op thread: how long a batch of
exact ground-truth geometry takes to make. Reported only (it has no pair and no target); it was a
timed assert in tests/ before, which a loaded machine could fail for no fault of the code."""

import torch

from vggrpo.data.synthetic import make_scene


def test_make_scene_default_size(benchmark):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = "make_scene [2x8x60x104, 1 thread]"
        g = benchmark(make_scene, 2, 8, 60, 104, trajectory="dolly", jitter=0.1,
                      static_objects=3, moving_objects=2, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert g.depths.shape == (2, 8, 60, 104)
    assert bool(torch.isfinite(g.depths).all()) and bool((g.depths > 0).all())
