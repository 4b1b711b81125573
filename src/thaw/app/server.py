"""The FastAPI application behind ``thaw app``: JSON API, server-sent progress events and the page's assets.

Every route maps onto :class:`~thaw.app.store.Store` (projects, classes, images), :class:`~thaw.app.jobs.JobManager`
(training runs) or thaw's public API (``thaw.predict``, ``thaw.onnx_run.export_run_onnx``). Errors meant for people
come back as ``{"error": "..."}`` with a 4xx status, and the page shows the message as it is.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from thaw import __version__
from thaw.app.jobs import MODELS, JobManager, TrainRequest
from thaw.app.store import MAX_UPLOAD_BYTES, AppError, NotFound, Store
from thaw.config import STRATEGIES
from thaw.errors import ThawError

__all__ = ["create_app", "CSRF_HEADER"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
#: Every request that changes something must carry this header. Browsers send custom headers only after a CORS
#: preflight, which this app never grants, so another web site open in the same browser cannot post to it.
CSRF_HEADER = "x-thaw-app"
_CHUNK = 1024 * 1024
_SSE_INTERVAL = 1.0


# lengths are checked loosely here and exactly by check_name, whose message says what is allowed
class ProjectIn(BaseModel):
    name: str = Field(max_length=256)


class ClassIn(BaseModel):
    name: str = Field(max_length=256)


class ImportIn(BaseModel):
    folder: str = Field(max_length=4096)
    class_name: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class TrainIn(TrainRequest):
    """The Train page's request body: TrainRequest's fields (declared there once) and the run's name."""

    name: Annotated[str | None, Field(max_length=64)] = None

    def request(self) -> TrainRequest:
        """The training request without the run name (the name is not part of what is trained)."""
        return TrainRequest(**{f.name: getattr(self, f.name) for f in fields(TrainRequest)})


