"""Training from the API with real ``thaw fit`` processes: a failing run, stop/resume, app restarts, a crash."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.app.conftest import SAMPLE_CLASSES, client_for, make_project, sample_images


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_failing_run_shows_thaws_message_and_keeps_the_data(tmp_path: Path) -> None:
    with client_for(tmp_path / "app") as client:
        make_project(client, per_class=5)
        res = client.post("/api/projects/fashion/runs", json={"model": "no_such_architecture", "img_size": 32})
        assert res.status_code == 202
        run = res.json()["name"]
        info = client.app.state.jobs.wait("fashion", run, timeout=180)  # type: ignore[attr-defined]
        assert info["status"] == "failed", info
        assert "no_such_architecture" in info["message"] and not info["resumable"]
        assert client.get("/api/projects/fashion").json()["audit"]["total"] == 15
        res = client.get(f"/api/projects/fashion/runs/{run}/model.zip")
        assert res.status_code == 409 and "has no model yet" in res.json()["error"]


@pytest.mark.slow
def test_stop_resume_restart_and_crash_mid_training(tmp_path: Path) -> None:
    """Stop and resume; a new app over the same folder sees the same runs; a killed run resumes, uncorrupted."""
    data = tmp_path / "app"
    # no `with`: the first apps end like a crashed or killed `thaw app` (no shutdown hook runs)
    first = client_for(data)
    make_project(first, per_class=20)
    body = {"strategy": "full", "epochs": 5, "img_size": 64, "time_budget": 900}
    run = first.post("/api/projects/fashion/runs", json=body).json()["name"]
    url = f"/api/projects/fashion/runs/{run}"
    checkpoint = data / "projects" / "fashion" / "runs" / run / "checkpoints" / "last" / "state.json"
    wait_for(checkpoint.is_file, 300, "the first epoch's checkpoint")
    assert first.get(url).json()["epochs_done"] >= 1

    stopped = first.post(f"{url}/stop")
    assert stopped.status_code == 200
    info = first.app.state.jobs.wait("fashion", run, timeout=120)  # type: ignore[attr-defined]
    assert info["status"] == "interrupted" and info["resumable"], info
    assert "resume continues from the last finished epoch" in info["message"]
    done_before = info["epochs_done"]
    assert checkpoint.is_file()

    # the app restarts: the run is still there, interrupted and resumable
    second = client_for(data)
    listed = second.get("/api/projects/fashion/runs").json()
    assert [(r["name"], r["status"], r["resumable"]) for r in listed] == [(run, "interrupted", True)]
    assert second.post(f"{url}/resume").status_code == 202

    # the app restarts again while the run trains: the new app sees it training and refuses a second run
    third = client_for(data)
    assert third.get(url).json()["status"] == "training"
    assert third.get("/api/active").json() == {"project": "fashion", "run": run}
    refused = third.post("/api/projects/fashion/runs", json=body)
    assert refused.status_code == 409 and "one run trains at a time" in refused.json()["error"]

    # the training process is killed outright: shown as interrupted, never as finished or corrupted
    job = json.loads((data / "projects" / "fashion" / "runs" / f"{run}.job.json").read_text())
    os.kill(job["pid"], signal.SIGKILL)
    wait_for(lambda: third.get(url).json()["status"] != "training", 30, "the killed run to be noticed")
    info = third.get(url).json()
    assert info["status"] == "interrupted" and info["resumable"], info

    with client_for(data) as last:
        assert last.post(f"{url}/resume").status_code == 202
        info = last.app.state.jobs.wait("fashion", run, timeout=600)  # type: ignore[attr-defined]
        assert info["status"] == "finished", info
        info = last.get(url).json()
        epochs = [row["epoch"] for row in info["metrics"]]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > done_before
        assert info["has_report"] and sorted(info["classes"]) == sorted(SAMPLE_CLASSES)
        assert "--resume" not in info["command"] and info["command"].startswith("thaw fit ")

        # try: top-k predictions for uploaded images, a non-image skipped with its reason
        image = sample_images("Sneaker", 1, split="test")[0]
        res = last.post(
            f"{url}/predict?top_k=2",
            files=[("files", ("shoe.png", image.read_bytes(), "image/png")), ("files", ("x.png", b"no", "image/png"))],
        )
        assert res.status_code == 200, res.text
        body = res.json()
        assert [p["file"] for p in body["predictions"]] == ["shoe.png"]
        top = body["predictions"][0]["top"]
        assert len(top) == 2 and {t["label"] for t in top} <= set(SAMPLE_CLASSES)
        assert abs(sum(t["probability"] for t in top) - 1) < 1 and top[0]["probability"] >= top[1]["probability"]
        assert body["skipped"][0]["file"] == "x.png" and "not a usable image" in body["skipped"][0]["reason"]

        # take away: the zip holds exactly the timm model folder, which plain timm loads
        res = last.get(f"{url}/model.zip")
        assert (
            res.status_code == 200 and res.headers["content-disposition"] == f'attachment; filename="{run}-model.zip"'
        )
        with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
            assert sorted(zf.namelist()) == ["model/config.json", "model/model.safetensors"]
            zf.extractall(tmp_path / "unzipped")
        import timm

        model = timm.create_model(f"local-dir:{tmp_path / 'unzipped' / 'model'}", pretrained=True)
        assert sorted(model.pretrained_cfg["label_names"]) == sorted(SAMPLE_CLASSES)  # type: ignore[index]
