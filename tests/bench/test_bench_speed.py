"""Smoke test of bench/speed.py: the quick benchmark end to end, and the thaw.api.fit measurements at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.speed import (
    eval_pass,
    fit_run,
    format_fit,
    format_table,
    main,
    mean_std,
    peak_rss_mb,
    reset_peak_rss,
    summarize_fits,
)


def test_mean_std_and_peak_rss() -> None:
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5), "runs": [1.0, 3.0]}
    assert mean_std([5.0])["std"] == 0.0
    big = bytearray(64 * 1024 * 1024)  # touch 64 MiB so that the peak moves
    big[::4096] = b"x" * len(big[::4096])
    peak = peak_rss_mb()
    assert peak > 64
    del big
    if reset_peak_rss():  # the peak falls back to the current RSS once the buffer is gone
        assert peak_rss_mb() < peak


def test_quick_run_writes_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.json"
    report = main(["--quick", "--sizes", "32", "--workers", "0,2", "--out", str(out)])
    assert report is not None and json.loads(out.read_text(encoding="utf-8")) == report
    assert {"cpu", "cores", "torch", "torch_threads"} <= report["machine"].keys()
    (row,) = report["configs"]
    assert (row["model"], row["size"], row["batch"], row["images"]) == ("resnet18", 32, 8, 16)
    assert row["forward_gflops_per_image"] == pytest.approx(0.0747, rel=0.05)  # resnet18: 1.82 GFLOPs at 224 px
    for kind in ("train", "eval"):
        ips = row[f"{kind}_images_per_second"]
        assert set(ips) == {"thaw", "plain_w0", "plain_w2"}
        assert all(len(v["runs"]) == 2 and v["mean"] > 0 for v in ips.values())
        ratio = row[f"{kind}_ratio"]["plain_w0"]
        runs = zip(ips["thaw"]["runs"], ips["plain_w0"]["runs"], strict=True)
        assert ratio["runs"] == pytest.approx([a / b for a, b in runs])
    assert row["thaw_bn_policy"] == "frozen-eval" and row["thaw_augment"] == "light"
    assert all(v > 100 for v in row["peak_rss_mb"].values())
    table = capsys.readouterr().out
    assert "| resnet18 | 32 |" in table and table.strip() == format_table(report["configs"])


def test_fit_measurements_linear_probe_caches_features(tmp_path: Path) -> None:
    lin = fit_run({"strategy": "linear", "k": 2, "img_size": 32, "batch": 64, "out_dir": str(tmp_path / "lin")})
    assert lin["cached_features"] == [True] and len(lin["epoch_seconds"]) == 1
    assert lin["images"]["train"] == 400 and 0 < lin["phase_seconds"] < lin["fit_wall_seconds"]
    ev = eval_pass({"img_size": 32, "batch": 64})
    assert ev["images"] == 600 and ev["cold_pass_seconds"] > 0 and len(ev["warm_pass_seconds"]["runs"]) == 3
    full = {**lin, "strategy": "full", "cached_features": [False], "peak_rss_mb": lin["peak_rss_mb"] * 2}
    last_k = fit_run(
        {
            "strategy": "last-k",
            "k": 2,
            "img_size": 32,
            "batch": 64,
            "epochs": 2,
            "augment": "none",
            "prefix_cache": True,
            "out_dir": str(tmp_path / "lastk"),
        }
    )
    assert last_k["prefix_cache"][0]["used"] is True and len(last_k["epoch_seconds"]) == 2
    uncached = {**last_k, "epoch_seconds": [s * 2 for s in last_k["epoch_seconds"]]}
    section = summarize_fits([{"linear": lin, "full": full, "last-k": last_k, "last-k-uncached": uncached, "eval": ev}])
    assert section["linear_vs_full_peak_rss"]["mean"] == pytest.approx(0.5)
    assert section["linear_probe_vs_eval_pass"]["runs"] == [lin["phase_seconds"] / ev["cold_pass_seconds"]]
    assert section["last_k_cached_vs_uncached_epoch"]["mean"] == pytest.approx(0.5)
    text = format_fit(section)
    assert "linear/full 0.50 ± 0.00x" in text and "-> 0.50 ± 0.00x (cache built once" in text