def create_app(
    data_dir: str | Path,
    *,
    allow_folder_import: bool = True,
    trusted_hosts: list[str] | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_request_bytes: int = 1024 * 1024 * 1024,
    stop_runs_on_exit: bool = True,
) -> FastAPI:
    """Build the app over a data folder.

    Args:
        data_dir: where projects, images and runs live (created when missing).
        allow_folder_import: let the page copy images from a folder path on the serving computer (``thaw app``
            turns this off when it listens beyond this computer).
        trusted_hosts: accepted ``Host`` headers (guards a local server against DNS rebinding); None: any.
        max_upload_bytes: largest single uploaded file.
        max_request_bytes: largest request body (checked from ``Content-Length`` before reading).
        stop_runs_on_exit: when the server stops, stop its training run (it stays resumable).

    Returns:
        The FastAPI application (serve it with uvicorn).
    """
    store = Store(data_dir)
    jobs = JobManager(store)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if stop_runs_on_exit:
            await run_in_threadpool(jobs.shutdown)

    app = FastAPI(title="thaw", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store = store
    app.state.jobs = jobs
    if trusted_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in ("GET", "HEAD", "OPTIONS") and request.headers.get(CSRF_HEADER) != "1":
            return _error(f"requests that change data need the {CSRF_HEADER} header (sent by the app's page)", 403)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_request_bytes:
            return _error(
                f"request too large: at most {max_request_bytes // 2**20} MB per upload; send fewer files", 413
            )
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(ThawError)
    async def thaw_error(_request: Request, exc: ThawError) -> JSONResponse:
        return _error(str(exc), exc.status if isinstance(exc, AppError) else 400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return _error("invalid request: " + "; ".join(parts), 422)

    # ------------------------------------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "data_dir": str(store.root),
            "models": list(MODELS),
            "strategies": list(STRATEGIES),
            "defaults": TrainRequest().__dict__,
            "folder_import": allow_folder_import,
            "max_upload_bytes": max_upload_bytes,
            "active": _active(jobs),
        }

    # ------------------------------------------------------------------------------------------------ data
    @app.get("/api/projects")
    def projects() -> list[dict[str, Any]]:
        out = []
        for name in store.list_projects():
            classes = store.list_classes(name)
            out.append(
                {
                    "name": name,
                    "classes": len(classes),
                    "images": sum(len(store.list_images(name, c)) for c in classes),
                    "runs": len(jobs.list_runs(name)),
                }
            )
        return out

    @app.post("/api/projects", status_code=201)
    def create_project(body: ProjectIn) -> dict[str, Any]:
        return {"name": store.create_project(body.name)}

    @app.delete("/api/projects/{project}")
    def delete_project(project: str) -> dict[str, Any]:
        busy = jobs.active()
        if busy is not None and busy[0] == project:
            raise AppError(f"project {project!r} is training: stop the run first", status=409)
        store.delete_project(project)
        return {"deleted": project}

    @app.get("/api/projects/{project}")
    def project(project: str) -> dict[str, Any]:
        classes = [{"name": c, "images": store.list_images(project, c)} for c in store.list_classes(project)]
        return {"name": project, "classes": classes, "audit": store.audit(project)}

    @app.post("/api/projects/{project}/classes", status_code=201)
    def add_class(project: str, body: ClassIn) -> dict[str, Any]:
        return {"name": store.add_class(project, body.name)}

    @app.delete("/api/projects/{project}/classes/{cls}")
    def delete_class(project: str, cls: str) -> dict[str, Any]:
        store.delete_class(project, cls)
        return {"deleted": cls}

    @app.post("/api/projects/{project}/classes/{cls}/images", response_model=None)
    async def upload_images(
        project: str, cls: str, files: Annotated[list[UploadFile], File()]
    ) -> dict[str, Any] | JSONResponse:
        await run_in_threadpool(store.class_dir, project, cls)  # 404 before reading any upload
        tmp = store.new_temp_dir()
        try:
            saved, too_big = await _save_uploads(files, tmp, max_upload_bytes)
            report = await run_in_threadpool(store.add_uploads, project, cls, saved)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report.rejected[:0] = too_big
        if too_big:
            store.note_rejected(project, too_big)
        if not report.added and report.rejected:
            status = 413 if len(too_big) == len(report.rejected) else 415
            reasons = "; ".join(r["reason"] for r in report.rejected[:3])
            more = f" (and {len(report.rejected) - 3} more)" if len(report.rejected) > 3 else ""
            return _error(f"no image added: {reasons}{more}", status, report.to_dict())
        return report.to_dict()

    @app.post("/api/projects/{project}/import")
    def import_folder(project: str, body: ImportIn) -> dict[str, Any]:
        if not allow_folder_import:
            raise AppError(
                "importing a folder by path is off because the app listens beyond this computer: upload the images",
                status=403,
            )
        return store.import_folder(project, body.folder, body.class_name).to_dict()

    @app.get("/api/projects/{project}/classes/{cls}/images/{filename}")
    def image(project: str, cls: str, filename: str) -> FileResponse:
        return FileResponse(store.image_path(project, cls, filename))

    @app.get("/api/projects/{project}/classes/{cls}/thumbs/{filename}")
    def thumb(project: str, cls: str, filename: str) -> FileResponse:
        return FileResponse(store.thumb_path(project, cls, filename), headers={"Cache-Control": "max-age=3600"})

    @app.delete("/api/projects/{project}/classes/{cls}/images/{filename}")
    def delete_image(project: str, cls: str, filename: str) -> dict[str, Any]:
        store.delete_image(project, cls, filename)
        return {"deleted": filename}

    # ------------------------------------------------------------------------------------------------ runs
    @app.get("/api/projects/{project}/runs")
    def runs(project: str) -> list[dict[str, Any]]:
        return jobs.list_runs(project)

    @app.post("/api/projects/{project}/runs", status_code=202)
    def train(project: str, body: TrainIn) -> dict[str, Any]:
        return jobs.start(project, body.request(), name=body.name)

    @app.get("/api/projects/{project}/runs/{run}")
    def run(project: str, run: str) -> dict[str, Any]:
        return jobs.describe(project, run)

    @app.post("/api/projects/{project}/runs/{run}/stop")
    def stop(project: str, run: str) -> dict[str, Any]:
        return jobs.stop(project, run)

    @app.post("/api/projects/{project}/runs/{run}/resume", status_code=202)
    def resume(project: str, run: str) -> dict[str, Any]:
        return jobs.resume(project, run)

    @app.get("/api/projects/{project}/runs/{run}/events")
    async def events(request: Request, project: str, run: str) -> StreamingResponse:
        await run_in_threadpool(jobs.describe, project, run, curves=False)  # 404 now, not inside the stream

        async def stream() -> AsyncIterator[str]:
            last = ""
            idle = 0.0
            while not await request.is_disconnected():
                state = await run_in_threadpool(jobs.describe, project, run)
                text = json.dumps(state)
                if text != last:
                    yield f"event: state\ndata: {text}\n\n"
                    last, idle = text, 0.0
                elif idle >= 15:
                    yield ": keep-alive\n\n"
                    idle = 0.0
                if state["status"] != "training":
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(_SSE_INTERVAL)
                idle += _SSE_INTERVAL

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/projects/{project}/runs/{run}/report")
    def report(project: str, run: str) -> FileResponse:
        path = jobs.run_dir(project, run) / "report.html"
        if not path.is_file():
            raise NotFound(f"run {run!r} has no report yet: it is written when the run finishes")
        # the report is self-contained; a sandboxed frame keeps any of its scripts away from the app's API
        return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": "sandbox allow-scripts"})

    @app.get("/api/projects/{project}/runs/{run}/audit")
    def run_audit(project: str, run: str) -> Response:
        path = jobs.run_dir(project, run) / "audit.json"
        if not path.is_file():
            raise NotFound(f"run {run!r} has no audit.json yet")
        return Response(path.read_bytes(), media_type="application/json")

    @app.get("/api/projects/{project}/runs/{run}/model.zip")
    def model_zip(project: str, run: str) -> Response:
        model_dir = _finished_model(jobs, project, run)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    zf.write(path, f"model/{path.relative_to(model_dir).as_posix()}")
        headers = {"Content-Disposition": f'attachment; filename="{run}-model.zip"'}
        return Response(buf.getvalue(), media_type="application/zip", headers=headers)

    @app.post("/api/projects/{project}/runs/{run}/onnx")
    def export_onnx(project: str, run: str) -> dict[str, Any]:
        _finished_model(jobs, project, run)
        if jobs.active() is not None:
            raise AppError("a run is training: export ONNX when it has finished (both need the CPU)", status=409)
        from thaw.onnx_run import export_run_onnx

        result = export_run_onnx(jobs.run_dir(project, run))
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}

    @app.get("/api/projects/{project}/runs/{run}/model.onnx")
    def onnx_file(project: str, run: str) -> FileResponse:
        path = jobs.run_dir(project, run) / "model.onnx"
        if not path.is_file():
            raise NotFound("no ONNX file yet: press 'Export ONNX' first")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{run}.onnx")

    @app.post("/api/projects/{project}/runs/{run}/predict")
    async def predict(
        project: str, run: str, files: Annotated[list[UploadFile], File()], top_k: int = 3
    ) -> dict[str, Any]:
        run_dir = await run_in_threadpool(_finished_model, jobs, project, run)
        tmp = store.new_temp_dir()
        try:
            saved, too_big = await _save_uploads(files, tmp, max_upload_bytes)
            result = await run_in_threadpool(_predict, run_dir.parent, saved, max(1, min(top_k, 10)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result["skipped"][:0] = too_big
        return result

    @app.get("/api/active")
    def active() -> dict[str, Any] | None:
        return _active(jobs)

    return app


def _active(jobs: JobManager) -> dict[str, Any] | None:
    busy = jobs.active()
    return {"project": busy[0], "run": busy[1]} if busy else None


def _error(message: str, status: int, extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **(extra or {})}, status_code=status)


def _finished_model(jobs: JobManager, project: str, run: str) -> Path:
    model_dir = jobs.run_dir(project, run) / "model"
    if not (model_dir / "config.json").is_file():
        jobs.describe(project, run, curves=False)  # 404 for an unknown run
        raise AppError(f"run {run!r} has no model yet: it is exported when the run finishes", status=409)
    return model_dir


async def _save_uploads(
    files: list[UploadFile], folder: Path, limit: int
) -> tuple[list[tuple[Path, str]], list[dict[str, str]]]:
    """Write uploads to ``folder`` under numbered names, refusing any over ``limit`` bytes (read in chunks)."""
    saved: list[tuple[Path, str]] = []
    too_big: list[dict[str, str]] = []
    for i, upload in enumerate(files):
        original = upload.filename or f"upload-{i}"
        target = folder / f"{i:05d}"
        size = 0
        with open(target, "wb") as fh:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    break
                fh.write(chunk)
        await upload.close()
        if size > limit:
            target.unlink()
            too_big.append({"file": original, "reason": f"{original}: larger than {limit / 2**20:.0f} MB"})
        else:
            saved.append((target, original))
    return saved, too_big


def _predict(run_dir: Path, files: list[tuple[Path, str]], top_k: int) -> dict[str, Any]:
    """thaw.predict on uploaded files, reported under the names the user gave them."""
    import thaw
    from thaw.data.decode import DecodeError, decode_image

    names = {str(path): original for path, original in files}
    usable: list[str] = []
    skipped: list[dict[str, str]] = []
    for path, original in files:
        try:
            decode_image(path)  # the same check as at upload: a clear reason for a non-image
        except DecodeError as err:
            skipped.append({"file": original, "reason": f"{original}: not a usable image ({err.reason})"})
            continue
        usable.append(str(path))
    if not usable:
        return {"predictions": [], "skipped": skipped}
    preds, more = thaw.predict(run_dir, usable, top_k=top_k)
    skipped += [{"file": names.get(s.path, s.path), "reason": s.reason} for s in more]
    out = [
        {"file": names.get(p.path, p.path), "top": [{"label": lab, "probability": pr} for lab, pr in p.top]}
        for p in preds
    ]
    return {"predictions": out, "skipped": skipped}
