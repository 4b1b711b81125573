"""The step loop of ``thaw.api``: what runs once the training budget is spent (fakes only, no model)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from thaw.api import _run_steps
from thaw.strategy.base import Average, AverageResult, Measurements, Phase, PhaseResult, Step, StepResult


@dataclass
class _Strategy:
    """Two phases, then the soup of both."""

    name: str = "fake"

    def needs(self, history: Sequence[StepResult]) -> Measurements:
        return Measurements()

    def next_step(self, ctx: Any, history: Sequence[StepResult]) -> Step | None:
        if len(history) < 2:
            return Phase(f"p{len(history)}", (0,), 1, 1e-3, keep=True)
        if len(history) == 2:
            return Average((0, 1))
        return None


@dataclass(frozen=True)
class _Ctx:
    """What the loop reads from the plan context (it replaces ``seconds_left`` and ``signals``)."""

    head: int = 0
    groups: tuple[Any, ...] = (SimpleNamespace(name="head"),)
    seconds_left: float | None = None
    signals: Any = None


@dataclass
class _Runner:
    """Each phase spends the budget; what ran is recorded."""

    left: float = 10.0
    ran: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.budget = SimpleNamespace(left=lambda: self.left)
        self.selection = SimpleNamespace(restore=lambda model: None)
        self.model = None

    def measure(self, needs: Measurements) -> Any:
        return None

    def execute(self, step: Step, history: Sequence[StepResult], *, resume: Any = None) -> list[StepResult]:
        if isinstance(step, Average):
            self.ran.append("soup")
            return [AverageResult(len(history), step.members, True)]
        assert isinstance(step, Phase)
        self.ran.append(step.name)
        self.left = 0.0  # the first phase spends the whole budget
        return [PhaseResult(len(history), step, 1, 1, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0)]


def test_no_phase_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    """Another phase would train past the budget: it is skipped, and the warning says so."""
    runner = _Runner()
    ctx = _Ctx()
    rd = SimpleNamespace(metrics_jsonl=tmp_path / "metrics.jsonl")
    history, _ = _run_steps(_Strategy(), runner, ctx, rd, None, None, lambda msg: None)  # type: ignore[arg-type]
    assert runner.ran == ["p0"] and len(history) == 1
    assert "time budget spent" in runner.warnings[0]


def test_a_weight_soup_still_runs_on_a_spent_budget(tmp_path: Path) -> None:
    """A soup is one validation pass, which the reserve kept back from the budget covers."""
    runner = _Runner()
    ctx = _Ctx()
    rd = SimpleNamespace(metrics_jsonl=tmp_path / "metrics.jsonl")
    strategy = _Strategy()
    first = PhaseResult(0, Phase("p0", (0,), 1, 1e-3, keep=True), 1, 1, 0.5, 1.0, 1.0, 0.5, 1.0, 1.0)
    original = strategy.next_step
    # the first phase already ran (as after the race): the second spends the budget, the soup still runs
    strategy.next_step = lambda c, h: original(c, [first, *h])  # type: ignore[method-assign]
    history, _ = _run_steps(strategy, runner, ctx, rd, None, None, lambda msg: None)  # type: ignore[arg-type]
    assert runner.ran == ["p1", "soup"] and isinstance(history[-1], AverageResult)
    assert not runner.warnings
