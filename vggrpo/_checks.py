"""What counts as an int or a finite number in a user's setting, defined once.

The predicates only answer yes or no; the callers word their own errors (they know the
argument's name and what it is for). :func:`check_fields` is the one exception: a config
dataclass's fields get the same sentence everywhere, ``"<Config>.<field> must be a positive int,
got 0"``. ``bool`` is refused everywhere: ``True`` is an ``int`` to Python but never a count or a
scale a user meant.

Every config dataclass of the package (``GRPOConfig``, ``LGMConfig``, ``TinyVGGTConfig``,
``StitchingConfig``, ``BackboneTrainingConfig``, ``DefaultsRecipe``) is a :class:`DictConfig`:
its fields are checked on construction with :func:`check_fields` (plus the few relations between
fields a rule cannot say), and it goes to and from JSON with one ``to_dict`` / ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, Iterable, Tuple


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters, built without
    walking all of ``value`` (a 281-byte YAML alias bomb expands to a value whose full repr
    is hundreds of megabytes)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = limit
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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


#: rule -> (test, what the message says a value must be).
_RULES: Dict[str, Tuple[Callable[[object], bool], str]] = {
    "positive int": (is_positive_int, "a positive int"),
    "int >= 0": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "int": (is_int, "an int"),
    "finite number": (is_finite_number, "a finite number"),
    "finite number > 0": (lambda v: is_finite_number(v) and v > 0, "a finite number > 0"),
    "finite number >= 0": (lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


def check_fields(config: object, rule: str, names: Iterable[str]) -> None:
    """Raise ``ValueError`` for the first field of ``config`` among ``names`` that breaks
    ``rule`` (a key of ``_RULES``: ``"positive int"``, ``"int >= 0"``, ``"int"``, ``"finite
    number"``, ``"finite number > 0"``, ``"finite number >= 0"``, ``"bool"``), naming the class,
    the field, the rule and the value: ``"GRPOConfig.lr must be a finite number > 0, got
    inf"``."""
    test, what = _RULES[rule]
    for name in names:
        value = getattr(config, name)
        if not test(value):
            raise ValueError(f"{type(config).__name__}.{name} must be {what}, "
                             f"got {short_repr(value)}")


def _json_ready(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


class DictConfig:
    """What every config dataclass of the package shares: :meth:`to_dict` (JSON-ready: tuples
    become lists) and :meth:`from_dict` (strict), written once. Subclasses are dataclasses that
    check their fields in ``__post_init__`` (:func:`check_fields`), where a list given for a
    tuple field (from JSON, TOML or YAML) is taken as the tuple."""

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return _json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any):
        """``cls(**data)``, refusing anything but a JSON object of the class's fields (a config
        written for another model must not half-load); the fields are then checked as on any
        construction."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}; expected a subset of "
                             f"{sorted(known)}")
        return cls(**data)


def total_memory_bytes() -> int:
    """This machine's physical memory (bytes); 0 where the OS does not say."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_buildable(build: Callable[[], object], what: str) -> None:
    """Build a module on the meta device (no memory) and refuse, with one ValueError naming
    ``what``, sizes that cannot be built or whose float32 weights would not fit in this
    machine's memory: a config file of an untrusted folder could otherwise ask for petabytes,
    and fail deep in the allocator (or, worse, swap for minutes first)."""
    import torch

    try:
        with torch.device("meta"):
            module = build()
    except (RuntimeError, OverflowError, ValueError, MemoryError) as err:
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{what}: its sizes cannot be built ({reason})") from None
    numel = sum(t.numel() for t in list(module.parameters()) + list(module.buffers()))
    budget = total_memory_bytes()
    if budget and 4 * numel > budget:
        raise ValueError(f"{what}: its sizes make {numel:.3g} parameters ({4 * numel / 2**30:.3g} "
                         f"GiB in float32), more than this machine's memory "
                         f"({budget / 2**30:.3g} GiB)")
