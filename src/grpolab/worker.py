"""The per-rank entry point that torchrun and Ray start: `python -m grpolab.worker STAGE PARAMS`.

Runs the stage body (`grpolab.stages.BODIES[STAGE]`) on this rank; returns 0 on success.
"""
from __future__ import annotations

import os
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    from . import config, dist, stages
    from .cli import quiet_logs

    quiet_logs()
    stage, params_path = (argv if argv is not None else sys.argv[1:])[:2]
    os.environ.setdefault("GRPOLAB_WORKER", "torchrun")
    try:
        stages.BODIES[stage](config.load(params_path))
        return 0
    except stages.StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
