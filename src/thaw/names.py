"""Helpers for user-typed names: one "did you mean" for every place that accepts a name from a list."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(value: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """The hint to append to an "unknown name" message, or ``""`` when nothing is close.

    Args:
        value: What the user typed.
        choices: The accepted names.
        n: How many suggestions at most (closest first).
        cutoff: Minimum ``difflib`` similarity ratio, in [0, 1].

    Returns:
        ``" (did you mean 'lp-ft'?)"``, ``" (did you mean 'a' or 'b'?)"`` for several, or ``""``.

    Example:
        >>> did_you_mean("lpft", ["linear", "lp-ft"])
        " (did you mean 'lp-ft'?)"
    """
    close = difflib.get_close_matches(value, list(choices), n=n, cutoff=cutoff)
    if not close:
        return ""
    quoted = [f"'{c}'" for c in close]
    names = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {names}?)"
