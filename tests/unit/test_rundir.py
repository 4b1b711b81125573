"""The run directory's paths and tolerant readers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from thaw.config import FitConfig
from thaw.errors import CheckpointError
from thaw.rundir import RunDir, read_jsonl


def test_paths_spell_the_run_directory_contract(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    names = [
        rd.config_yaml,
        rd.summary_json,
        rd.metrics_jsonl,
        rd.audit_json,
        rd.eval_json,
        rd.predictions_jsonl,
        rd.model_dir,
        rd.checkpoints_dir,
        rd.report_html,
        rd.plots_dir,
    ]
    assert [p.relative_to(rd.path).as_posix() for p in names] == [
        "config.yaml",
        "summary.json",
        "metrics.jsonl",
        "audit.json",
        "eval.json",
        "predictions.jsonl",
        "model",
        "checkpoints",
        "report.html",
        "plots",
    ]
    assert rd.last_checkpoint == tmp_path / "run" / "checkpoints" / "last"


def test_readers_of_an_empty_or_missing_run(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "nothing-here")
    assert rd.read_summary() == {} and rd.read_audit() == {} and rd.read_eval() is None
    assert rd.read_metrics() == [] and rd.read_predictions() == []
    assert not rd.has_model() and not rd.has_config()
    with pytest.raises(CheckpointError, match="not a thaw run directory"):
        rd.read_config()


def test_metrics_skip_a_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rd = RunDir(tmp_path)
    rd.metrics_jsonl.write_text('{"epoch": 1, "val_accuracy": 0.5}\n\n[1, 2]\n{"epoch": 2, "val_accuracy": 0.6}\n{"epo')
    with caplog.at_level(logging.WARNING, logger="thaw.rundir"):
        rows = rd.read_metrics()
    assert rows == [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6}]
    assert "line 5" in caplog.text and "line 3" in caplog.text  # both dropped lines are named
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="bad.jsonl"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_summary_config_and_model(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.summary_json.write_text('{"strategy": "lp-ft", "classes": ["a", "b"]}')
    rd.config_yaml.write_text(FitConfig(train="data/train", epochs=3).to_yaml())
    rd.eval_json.write_text("[1]")  # not an object: read as absent
    assert rd.read_summary()["classes"] == ["a", "b"]
    assert rd.read_config() == FitConfig(train="data/train", epochs=3)
    assert rd.read_eval() is None
    rd.model_dir.mkdir()
    (rd.model_dir / "config.json").write_text("{}")
    assert rd.has_model()
    rd.summary_json.write_text('{"strategy": ')
    with pytest.raises(CheckpointError, match="cannot read .*summary.json"):
        rd.read_summary()
