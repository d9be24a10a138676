"""The dvclive backend of `grpolab.records.tracking`: `dvc exp show` / `dvc plots show` read
`<tracking.dvclive_dir>/` (declared in dvc.yaml). Only the stages DVC shows (train) open it.
"""
from __future__ import annotations

from pathlib import Path

from grpolab.records.backend import RunInfo


class DvcliveBackend:
    name, label = "dvclive", "dvclive"

    def __init__(self, run: RunInfo):
        from dvclive import Live

        # Always written afresh: a resumed run replays its checkpoint's history (`Tracker.replay`),
        # because what is on disk may be another run's (`dvc exp run` restores the baseline's dvclive/).
        self.where = run.p.tracking.dvclive_dir
        self.done = -1
        self.live = Live(str(Path(self.where)), save_dvc_exp=False, dvcyaml=False, resume=False)
        if "data" in getattr(self.live, "_studio_events_to_skip", ()):
            # No DVC Studio: dvclive would still re-read every metric file at every step to build the
            # Studio payload it then drops, a cost that grows with the run (20 ms -> 45 ms per step
            # over 500 steps of 58 metrics: benchmarks/tracking_overhead.py).
            self.live.post_data_to_studio = lambda: None
        self.live.log_params(run.params)

    @staticmethod
    def wanted(run: RunInfo) -> bool:
        return run.dvclive

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, v)
        self.live.next_step()

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        pass  # the run's samples live in MLflow and W&B; dvclive keeps numbers only

    def log_artifact(self, path: Path) -> None:
        pass

    def tag(self, tags: dict[str, str]) -> None:
        pass

    def ids(self) -> dict:
        return {}

    def close(self, ok: bool) -> bool:
        self.live.end()
        return True

    @staticmethod
    def report_row(rec: dict, reached: dict, root: Path) -> list[str] | None:
        return None  # dvclive's numbers are the report's own (dvc exp show); no row of its own
