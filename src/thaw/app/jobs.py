"""Training jobs: one ``python -m thaw fit`` subprocess at a time, its state read back from the run directory.

Training runs in a child process rather than a thread so that a run can be stopped like any thaw run (SIGTERM:
thaw ends the epoch loop and keeps its last atomic checkpoint) and resumed with ``thaw fit --resume RUN_DIR``,
and so that the app stays responsive while torch uses every core.

Nothing about a run is held only in memory. Beside each run directory ``RUN/`` the app keeps ``RUN.job.json``
(the command, process id, start/end times, exit code) and ``RUN.log`` (thaw's console output); everything else
(epochs, phases, decisions, the report) is read from the run directory itself. After a browser refresh or an app
restart the same files give the same answer: a run whose process is gone without a ``summary.json`` is shown as
*interrupted* and can be resumed from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thaw.app.store import AppError, NotFound, Store, check_name
from thaw.config import STRATEGIES
from thaw.strategy.registry import required_options

__all__ = ["TrainRequest", "JobManager", "MODELS", "read_metrics"]

log = logging.getLogger(__name__)

#: Models offered on the Train page (any timm name can be typed; these work offline or are small).
MODELS = ("efficientnet_lite0", "resnet18", "mobilenetv3_large_100", "convnext_atto", "vit_tiny_patch16_224")
_LOG_TAIL = 60
_ERROR_LINE = re.compile(r"^(thaw: error: |\w*Error: )")


@dataclass(frozen=True)
class TrainRequest:
    """What the Train page asks for; turned into a ``thaw fit`` command line.

    Attributes:
        strategy: one of thaw's strategies (``auto`` by default).
        time_budget: seconds of training for ``auto`` (and a cap for the others); None: no budget.
        model: timm architecture name.
        img_size: input resolution in pixels; None: the model's own.
        epochs: epochs per fine-tuning phase for explicit strategies; None: thaw's default.
        k: ``last-k``'s number of groups.
    """

    strategy: str = "auto"
    time_budget: float | None = 120.0
    model: str = "efficientnet_lite0"
    img_size: int | None = None
    epochs: int | None = None
    k: int | None = None

    def validate(self) -> None:
        """Raise AppError with every problem of the request at once."""
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if "groups" in required_options(self.strategy):  # the Train page has no field for group names
            problems.append("the groups strategy needs group names: use `thaw fit --strategy groups` in a terminal")
        if self.time_budget is not None and not 5 <= self.time_budget <= 24 * 3600:
            problems.append("time budget must be between 5 seconds and 24 hours")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,80}", self.model):
            problems.append(f"model {self.model!r} is not a timm architecture name")
        if self.img_size is not None and not 16 <= self.img_size <= 1024:
            problems.append("image size must be between 16 and 1024 pixels")
        if self.epochs is not None and not 1 <= self.epochs <= 1000:
            problems.append("epochs must be between 1 and 1000")
        if self.k is not None and not 1 <= self.k <= 100:
            problems.append("k must be between 1 and 100")
        if problems:
            raise AppError("; ".join(problems))

    def fit_options(self) -> list[str]:
        """The ``thaw fit`` options of this request (without the data path and ``--out``)."""
        opts = ["--strategy", self.strategy, "--model", self.model]
        if self.time_budget is not None:
            opts += ["--time-budget", f"{self.time_budget:g}s"]
        if self.img_size is not None:
            opts += ["--img-size", str(self.img_size)]
        if self.epochs is not None:
            opts += ["--epochs", str(self.epochs)]
        if self.k is not None and "k" in required_options(self.strategy):
            opts += ["--k", str(self.k)]
        return opts


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` written so far (a half-written last line is ignored)."""
    path = run_dir / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _pid_alive(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` still runs this run's training (and is not a recycled process id)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: make sure the id was not reused by another program
        try:
            return str(run_dir).encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


class JobManager:
    """Starts, stops, resumes and describes training runs; one run trains at a time.

    Args:
        store: the app's data folder.
        python: interpreter for the training process (default: the one running the app).
    """

    def __init__(self, store: Store, python: str | None = None) -> None:
        self.store = store
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._procs: dict[Path, subprocess.Popen[bytes]] = {}

    # ---------------------------------------------------------------------------------------------- files
    def run_dir(self, project: str, run: str) -> Path:
        path = self.store.runs_dir(project) / check_name(run, "run")
        if not path.resolve().is_relative_to(self.store.root):
            raise AppError("that run is outside the app's data folder", status=403)
        return path

    def _job_path(self, run_dir: Path) -> Path:
        return run_dir.with_name(run_dir.name + ".job.json")

    def _log_path(self, run_dir: Path) -> Path:
        return run_dir.with_name(run_dir.name + ".log")

    def list_runs(self, project: str) -> list[dict[str, Any]]:
        """Every run of a project, newest first, each described by :meth:`describe` (without curves)."""
        runs_dir = self.store.runs_dir(project)
        names = {p.name for p in runs_dir.iterdir() if p.is_dir()}
        names |= {p.name[: -len(".job.json")] for p in runs_dir.glob("*.job.json")}
        out = [self.describe(project, n, curves=False) for n in names if re.fullmatch(r"[A-Za-z0-9][\w.+-]*", n)]
        return sorted(out, key=lambda r: r.get("started") or 0, reverse=True)

    # ---------------------------------------------------------------------------------------------- state
    def active(self) -> tuple[str, str] | None:
        """(project, run) of the run that is training now, in this app or a previous one; None when idle."""
        for project in self.store.list_projects():
            runs_dir = self.store.runs_dir(project)
            for job_path in runs_dir.glob("*.job.json"):
                job = _read_json(job_path)
                if job is None:
                    continue
                run_dir = runs_dir / job_path.name[: -len(".job.json")]
                if self._running(run_dir, job):
                    return project, run_dir.name
        return None

    def _running(self, run_dir: Path, job: dict[str, Any]) -> bool:
        proc = self._procs.get(run_dir)
        if proc is not None:
            return proc.poll() is None
        pid = job.get("pid")
        return job.get("ended") is None and isinstance(pid, int) and _pid_alive(pid, run_dir)

    def describe(self, project: str, run: str, *, curves: bool = True) -> dict[str, Any]:
        """Everything the pages show about one run, from its files.

        ``status`` is one of ``training``, ``finished``, ``interrupted`` (resumable), ``failed``.
        """
        run_dir = self.run_dir(project, run)
        job = _read_json(self._job_path(run_dir))
        if job is None and not run_dir.is_dir():
            raise NotFound(f"project {project!r} has no run {run!r}")
        job = job or {}
        summary = _read_json(run_dir / "summary.json")
        log_lines = self._log_tail(run_dir)
        running = self._running(run_dir, job)
        has_model = (run_dir / "model" / "config.json").is_file()
        has_config = (run_dir / "config.yaml").is_file()
        resumable_ckpt = (run_dir / "checkpoints" / "last" / "state.json").is_file()
        message = ""
        if running:
            status = "training"
        elif summary is not None and has_model:
            status = "finished"
        else:
            error = next((ln for ln in reversed(log_lines) if _ERROR_LINE.match(ln)), None)
            code = job.get("returncode")
            stopped = job.get("stop_requested") or code in (130, -signal.SIGTERM, -signal.SIGINT)
            if error and not stopped:
                status, message = "failed", error.removeprefix("thaw: error: ")
            elif has_config:
                status = "interrupted"
                message = (
                    "stopped; resume continues from the last finished epoch"
                    if resumable_ckpt
                    else "stopped before the first epoch finished; resume starts it again"
                )
            else:
                status, message = "failed", "the run stopped before it started; start a new one"
        metrics = read_metrics(run_dir)
        last = metrics[-1] if metrics else {}
        started = job.get("started")
        elapsed = (job.get("ended") or time.time()) - started if started else None
        budget = job.get("time_budget")
        time_left = max(0.0, budget - elapsed) if running and budget and elapsed is not None else None
        info: dict[str, Any] = {
            "project": project,
            "name": run,
            "status": status,
            "message": message,
            "resumable": status == "interrupted",
            "started": started,
            "elapsed": elapsed,
            "time_budget": budget,
            "time_left": time_left,
            "request": job.get("request", {}),
            "command": job.get("command", ""),
            "epoch": last.get("epoch"),
            "phase": _phase_label(last),
            "trainable_groups": last.get("trainable_groups"),
            "epochs_done": len(metrics),
            "has_report": (run_dir / "report.html").is_file(),
            "has_model": has_model,
            "has_onnx": (run_dir / "model.onnx").is_file(),
            "best_val_accuracy": (summary or {}).get("best_val_accuracy"),
            "test_accuracy": (summary or {}).get("test_accuracy"),
            "strategy": (summary or {}).get("strategy") or job.get("request", {}).get("strategy"),
            "model": (summary or {}).get("model") or job.get("request", {}).get("model"),
            "classes": (summary or {}).get("classes"),
        }
        if curves:
            info["metrics"] = metrics
            info["log"] = log_lines
            info["decisions"] = (summary or {}).get("decisions", [])
            info["phases"] = [
                {k: ph.get(k) for k in ("index", "name", "trainable_groups", "epochs", "best_val_accuracy", "reason")}
                for ph in (summary or {}).get("phases", [])
            ]
        return info

    def _log_tail(self, run_dir: Path) -> list[str]:
        try:
            with open(self._log_path(run_dir), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return []
        # a terminal progress bar would use \r; keep the last state of each line
        lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
        return [ln for ln in lines if ln][-_LOG_TAIL:]

    # ---------------------------------------------------------------------------------------------- actions
    def start(self, project: str, request: TrainRequest, name: str | None = None) -> dict[str, Any]:
        """Start training a project's images with ``request``; refused while another run trains.

        Raises:
            AppError: another run is training (409), the data is not ready, or the request is invalid.
        """
        request.validate()
        audit = self.store.audit(project)
        if audit["problems"]:
            raise AppError("cannot train yet: " + "; ".join(audit["problems"]))
        with self._lock:
            self._refuse_if_busy()
            runs_dir = self.store.runs_dir(project)
            run = check_name(name, "run") if name else _new_run_name(runs_dir, request.strategy)
            run_dir = self.run_dir(project, run)
            if run_dir.exists() or self._job_path(run_dir).exists():
                raise AppError(f"a run named {run!r} already exists: pick another name", status=409)
            data = self.store.images_dir(project)
            argv = [str(data), *request.fit_options(), "--out", str(run_dir)]
            job = {
                "request": request.__dict__,
                "command": shlex.join(["thaw", "fit", *argv]),
                "time_budget": request.time_budget,
            }
            self._spawn(run_dir, ["fit", *argv], job)
        return self.describe(project, run)

    def resume(self, project: str, run: str) -> dict[str, Any]:
        """Continue an interrupted run from its last checkpoint (``thaw fit --resume RUN_DIR``)."""
        info = self.describe(project, run, curves=False)
        if info["status"] == "finished":
            raise AppError(f"run {run!r} has finished: nothing to resume", status=409)
        if info["status"] == "training":
            raise AppError(f"run {run!r} is already training", status=409)
        run_dir = self.run_dir(project, run)
        if not (run_dir / "config.yaml").is_file():
            raise AppError(f"run {run!r} stopped before it was set up: start a new run instead", status=409)
        with self._lock:
            self._refuse_if_busy()
            old = _read_json(self._job_path(run_dir)) or {}
            job = {k: old.get(k) for k in ("request", "command", "time_budget")}
            job["resumed_from"] = old.get("started")
            self._spawn(run_dir, ["fit", "--resume", str(run_dir)], job)
        return self.describe(project, run)

    def stop(self, project: str, run: str) -> dict[str, Any]:
        """Ask a training run to stop (SIGTERM): thaw keeps its last finished epoch's checkpoint."""
        run_dir = self.run_dir(project, run)
        job = _read_json(self._job_path(run_dir))
        if job is None or not self._running(run_dir, job):
            raise AppError(f"run {run!r} is not training", status=409)
        job["stop_requested"] = True
        _write_json(self._job_path(run_dir), job)
        proc = self._procs.get(run_dir)
        pid = proc.pid if proc is not None else int(job["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return self.describe(project, run)

    def wait(self, project: str, run: str, timeout: float) -> dict[str, Any]:
        """Block until the run is no longer training (or ``timeout`` seconds pass); returns its description."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.describe(project, run, curves=False)
            if info["status"] != "training" or time.monotonic() > deadline:
                return info
            time.sleep(0.2)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the runs this app started (they stay resumable) and wait for them to exit."""
        for run_dir, proc in list(self._procs.items()):
            if proc.poll() is None:
                job = _read_json(self._job_path(run_dir)) or {}
                job["stop_requested"] = True
                _write_json(self._job_path(run_dir), job)
                proc.terminate()
        for proc in list(self._procs.values()):
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _refuse_if_busy(self) -> None:
        busy = self.active()
        if busy is not None:
            raise AppError(
                f"run {busy[1]!r} of project {busy[0]!r} is training: one run trains at a time; "
                "stop it or wait until it finishes",
                status=409,
            )

    def _spawn(self, run_dir: Path, args: list[str], job: dict[str, Any]) -> None:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(run_dir)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
        with open(log_path, "ab") as log_fh:
            log_fh.write(f"$ {shlex.join(['thaw', *args])}\n".encode())
            log_fh.flush()
            proc = subprocess.Popen(
                [self.python, "-m", "thaw", *args],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # its own process group: Ctrl-C in the app's terminal reaches the app, which stops the run
                # cleanly itself (shutdown), instead of both receiving it at once
                start_new_session=True,
            )
        job.update({"pid": proc.pid, "started": time.time(), "ended": None, "returncode": None})
        job["argv"] = args
        _write_json(self._job_path(run_dir), job)
        self._procs[run_dir] = proc
        log.info("training started: %s (pid %d)", run_dir, proc.pid)
        threading.Thread(target=self._reap, args=(run_dir, proc), daemon=True).start()

    def _reap(self, run_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        job = _read_json(self._job_path(run_dir)) or {}
        job.update({"ended": time.time(), "returncode": code})
        _write_json(self._job_path(run_dir), job)
        log.info("training process of %s exited with code %d", run_dir, code)


def _phase_label(row: dict[str, Any]) -> str | None:
    """'2 · partial' from a metrics row (``phase`` is the 0-based index; ``phase_name`` where thaw writes it)."""
    index, name = row.get("phase"), row.get("phase_name")
    if index is None:
        return None
    number = f"{index + 1}" if isinstance(index, int) else str(index)
    return f"{number} · {name}" if name else number


def _new_run_name(runs_dir: Path, strategy: str) -> str:
    base = time.strftime("%Y%m%d-%H%M%S") + "-" + strategy
    name, n = base, 1
    while (runs_dir / name).exists() or (runs_dir / f"{name}.job.json").exists():
        name = f"{base}-{n}"
        n += 1
    return name
