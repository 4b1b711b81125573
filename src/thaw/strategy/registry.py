"""Strategy names -> strategy objects."""

from __future__ import annotations

import difflib

from thaw.config import STRATEGIES
from thaw.errors import ConfigError
from thaw.strategy.base import Strategy
from thaw.strategy.fixed import FixedStrategy

__all__ = ["make_strategy"]


def make_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``.

    Raises:
        ConfigError: unknown name, with a suggestion.
    """
    if name == "auto":
        from thaw.strategy.auto import AutoStrategy  # imported lazily: it pulls in the signal code

        return AutoStrategy()
    if name in STRATEGIES:
        return FixedStrategy(name)
    close = difflib.get_close_matches(name, STRATEGIES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown strategy '{name}'{hint}; choose one of {', '.join(STRATEGIES)}")
