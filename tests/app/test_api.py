"""The app's HTTP API without training: uploads, limits, names and paths, audit, requests refused clearly."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.conftest import SAMPLE_CLASSES, client_for, make_project, sample_images, upload
from thaw.app.jobs import JobManager
from thaw.app.store import Store, safe_filename


def png_bytes(size: int = 16, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_page_and_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>thaw</title>" in page.text
    for asset in ("app.js", "app.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    # nothing outside the static folder, however the path is spelled
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py"):
        assert client.get(path).status_code == 404
    info = client.get("/api/info").json()
    assert info["defaults"]["strategy"] == "auto" and "auto" in info["strategies"]


def test_projects_classes_uploads_thumbnails_and_audit(client: TestClient) -> None:
    make_project(client, per_class=6)
    data = client.get("/api/projects/fashion").json()
    assert [c["name"] for c in data["classes"]] == sorted(SAMPLE_CLASSES)
    assert all(len(c["images"]) == 6 for c in data["classes"])
    assert data["audit"]["classes"] == {c: 6 for c in SAMPLE_CLASSES}
    assert data["audit"]["ready"] and data["audit"]["problems"] == []

    name = data["classes"][0]["images"][0]
    thumb = client.get(f"/api/projects/fashion/classes/Bag/thumbs/{name}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert (
        client.get(f"/api/projects/fashion/classes/Bag/images/{name}").content
        == sample_images("Bag", 6)[0].read_bytes()
    )

    assert client.delete(f"/api/projects/fashion/classes/Bag/images/{name}").status_code == 200
    assert len(client.get("/api/projects/fashion").json()["classes"][0]["images"]) == 5
    assert client.get(f"/api/projects/fashion/classes/Bag/images/{name}").status_code == 404
    # the same file uploaded twice is kept under a second name and shown as a duplicate in the audit
    upload(client, "fashion", "Bag", sample_images("Bag", 2)[1:])
    audit = client.get("/api/projects/fashion").json()["audit"]
    assert audit["classes"]["Bag"] == 6 and len(audit["duplicates"]) == 1
    assert client.get("/api/projects").json() == [{"name": "fashion", "classes": 3, "images": 18, "runs": 0}]
    assert client.post("/api/projects", json={"name": "fashion"}).status_code == 409


def test_non_image_and_broken_image_are_refused_with_their_reason(client: TestClient) -> None:
    make_project(client, per_class=5)
    res = client.post(
        "/api/projects/fashion/classes/Bag/images", files=[("files", ("notes.txt", b"just some text", "text/plain"))]
    )
    assert res.status_code == 415
    assert "notes.txt: not a usable image" in res.json()["error"]
    broken = png_bytes()[:40]  # a PNG header and nothing else
    res = client.post(
        "/api/projects/fashion/classes/Bag/images",
        files=[("files", ("broken.png", broken, "image/png")), ("files", ("ok.png", png_bytes(), "image/png"))],
    )
    assert res.status_code == 200
    body = res.json()
    assert body["added"] == ["ok.png"]
    assert [r["file"] for r in body["rejected"]] == ["broken.png"] and "not a usable image" in body["rejected"][0][
        "reason"
    ]
    audit = client.get("/api/projects/fashion").json()["audit"]
    assert audit["classes"]["Bag"] == 6  # nothing already uploaded was lost
    assert {r["file"] for r in audit["rejected"]} == {"notes.txt", "broken.png"}
    # a JPEG without an extension is kept, as PNG pixels
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    res = client.post("/api/projects/fashion/classes/Bag/images", files=[("files", ("photo", buf.getvalue(), "x/y"))])
    assert res.json()["added"] == ["photo.png"]


def test_upload_limits(tmp_path: Path) -> None:
    with client_for(tmp_path / "app", max_upload_bytes=2000, max_request_bytes=50_000) as client:
        make_project(client, per_class=0)
        big = png_bytes(size=200) + b"\0" * 2000
        res = client.post("/api/projects/fashion/classes/Bag/images", files=[("files", ("big.png", big, "image/png"))])
        assert res.status_code == 413 and "big.png: larger than" in res.json()["error"]
        res = client.post(
            "/api/projects/fashion/classes/Bag/images",
            files=[("files", (f"{i}.png", b"\0" * 10_000, "image/png")) for i in range(6)],
        )
        assert res.status_code == 413 and "request too large" in res.json()["error"]
        assert client.get("/api/projects/fashion").json()["audit"]["classes"]["Bag"] == 0


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "", "x" * 65, "semi;colon", "end."])
def test_unsafe_project_and_class_names_are_refused(client: TestClient, name: str) -> None:
    res = client.post("/api/projects", json={"name": name})
    assert res.status_code == 400 and "is not allowed" in res.json()["error"]
    client.post("/api/projects", json={"name": "p"})
    res = client.post("/api/projects/p/classes", json={"name": name})
    assert res.status_code == 400 and "is not allowed" in res.json()["error"]


def test_path_traversal_is_refused(client: TestClient, tmp_path: Path) -> None:
    make_project(client, per_class=5)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    for url in (
        "/api/projects/fashion/classes/Bag/images/..%2F..%2Fproject.json",
        "/api/projects/fashion/classes/Bag/images/%2e%2e",
        "/api/projects/fashion/classes/..%2F..%2F..%2F/images/secret.png",
        "/api/projects/%2e%2e/classes/Bag/images/x.png",
        "/api/projects/fashion/classes/Bag/thumbs/..%2F..%2Fproject.json",
        "/api/projects/fashion/runs/..%2F..%2Fproject.json/report",
    ):
        res = client.get(url)
        assert res.status_code in (400, 403, 404), url
        assert "created" not in res.text and res.content != secret.read_bytes()
    # an uploaded name with folders in it is stored under its base name, inside the class
    res = client.post(
        "/api/projects/fashion/classes/Bag/images",
        files=[
            ("files", ("../../../evil.png", png_bytes(), "image/png")),
            ("files", ("..\\..\\w.png", png_bytes(), "image/png")),
        ],
    )
    assert res.json()["added"] == ["evil.png", "w.png"]
    assert not (tmp_path / "app" / "projects" / "evil.png").exists()
    # a symlink planted in a class folder does not lead out of the data folder
    (tmp_path / "app" / "projects" / "fashion" / "images" / "Bag" / "link.png").symlink_to(secret)
    assert client.get("/api/projects/fashion/classes/Bag/images/link.png").status_code == 403
    assert client.delete("/api/projects/%2e%2e").status_code in (400, 403, 404)
    assert (tmp_path / "app" / "projects").is_dir()


def test_safe_filename() -> None:
    assert safe_filename("../../a b/ç.PNG") == "c.png"
    assert safe_filename("C:\\Users\\x\\photo 1.JPG") == "photo_1.jpg"
    assert safe_filename(".bashrc") == "bashrc"
    assert safe_filename("") == "image"
    assert safe_filename("x" * 300 + ".png") == "x" * 80 + ".png"


def test_changes_need_the_app_header(tmp_path: Path) -> None:
    from thaw.app.server import create_app

    with TestClient(create_app(tmp_path / "app")) as plain:
        res = plain.post("/api/projects", json={"name": "p"})
        assert res.status_code == 403 and "x-thaw-app" in res.json()["error"]
        assert plain.get("/api/projects").status_code == 200


def test_host_header_is_checked_when_serving_locally(tmp_path: Path) -> None:
    with client_for(tmp_path / "app", trusted_hosts=["127.0.0.1", "localhost"]) as client:
        assert client.get("/api/projects").status_code == 400  # TestClient's host is "testserver"
        assert client.get("/api/projects", headers={"host": "127.0.0.1:8765"}).status_code == 200


def test_training_is_refused_clearly_until_the_data_is_usable(client: TestClient) -> None:
    client.post("/api/projects", json={"name": "p"})
    res = client.post("/api/projects/p/runs", json={})
    assert res.status_code == 400 and "at least two classes" in res.json()["error"]
    client.post("/api/projects/p/classes", json={"name": "Bag"})
    client.post("/api/projects/p/classes", json={"name": "Sneaker"})
    upload(client, "p", "Bag", sample_images("Bag", 8))
    res = client.post("/api/projects/p/runs", json={})
    assert res.status_code == 400
    assert "class 'Sneaker' has no images" in res.json()["error"]
    res = client.post("/api/projects/p/runs", json={"strategy": "best", "time_budget": 1, "img_size": 4})
    assert res.status_code == 400
    msg = res.json()["error"]
    assert "strategy must be one of" in msg and "time budget" in msg and "image size" in msg
    res = client.post("/api/projects/p/runs", json={"time_budget": "soon"})
    assert res.status_code == 422 and "time_budget" in res.json()["error"]
    assert client.get("/api/projects/p/runs").json() == []


def test_folder_import(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    for cls in ("Bag", "Sneaker"):
        (src / cls).mkdir(parents=True)
        for p in sample_images(cls, 3):
            (src / cls / p.name).write_bytes(p.read_bytes())
    (src / "Bag" / "readme.txt").write_text("not an image")
    (src / "Bag" / "fake.png").write_text("not a png")
    with client_for(tmp_path / "app") as client:
        client.post("/api/projects", json={"name": "p"})
        res = client.post("/api/projects/p/import", json={"folder": str(src)})
        assert res.status_code == 200
        body = res.json()
        assert len(body["added"]) == 6
        reasons = {Path(r["file"]).name: r["reason"] for r in body["rejected"]}
        assert "unsupported extension" in reasons["readme.txt"] and "not a usable image" in reasons["fake.png"]
        assert client.get("/api/projects/p").json()["audit"]["classes"] == {"Bag": 3, "Sneaker": 3}
        res = client.post("/api/projects/p/import", json={"folder": str(tmp_path / "nope")})
        assert res.status_code == 400 and "is not a folder" in res.json()["error"]
    with client_for(tmp_path / "app", allow_folder_import=False) as client:
        res = client.post("/api/projects/p/import", json={"folder": str(src)})
        assert res.status_code == 403 and "upload the images" in res.json()["error"]


def _fake_run(store: Store, project: str, run: str) -> Path:
    run_dir = store.runs_dir(project) / run
    (run_dir / "checkpoints" / "last").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train: x\n")
    return run_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_state_comes_from_the_run_directory(tmp_path: Path) -> None:
    """A run whose process is gone is interrupted (resumable), failed (with thaw's message) or finished."""
    store = Store(tmp_path / "app")
    store.create_project("p")
    jobs = JobManager(store)
    run_dir = _fake_run(store, "p", "r1")
    job = {"pid": _dead_pid(), "started": time.time() - 5, "ended": None, "returncode": None, "command": "thaw fit x"}
    (run_dir.parent / "r1.job.json").write_text(json.dumps(job))
    (run_dir / "checkpoints" / "last" / "state.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "phase": "probe", "val_accuracy": 0.5}\n{"epoch": 2, "pha')
    info = jobs.describe("p", "r1")
    assert info["status"] == "interrupted" and info["resumable"]
    assert "last finished epoch" in info["message"] and info["epochs_done"] == 1 and info["epoch"] == 1
    assert jobs.active() is None

    (run_dir.parent / "r1.log").write_text("scanned\nthaw: error: unknown model 'resnet9000': did you mean resnet50?\n")
    job["returncode"] = 2
    (run_dir.parent / "r1.job.json").write_text(json.dumps(job))
    info = jobs.describe("p", "r1")
    assert info["status"] == "failed" and info["message"] == "unknown model 'resnet9000': did you mean resnet50?"

    (run_dir / "model").mkdir()
    (run_dir / "model" / "config.json").write_text("{}")
    (run_dir / "summary.json").write_text(json.dumps({"best_val_accuracy": 0.9, "strategy": "auto"}))
    info = jobs.describe("p", "r1")
    assert info["status"] == "finished" and info["best_val_accuracy"] == 0.9 and not info["resumable"]
    # a process id that now belongs to another program does not count as training
    job.update(pid=os.getpid(), ended=None)
    (run_dir.parent / "r1.job.json").write_text(json.dumps(job))
    assert jobs.describe("p", "r1")["status"] == "finished" and jobs.active() is None


def test_concurrent_train_requests_start_one_run(tmp_path: Path) -> None:
    with client_for(tmp_path / "app") as client:
        make_project(client, per_class=5)
        body = {"strategy": "linear", "time_budget": 30, "img_size": 32}
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: client.post("/api/projects/fashion/runs", json=body), range(2)))
        codes = sorted(r.status_code for r in results)
        assert codes == [202, 409], [r.text for r in results]
        refused = next(r for r in results if r.status_code == 409).json()["error"]
        assert "one run trains at a time" in refused
        started = next(r for r in results if r.status_code == 202).json()
        assert started["status"] == "training"
        assert client.get("/api/active").json() == {"project": "fashion", "run": started["name"]}
        res = client.post(f"/api/projects/fashion/runs/{started['name']}/stop")
        assert res.status_code == 200
        info = client.app.state.jobs.wait("fashion", started["name"], timeout=60)  # type: ignore[attr-defined]
        assert info["status"] in ("interrupted", "failed") and info["status"] != "training"
        assert client.get("/api/active").json() is None
        assert client.post(f"/api/projects/fashion/runs/{started['name']}/stop").status_code == 409


def test_cli_app_options_and_missing_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from thaw.cli import build_parser, main

    ns = build_parser().parse_args(["app", "--data", "runs", "--port", "9000", "--no-browser", "--host", "::1"])
    assert (str(ns.data), ns.port, ns.no_browser, ns.host) == ("runs", 9000, True, "::1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "uvicorn" else real(n, *a))
    assert main(["app", "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "thaw: error: thaw app needs uvicorn: pip install 'thaw[app]'"


def test_serve_binds_locally_and_warns_for_other_hosts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    from thaw.app import is_loopback, serve

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    with caplog.at_level(logging.WARNING, logger="thaw.app"):
        serve(tmp_path / "a", open_browser=False)
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8765 and not caplog.records
    with caplog.at_level(logging.WARNING, logger="thaw.app"):
        serve(tmp_path / "a", host="0.0.0.0", port=9000, open_browser=False)
    assert calls[-1]["host"] == "0.0.0.0" and "there is no login" in caplog.text  # type: ignore[comparison-overlap]
    remote = TestClient(calls[-1]["app"], headers={"x-thaw-app": "1"})  # type: ignore[arg-type]
    assert remote.post("/api/projects/x/import", json={"folder": "/"}).status_code == 403
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.2")
