"""Metrics, plots and the self-contained HTML report of a run directory."""

from __future__ import annotations

from thaw.report.html import write_report
from thaw.report.metrics import compute_metrics, format_metrics_table

__all__ = ["compute_metrics", "format_metrics_table", "write_report"]
