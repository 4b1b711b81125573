"""Fixtures the integration tests share with the unit tests (one definition each)."""

from __future__ import annotations

from tests.unit.data.conftest import corpus  # noqa: F401 - the bad-input corpus, for test_corpus_cli
from tests.unit.report.conftest import make_run  # noqa: F401 - a synthetic run directory, for the browser test
