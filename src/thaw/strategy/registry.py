"""Strategy names -> strategy factories: the one list of strategy names (config, compare and the CLI read it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from thaw.errors import ConfigError
from thaw.names import did_you_mean

if TYPE_CHECKING:  # base imports config, which imports this module for the names
    from thaw.strategy.base import Strategy

__all__ = ["STRATEGIES", "make_strategy"]


def _fixed(name: str) -> Callable[[], Strategy]:
    def make() -> Strategy:
        from thaw.strategy.fixed import FixedStrategy

        return FixedStrategy(name)

    return make


def _auto() -> Strategy:
    from thaw.strategy.auto import AutoStrategy  # lazily: it pulls in the signal code

    return AutoStrategy()


_REGISTRY: dict[str, Callable[[], Strategy]] = {
    "linear": _fixed("linear"),
    "last-k": _fixed("last-k"),
    "full": _fixed("full"),
    "groups": _fixed("groups"),
    "gradual": _fixed("gradual"),
    "lp-ft": _fixed("lp-ft"),
    "auto": _auto,
}

#: Every strategy name, in the order the help text lists them.
STRATEGIES: tuple[str, ...] = tuple(_REGISTRY)


def make_strategy(name: str) -> Strategy:
    """The strategy registered under ``name``.

    Raises:
        ConfigError: unknown name, with a suggestion (reached by API callers that skip FitConfig's validation).
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy '{name}'{did_you_mean(name, STRATEGIES)}; choose one of {', '.join(STRATEGIES)}"
        ) from None


#: Options that only these strategies read (``--k`` for last-k, ``--groups`` for groups); others ignore them.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {"last-k": ("k",), "groups": ("groups",)}


#: FitConfig field -> the strategies that read it, for options some strategies ignore (``FitConfig.ignored_options``
#: says so when one is set under a strategy that does not read it): the epoch counts, and ``STRATEGY_OPTIONS``.
OPTION_READERS: dict[str, tuple[str, ...]] = {
    "epochs": tuple(s for s in STRATEGIES if s not in ("linear", "auto")),  # auto's phases are sized by the clock
    "probe_epochs": ("linear", "gradual", "lp-ft", "auto"),  # the strategies with a head-only phase
    "gradual_epochs": ("gradual",),
    **{option: (s,) for s, options in STRATEGY_OPTIONS.items() for option in options},
}


def required_options(name: str) -> tuple[str, ...]:
    """The strategy-specific options (FitConfig field names) strategy ``name`` reads; empty for any other name."""
    return STRATEGY_OPTIONS.get(name, ())
