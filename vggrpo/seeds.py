"""Seeds derived from seeds: element ``b`` of a batch, or a step of a run, gets a seed that
depends on ``(seed, b)`` only, so batch 1 and batch 4 with one seed agree on element 0, and
nearby seeds give unrelated streams. Used by the synthetic scenes and the GRPO trainer."""
from __future__ import annotations

__all__ = ["element_seed", "combined_seed"]

_MASK = (1 << 64) - 1


def element_seed(seed: int, index: int) -> int:
    """A 63-bit seed for element ``index`` of the stream ``seed`` (a SplitMix64-style mix)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return z & ((1 << 63) - 1)


def combined_seed(*parts: int) -> int:
    """One seed from several ints (for example run seed, step, group), folded left by
    :func:`element_seed` from 0."""
    s = 0
    for p in parts:
        s = element_seed(s, int(p))
    return s
