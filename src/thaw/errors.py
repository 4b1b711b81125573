"""Errors meant for people: every message says what went wrong and what to do."""

from __future__ import annotations

__all__ = ["ThawError", "ConfigError", "DataError", "ModelError", "CheckpointError"]


class ThawError(Exception):
    """Base class of every error thaw raises for a user mistake or an unusable input.

    The CLI prints the message on one line and exits with code 2, without a traceback.
    """


class ConfigError(ThawError):
    """The configuration is invalid (bad option values, conflicting options)."""


class DataError(ThawError):
    """The data cannot be used (no images, a single class, an unreadable manifest, ...)."""


class ModelError(ThawError):
    """The model cannot be built or its weights cannot be loaded."""


class CheckpointError(ThawError):
    """A run directory or checkpoint is missing, unreadable, or unsafe to load."""
