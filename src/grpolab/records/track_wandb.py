"""The W&B backend of `grpolab.records.tracking`: online when `WANDB_API_KEY` is set (or
`tracking.wandb_key_file` names a file holding it), offline otherwise (`wandb sync` uploads later).
The key is never written anywhere by us; a key that failed online is remembered
(`grpolab.records.wandb_key`) so the next stages go offline at once.
"""
from __future__ import annotations

import os
from pathlib import Path

from grpolab.records import wandb_key
from grpolab.records.backend import RunInfo, Unavailable, warn


class WandbBackend:
    name, label = "wandb", "W&B"

    def __init__(self, run: RunInfo):
        import wandb  # ImportError: the facade reports "not recording"

        p, self.done, root = run.p, -1, run.root
        key = os.environ.get("WANDB_API_KEY", "")
        kf = p.tracking.wandb_key_file
        if not key and kf and Path(kf).expanduser().exists():
            key = Path(kf).expanduser().read_text().strip()
        modes = ["online", "offline"] if key else ["offline"]
        earlier = wandb_key.remembered_failure(root, key) if key else None
        if earlier:  # detected once; every later stage goes offline at once, with this one line
            warn(f"W&B offline: online failed earlier with this key ({earlier}); "
                 f"delete {wandb_key.marker(root)} to try online again")
            modes = ["offline"]
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or 30)
        for mode in modes:
            try:
                settings = wandb.Settings(silent=True, init_timeout=timeout,
                                          **({"api_key": key} if mode == "online" else {}))
                wid = run.resume.get("wandb_run_id")
                self.wandb_run = wandb.init(
                    project=p.project_name, name=run.run_name, config=run.params, mode=mode,
                    id=wid, resume="allow" if wid else None, dir=str(root), settings=settings,
                    tags=[run.stage], notes=p.request or None,
                )
                self.wandb_run.summary.update(dict(run.tags))
                self.mode, self.where = mode, f"{mode} {self.wandb_run.id}"
                if mode == "online":
                    wandb_key.forget(root)
                return
            except Exception as exc:  # unreachable: go on offline (records sync later)
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if mode == "online":
                    wandb_key.remember_failure(root, key, f"{type(exc).__name__}: {msg.replace(key, '***')}"[:300])
                warn(f"W&B {mode} failed ({type(exc).__name__}: {msg.replace(key, '***') if key else msg})"
                     + ("; continuing offline" if mode == "online" else ""))
        raise Unavailable("W&B")  # warned above, once per mode

    @staticmethod
    def wanted(run: RunInfo) -> bool:
        return run.p.tracking.wandb

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.wandb_run.log(metrics, step=step)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        import wandb

        cols = list(rows[0])
        self.wandb_run.log({name: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])},
                           step=step)

    def log_artifact(self, path: Path) -> None:
        pass  # the report and params are MLflow artifacts; W&B keeps the config and metrics

    def tag(self, tags: dict[str, str]) -> None:
        self.wandb_run.summary.update(tags)

    def ids(self) -> dict:
        out = {"wandb_run_id": self.wandb_run.id, "wandb_mode": self.mode}
        try:  # an offline run is synced from this folder
            out["wandb_dir"] = str(Path(self.wandb_run.settings.sync_dir).resolve())
        except Exception:
            pass
        return out

    def close(self, ok: bool) -> bool:
        self.wandb_run.finish(exit_code=0 if ok else 1)
        return True

    @staticmethod
    def report_row(rec: dict, reached: dict, root: Path) -> list[str] | None:
        if not rec.get("wandb_run_id"):
            return ["W&B logging", "no W&B run recorded this training", "Fail - see the train stage's warnings"]
        if rec.get("wandb_mode") == "offline":
            where = rec.get("wandb_dir", "wandb/offline-run-*")
            try:
                where = str(Path(where).relative_to(root))
            except ValueError:
                pass
            return ["W&B logging", f"run `{rec['wandb_run_id']}` offline in `{where}` (not uploaded)",
                    f"Offline - upload with `wandb sync {where}` (with WANDB_API_KEY set)"]
        return ["W&B logging", f"run `{rec['wandb_run_id']}` ({rec.get('wandb_mode', 'online')})",
                "Pass - metrics logged"]
