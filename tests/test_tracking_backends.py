"""The tracker backend seam (grpolab.records.backend): a backend is one class; the facade opens,
feeds, resumes and closes every backend alike, a backend that fails to start is skipped with a
warning, and the report's tracker rows come from each backend's own `report_row`."""
from __future__ import annotations

import json
from pathlib import Path

from grpolab.params import schema as config
from grpolab.records import tracking
from grpolab.records.backend import RunInfo


class JsonlBackend:
    """A complete backend in a few lines (what a TensorBoard or Aim module would look like)."""
    name, label = "jsonl", "JSONL"

    def __init__(self, run: RunInfo):
        self.path = run.root / f"{run.run_name}.jsonl"
        self.where, self.done = str(self.path), run.resume.get("jsonl_done", -1)

    @staticmethod
    def wanted(run: RunInfo) -> bool:
        return True

    def log(self, metrics, step):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_table(self, name, rows, step):
        pass

    def log_artifact(self, path):
        pass

    def tag(self, tags):
        pass

    def ids(self):
        return {"jsonl_file": str(self.path)}

    def close(self, ok):
        return ok

    @staticmethod
    def report_row(rec, reached, root):
        return ["JSONL logging", Path(rec["jsonl_file"]).name, "Pass" if "jsonl" in reached else "Fail"]


class Broken(JsonlBackend):
    name, label = "broken", "Broken"

    def __init__(self, run):
        raise OSError("disk on fire")

    @staticmethod
    def report_row(rec, reached, root):
        return ["Broken logging", "did not start", "Pass" if "broken" in reached else "Fail"]


def test_a_new_backend_is_one_class(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(tracking, "BACKENDS", (JsonlBackend, Broken))
    p = config.validate({"n_gpus_per_node": 1, "exp_name": "seam"})
    tr = tracking.Tracker(p, stage="train", root=tmp_path, dvclive=False)
    assert "Broken not recording (OSError: disk on fire)" in capfd.readouterr().err
    tr.replay([{"critic/score/mean": 0.1}, {"critic/score/mean": 0.2}])
    tr.log({"critic/score/mean": 0.3, "note": "not a number"}, 3)
    rec = tr.ids()
    tr.close(ok=True)
    rows = [json.loads(x) for x in Path(rec["jsonl_file"]).read_text().splitlines()]
    assert rows == [{"step": 1, "critic/score/mean": 0.1}, {"step": 2, "critic/score/mean": 0.2},
                    {"step": 3, "critic/score/mean": 0.3}]
    assert tr.reached == {"jsonl": rec["jsonl_file"]}
    assert tracking.report_rows(p, rec, tr.reached, tmp_path) == [["JSONL logging", "seam-train.jsonl", "Pass"],
                                                                   ["Broken logging", "did not start", "Fail"]]
    # a backend that did not get everything (close -> False) fails its report row
    tr2 = tracking.Tracker(p, stage="train", root=tmp_path, dvclive=False, resume={"jsonl_done": 5})
    tr2.log({"critic/score/mean": 0.4}, 4)  # a resumed run: steps the backend holds are not sent again
    tr2.close(ok=False)
    assert len(Path(rec["jsonl_file"]).read_text().splitlines()) == 3
    assert tracking.report_rows(p, rec, tr2.reached, tmp_path)[0][2] == "Fail"


def test_the_default_backends_report_from_their_records(tmp_path):
    p = config.validate({"n_gpus_per_node": 1})
    rec = {"mlflow_run_id": "a" * 32, "mlflow_uri": "sqlite:///mlflow.db", "wandb_run_id": "w1",
           "wandb_mode": "offline", "wandb_dir": str(tmp_path / "wandb" / "offline-run-1")}
    rows = tracking.report_rows(p, rec, {"mlflow": "x", "wandb": "offline w1"}, tmp_path)
    assert [r[0] for r in rows] == ["MLflow logging", "W&B logging"]
    assert rows[0][2].startswith("Pass") and "wandb sync wandb/offline-run-1" in rows[1][2]
    assert tracking.report_rows(p, {}, {}, tmp_path) == [
        ["MLflow logging", "no MLflow run recorded this training", "Fail - see the train stage's warnings"],
        ["W&B logging", "no W&B run recorded this training", "Fail - see the train stage's warnings"]]
    off = config.validate({"n_gpus_per_node": 1, "tracking": {"mlflow": False, "wandb": False}})
    assert tracking.report_rows(off, {}, {}, tmp_path) == []
