"""What counts as an int or a finite number in a user's setting, defined once.

The callers word their own errors (they know the argument's name and what it is for); these only
answer yes or no. ``bool`` is refused everywhere: ``True`` is an ``int`` to Python but never a
count or a scale a user meant.
"""

from __future__ import annotations

import math
import numbers


def is_int(value) -> bool:
    """A Python ``int``, not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value) -> bool:
    """A Python ``int`` >= 1, not a ``bool``."""
    return is_int(value) and value > 0


def is_finite_number(value) -> bool:
    """A finite real number (Python or NumPy scalar), not a ``bool``."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
