"""The one vocabulary for checking values that come from outside: files, configs, hub repos, callers.

A check is a function ``value -> normalised value`` that raises :class:`Invalid` saying what it expected.
:func:`check_fields` applies a table of checks to a mapping and names the failing field. The checks never
raise the caller's error class: whoever reads the data where it enters the library (a weights file, a
checkpoint, a ``config.json``) turns :class:`Invalid` into its own error, naming the file, with
``raise WeightsError(f"{path}: {e}") from None``.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], Any]

MAX_TEXT = 10_000
MAX_ITEMS = 100_000


class Invalid(ValueError):
    """A value outside its spec. ``str(e)`` reads "'field' must be <expected>, got <value>".

    Attributes:
        field: the dotted name of the value (``"model_args.radix"``), empty when not known yet.
        expected: what the check wanted (``"an integer in [0, 8]"``).
        value: a short repr of what it got.
    """

    def __init__(self, expected: str, value: Any = None, field: str = "", *,
                 shown: str | None = None) -> None:
        self.expected, self.field = expected, field
        self.value = short_repr(value) if shown is None else shown
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.field!r} must be" if self.field else "expected"
        return f"{where} {self.expected}, got {self.value}"

    def at(self, field: str) -> Invalid:
        """The same error with ``field`` (or ``field.<inner field>``) as its name."""
        inner = f"{field}.{self.field}" if self.field else field
        return Invalid(self.expected, field=inner, shown=self.value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def short_repr(value: Any, limit: int = 60) -> str:
    """A bounded ``repr(value)`` of at most ``limit`` characters (then "..."), for messages quoting what a
    file or config holds: such a value may be huge, and a full ``repr`` itself costly."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 (e.g. an int over Python's 4300-digit str() limit)
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def integer(lo: int, hi: int) -> Check:
    """An ``int`` (not a bool) in ``[lo, hi]``."""
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise Invalid(f"an integer in [{lo}, {hi}]", v)
        return v
    return check


def number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite ``int`` or ``float`` (not a bool) in the interval, returned as a float."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> float:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            raise Invalid(f"a finite number in {interval}", v)
        return float(v)
    return check


def boolean(v: Any) -> bool:
    """``True`` or ``False``."""
    if not isinstance(v, bool):
        raise Invalid("true or false", v)
    return v


def text(v: Any) -> str:
    """A string of at most :data:`MAX_TEXT` characters."""
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise Invalid(f"a string of at most {MAX_TEXT} characters", v)
    return v


def choice(*options: Any) -> Check:
    """One of ``options`` (compared by value and type, so ``1`` is not ``True``)."""
    def check(v: Any) -> Any:
        if not any(v == o and type(v) is type(o) for o in options):
            raise Invalid(f"one of {list(options)}", v)
        return v
    return check


def sequence(item: Check, lo: int, hi: int, what: str = "") -> Check:
    """A list or tuple of ``lo`` to ``hi`` items, each checked by ``item``; returned as a tuple."""
    def check(v: Any) -> tuple[Any, ...]:
        expected = what or f"a list of {lo} to {hi} items"
        if not isinstance(v, list | tuple) or not lo <= len(v) <= hi:
            raise Invalid(expected, v)
        try:
            return tuple(item(x) for x in v)
        except Invalid as e:
            raise Invalid(f"{expected}, each {e.expected}", v) from None
    return check


def one_of(*checks: Check) -> Check:
    """The first of ``checks`` that accepts the value."""
    def check(v: Any) -> Any:
        errors = []
        for c in checks:
            try:
                return c(v)
            except Invalid as e:
                errors.append(e.expected)
        raise Invalid(" or ".join(errors), v)
    return check


def mapping_of(key: Check, value: Check, hi: int = MAX_ITEMS) -> Check:
    """A mapping of at most ``hi`` entries, keys checked by ``key`` and values by ``value``."""
    def check(v: Any) -> dict[Any, Any]:
        if not isinstance(v, Mapping) or len(v) > hi:
            raise Invalid(f"an object of at most {hi} entries", v)
        return {key(k): value(x) for k, x in v.items()}
    return check


def label_names(v: Any) -> tuple[str, ...] | dict[str, str]:
    """Class names: a list of strings, or timm's ``{"<class index>": name}`` for gapped indices."""
    if isinstance(v, Mapping):
        if len(v) > MAX_ITEMS or not all(isinstance(k, str) and k.isdigit() for k in v):
            raise Invalid("a list of class names or a mapping of class indices to names", v)
        return {k: text(x) for k, x in v.items()}
    return sequence(text, 0, MAX_ITEMS, "a list of class names (strings)")(v)


def check_fields(spec: Mapping[str, Check], values: Any, field: str = "", *, known_only: bool = True,
                 ) -> dict[str, Any]:
    """``values`` (a mapping) with each key checked by ``spec[key]``.

    Args:
        spec: the check of each allowed key.
        values: the mapping read from outside.
        field: the name of ``values`` itself, prefixed to the failing key in messages.
        known_only: refuse keys without a check (else they are dropped).

    Raises:
        Invalid: ``values`` is not a mapping, holds an unknown key (naming the allowed ones), or a value its
            check refuses; ``e.field`` is the dotted key.
    """
    if not isinstance(values, Mapping):
        raise Invalid("an object (a mapping of names to values)", shown=type(values).__name__, field=field)
    out = {}
    for key, value in values.items():
        name = f"{field}.{key}" if field else str(key)
        if key not in spec:
            if known_only:
                raise Invalid(f"absent (unknown key; allowed: {', '.join(spec)})", value,
                              field=short_repr(name, 80).strip("'\""))
            continue
        try:
            out[key] = spec[key](value)
        except Invalid as e:
            raise e.at(name) from None
    return out


__all__ = ["Check", "Invalid", "boolean", "check_fields", "choice", "integer", "label_names", "mapping_of",
           "number", "one_of", "sequence", "short_repr", "text"]
