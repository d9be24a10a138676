"""A real `mlflow server` on loopback, stopped mid-run and restarted: no metric is lost."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grpolab.params import schema as config
from grpolab.records.tracking import Tracker

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{db}", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_server_down_mid_run_loses_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    port, db = free_port(), tmp_path / "server.db"
    server = start_server(db, port)
    uri = f"http://127.0.0.1:{port}"
    p = config.validate({"n_gpus_per_node": 1, "tracking": {"mlflow_tracking_uri": uri, "wandb": False}})
    tr = Tracker(p, stage="train", root=tmp_path, dvclive=False)
    try:
        tr.log({"critic/score/mean": 0.1}, 1)
        tr.log({"critic/score/mean": 0.2}, 2)
        stop(server)
        t0 = time.time()
        tr.log({"critic/score/mean": 0.3}, 3)  # server down: buffered, training not blocked for long
        tr.log({"critic/score/mean": 0.4}, 4)
        assert time.time() - t0 < 60 and len(tr.backend("mlflow").pending) == 2 and tr.backend("mlflow").mlflow_down
        server = start_server(db, port)
        tr.log({"critic/score/mean": 0.5}, 5)
        assert not tr.backend("mlflow").pending
        tr.close(ok=True)
        hist = MlflowClient(uri).get_metric_history(tr.ids()["mlflow_run_id"], "critic/score/mean")
        assert sorted((m.step, m.value) for m in hist) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    finally:
        stop(server)


def test_server_never_back_keeps_metrics_in_a_file(tmp_path):
    port, db = free_port(), tmp_path / "server.db"
    server = start_server(db, port)
    p = config.validate({"n_gpus_per_node": 1,
                         "tracking": {"mlflow_tracking_uri": f"http://127.0.0.1:{port}", "wandb": False}})
    tr = Tracker(p, stage="train", root=tmp_path, dvclive=False)
    tr.log({"critic/score/mean": 0.1}, 1)
    stop(server)
    tr.log({"critic/score/mean": 0.2}, 2)
    tr.close(ok=True)
    saved = list(tmp_path.glob("mlflow-pending-*.jsonl"))
    assert len(saved) == 1 and '"step": 2' in saved[0].read_text()
