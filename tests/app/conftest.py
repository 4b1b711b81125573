"""Fixtures of the web-app tests: an app over a temporary data folder, sample images to upload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the app tests need thaw[app]: pip install -e '.[dev]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install -e '.[dev]'")

from fastapi.testclient import TestClient  # noqa: E402

from thaw.app.server import CSRF_HEADER, create_app  # noqa: E402
from thaw.data.sample import sample_data_dir  # noqa: E402

#: Three visually distinct Fashion-MNIST classes: a few epochs at 32-64 px separate them.
SAMPLE_CLASSES = ("Trouser", "Bag", "Sneaker")


def sample_images(cls: str, n: int, split: str = "train") -> list[Path]:
    """The first ``n`` embedded sample images of a class."""
    return sorted((sample_data_dir() / split / cls).glob("*.png"))[:n]


def client_for(data_dir: Path, **options: object) -> TestClient:
    """A TestClient that sends the app's CSRF header, like the page does."""
    return TestClient(create_app(data_dir, **options), headers={CSRF_HEADER: "1"})  # type: ignore[arg-type]


def upload(client: TestClient, project: str, cls: str, paths: list[Path]) -> dict[str, object]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    res = client.post(f"/api/projects/{project}/classes/{cls}/images", files=files)
    assert res.status_code == 200, res.text
    return dict(res.json())


def make_project(client: TestClient, name: str = "fashion", per_class: int = 12) -> str:
    """A project with the three sample classes, ``per_class`` uploaded images each."""
    assert client.post("/api/projects", json={"name": name}).status_code == 201
    for cls in SAMPLE_CLASSES:
        assert client.post(f"/api/projects/{name}/classes", json={"name": cls}).status_code == 201
        if per_class:
            upload(client, name, cls, sample_images(cls, per_class))
    return name


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(tmp_path / "app") as c:
        yield c
