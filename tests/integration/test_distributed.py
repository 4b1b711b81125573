"""Two CPU processes under torchrun (gloo): DDP across a phase boundary, identical weights, one run tree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import thaw
from tests.conftest import write_image_folder

SRC = str(Path(thaw.__file__).resolve().parents[1])


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_ddp_run(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH (it comes with torch)")
    train = write_image_folder(tmp_path / "train", {"a": 30, "b": 30, "c": 30})
    test = write_image_folder(tmp_path / "test", {"a": 5, "b": 5, "c": 5}, seed=3)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    log_out, log_err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "thaw",
        "fit",
        str(train),
        "--test",
        str(test),
        "--model",
        "test_resnet",
        "--random-init",
        "--img-size",
        "32",
        "--strategy",
        "lp-ft",
        "--epochs",
        "2",
        "--probe-epochs",
        "2",
        "--out",
        str(out),
        "--json",
    ]
    # output goes to files, not pipes: a rank left behind by a failure must not keep the test waiting on a pipe
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, start_new_session=True)
        try:
            code = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("torchrun did not finish in 240 s:\n" + log_err.read_text()[-3000:])
    assert code == 0, log_err.read_text()[-3000:]
    summary = json.loads(log_out.read_text())  # rank 0 alone printed: exactly one JSON document
    dist = summary["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo"
    assert dist["weights_identical_across_ranks"] is True
    assert [p["name"] for p in summary["phases"]] == ["linear-probe", "fine-tune"]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == sum(p["epochs"] for p in summary["phases"])  # written once, not per rank
    top = {p.name for p in out.iterdir()}
    assert top == {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "audit.json",
        "eval.json",
        "predictions.jsonl",
        "model",
        "checkpoints",
        "report.html",
        "plots",
    }
    assert summary == json.loads((out / "summary.json").read_text())
