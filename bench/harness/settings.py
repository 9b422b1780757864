"""Where the benchmarks write, the sizes they run at, and the targets they check."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
RESULTS_DIR = BENCH_DIR / "results"

#: Benchmark sizes ``(B, T, H, W)``. "realistic": the geometry a latent geometry model reads off a
#: Wan2.1 480p latent (60 x 104) for 8 frames, two videos. "large": twice the frames and twice the
#: resolution per side (8x the points, 16x the point-view pairs of the all-pairs baseline); one
#: reference call takes 0.7-1.3 s and 0.65-0.9 GiB on the 2-core dev machine.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "realistic": (2, 8, 60, 104),
    "large": (2, 16, 120, 208),
}

#: The issue's targets for the fused geometry reward (forward, realistic size, CPU) against the
#: vectorised plain-PyTorch baseline ``vggrpo.reference.geometry_reprojection_reward``.
TARGET_SPEEDUP = 10.0

TARGET_MEMORY_FRACTION = 0.1

#: Interleaved (fused, reference) call pairs of the target check's timing: at least this many,
#: and for at least TARGET_MIN_SECONDS (so the background-load reading covers a window the 100 Hz
#: CPU counters resolve).
TARGET_PAIRS = 15

TARGET_MIN_SECONDS = 1.5

#: Above this share of the machine's CPU taken by other processes during the target timing, the
#: timing is repeated (TARGET_ATTEMPTS in all, the quietest kept), and if still loaded the speed
#: verdict is "inconclusive".
TARGET_BUSY_SHARE = 0.1

TARGET_ATTEMPTS = 3

# Fewer timed rounds than this in any benchmark marks a run as a quick (smoke / CI) run; its
# results go to cpu-<machine>-quick.json so they never replace a proper measurement.
QUICK_ROUNDS = 3

# Memory probes per case (the smallest reading is kept: unrelated allocations only add). A quick
# run's memory pass probes each case once: it checks that every case can be measured, and its
# file never stands for a measurement (a second probe of every case cost ~15 s of CI's bench run).
MEMORY_REPEATS = 2

QUICK_MEMORY_REPEATS = 1

#: Readings below this are within the CPU probe's resolution (page-granular, approximate kernel
#: RSS counters): no memory ratio is formed when the reference's reading is below 4x this, and a
#: fused reading below it counts as this much (the ratio is then a lower bound).
MEMORY_RESOLUTION = 256 * 1024

#: A pair whose timing saw more background CPU load than this is flagged in the summary.
NOISY_SHARE = 0.05
