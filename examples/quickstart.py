"""Quickstart: the two VGGRPO rewards on synthetic 4D scenes with exact geometry.

Run with `make demo` (or `python examples/quickstart.py` inside the project's .venv). Offline, a
few seconds on 2 CPU cores. Shows that both rewards rank clean geometry above perturbed geometry,
that the geometry reward's gradient repairs noisy depth maps, and how the fused op compares with
the plain-PyTorch version (vggrpo.reference) on the same inputs.
"""

from __future__ import annotations

import time

import torch

import vggrpo
from vggrpo import reference
from vggrpo.data import make_scene


def geo(scene, depths=None, flow=True):
    return vggrpo.geometry_reprojection_reward(
        scene.pointmaps, scene.depths if depths is None else depths, scene.extrinsics,
        scene.intrinsics, scene.scene_flow if flow else None)


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    torch.manual_seed(0)
    scene = make_scene(batch=2, frames=8, height=60, width=104, static_objects=2,
                       moving_objects=2, seed=0)
    shaky = make_scene(batch=2, frames=8, height=60, width=104, static_objects=2,
                       moving_objects=2, seed=0, jitter=0.5)
    noisy = scene.depths * (1 + 0.05 * torch.randn_like(scene.depths))

    print("Synthetic box rooms: B=2 videos, T=8 frames, 60x104, two moving boxes each\n")
    print(f"{'geometry':<42}{'camera motion reward':>22}{'geometry reward':>18}")
    rows = [
        ("exact geometry, smooth dolly", scene.extrinsics, geo(scene)),
        ("depth maps with 5% noise", scene.extrinsics, geo(scene, noisy)),
        ("scene flow ignored (movers not masked)", scene.extrinsics, geo(scene, flow=False)),
        ("jittered camera path", shaky.extrinsics, None),
    ]
    for name, extrinsics, r_geo in rows:
        r_motion = vggrpo.camera_motion_reward(extrinsics)
        geo_text = " ".join(f"{v:+.3f}" for v in r_geo) if r_geo is not None else "-"
        print(f"{name:<42}{' '.join(f'{v:.3f}' for v in r_motion):>22}{geo_text:>18}")

    # The reward is differentiable: a few gradient steps on the noisy depths raise it.
    depths = noisy.clone().requires_grad_()
    opt = torch.optim.Adam([depths], lr=0.02)
    start = geo(scene, depths).detach()
    for _ in range(30):
        opt.zero_grad()
        (-geo(scene, depths).sum()).backward()
        opt.step()
    print(f"\n30 Adam steps on the noisy depths with the geometry reward's gradient: "
          f"{' '.join(f'{v:+.3f}' for v in start)} -> "
          f"{' '.join(f'{v:+.3f}' for v in geo(scene, depths).detach())}")

    args = (scene.pointmaps, noisy, scene.extrinsics, scene.intrinsics, scene.scene_flow)
    # A fresh process page-faults on every large tensor until glibc has freed one big block, which
    # would slow the plain-PyTorch side about 2x; a training process is long past that, so warm
    # the allocator first for a fair comparison (bench/README.md, "How time is measured").
    torch.empty(31 * 2**20, dtype=torch.uint8).zero_()  # allocated, touched, freed
    with torch.no_grad():
        fused = best_of(lambda: vggrpo.geometry_reprojection_reward(*args))
        plain = best_of(lambda: reference.geometry_reprojection_reward(*args))
    print(f"\ngeometry reward, best of 5 on {torch.get_num_threads()} CPU threads: fused "
          f"{fused * 1e3:.1f} ms, plain PyTorch {plain * 1e3:.1f} ms ({plain / fused:.0f}x; "
          "`make bench` measures this properly)")


if __name__ == "__main__":
    main()
