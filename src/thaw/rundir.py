"""The run directory: where each file of a run lives, and tolerant readers for them.

This module is the one place that spells the names of the run-directory contract (docs/architecture.md)::

    runs/NAME/
      config.yaml  summary.json  metrics.jsonl  audit.json  eval.json  predictions.jsonl
      advise.json (auto with --models: the backbone measurements)
      model/  checkpoints/last/  report.html  plots/

Readers are tolerant because a run may be read while it is written or after it was killed: a missing file reads
as empty, and an unparsable JSONL line (the torn last line of a killed run) is skipped with a warning. A JSON file
that exists but cannot be parsed is an error that says what to do.

Example:
    >>> rd = RunDir("runs/cats")
    >>> rd.summary_json  # doctest: +SKIP
    PosixPath('runs/cats/summary.json')
    >>> rd.read_summary().get("test_accuracy")  # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from thaw.errors import CheckpointError

if TYPE_CHECKING:
    from thaw.config import FitConfig

__all__ = [
    "ADVISE",
    "AUDIT",
    "CHECKPOINTS",
    "CONFIG",
    "EVAL",
    "METRICS",
    "MODEL",
    "PLOTS",
    "PREDICTIONS",
    "REPORT",
    "SUMMARY",
    "RunDir",
    "read_json",
    "read_jsonl",
]

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
AUDIT = "audit.json"
EVAL = "eval.json"
PREDICTIONS = "predictions.jsonl"
ADVISE = "advise.json"
MODEL = "model"
CHECKPOINTS = "checkpoints"
REPORT = "report.html"
PLOTS = "plots"


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parsed JSON of ``path``, or None when the file does not exist.

    Raises:
        CheckpointError: the file exists but cannot be read or parsed.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {p}: {exc}; delete or repair the file and try again") from exc


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order; empty when the file does not exist.

    A line that does not parse (the torn last line of a killed run) or is not an object is skipped with a warning.

    Raises:
        CheckpointError: the file exists but cannot be read (permissions, not UTF-8).
    """
    p = Path(path)
    if not p.is_file():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {p}: {exc}; delete or repair the file and try again") from exc
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("skipping unparsable line %d of %s", number, p)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            logger.warning("skipping line %d of %s: not a JSON object", number, p)
    return rows


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _RunPath:
    """A path inside the run directory, read (not set) as an attribute of :class:`RunDir`: ``rd.summary_json``."""

    def __init__(self, *parts: str, doc: str | None = None) -> None:
        self.parts = parts
        self.__doc__ = doc or f"``{'/'.join(parts)}`` in the run directory."

    def __set_name__(self, owner: type[RunDir], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[RunDir] | None = None) -> _RunPath: ...

    @overload
    def __get__(self, obj: RunDir, owner: type[RunDir] | None = None) -> Path: ...

    def __get__(self, obj: RunDir | None, owner: type[RunDir] | None = None) -> Path | _RunPath:
        return self if obj is None else obj.path.joinpath(*self.parts)

    def __set__(self, obj: RunDir, value: object) -> None:
        raise AttributeError(f"RunDir.{self.name} is read-only: it follows RunDir.path")


class RunDir:
    """Paths of one run directory and readers for its files (the directory need not exist yet).

    Args:
        path: The run directory, e.g. ``runs/cats``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------ paths
    config_yaml = _RunPath(CONFIG)
    summary_json = _RunPath(SUMMARY)
    metrics_jsonl = _RunPath(METRICS)
    audit_json = _RunPath(AUDIT)
    eval_json = _RunPath(EVAL)
    predictions_jsonl = _RunPath(PREDICTIONS)
    advise_json = _RunPath(ADVISE, doc="auto with ``--models``: what ``thaw advise`` measured of each backbone.")
    model_dir = _RunPath(MODEL, doc="The timm-compatible model folder (``config.json`` + ``model.safetensors``).")
    checkpoints_dir = _RunPath(CHECKPOINTS)
    last_checkpoint = _RunPath(
        CHECKPOINTS, "last", doc="The resumable checkpoint (``train/checkpoint.py`` swaps it atomically)."
    )
    report_html = _RunPath(REPORT)
    plots_dir = _RunPath(PLOTS)

    def has_config(self) -> bool:
        return self.config_yaml.is_file()

    def has_model(self) -> bool:
        """Whether the run exported its model folder (it finished)."""
        return (self.model_dir / "config.json").is_file()

    # ---------------------------------------------------------------------------------------------- readers
    def read_config(self) -> FitConfig:
        """The resolved configuration the run was started with.

        Raises:
            CheckpointError: there is no config.yaml (not a run directory).
            ConfigError: config.yaml cannot be read or is invalid.
        """
        from thaw.config import FitConfig

        if not self.has_config():
            raise CheckpointError(f"{self.path} is not a thaw run directory (no {CONFIG})")
        return FitConfig.from_yaml(self.config_yaml)

    def read_advise(self) -> dict[str, Any]:
        """advise.json as a dict; empty when the run chose no backbone (no ``--models``) or has not yet."""
        return _mapping(read_json(self.advise_json))

    def read_summary(self) -> dict[str, Any]:
        """summary.json as a dict; empty when the run has not written it (yet)."""
        return _mapping(read_json(self.summary_json))

    def read_audit(self) -> dict[str, Any]:
        """audit.json as a dict; empty when absent."""
        return _mapping(read_json(self.audit_json))

    def read_eval(self) -> dict[str, Any] | None:
        """eval.json as a dict, or None when absent (or not an object)."""
        data = read_json(self.eval_json)
        return data if isinstance(data, dict) else None

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl rows (one per epoch); a torn last line is skipped."""
        return read_jsonl(self.metrics_jsonl)

    def read_predictions(self) -> list[dict[str, Any]]:
        """predictions.jsonl rows (one per evaluated image); a torn line is skipped."""
        return read_jsonl(self.predictions_jsonl)
