"""The per-rank entry point that torchrun and Ray start: `python -m grpolab.train.worker BODY PARAMS`.

BODY is the stage body to run on this rank as `package.module:function` (`grpolab.train.launch.run`
passes the function it was given), PARAMS a params file; returns 0 on success.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from grpolab.params import schema
from grpolab.train import dist
from grpolab.util import GrpolabError, quiet_logs


def body_name(fn) -> str:
    """`package.module:function`: how a rank finds the body it runs."""
    return f"{fn.__module__}:{fn.__qualname__}"


def main(argv: list[str] | None = None) -> int:
    quiet_logs()
    target, params_path = (argv if argv is not None else sys.argv[1:])[:2]
    os.environ.setdefault("GRPOLAB_WORKER", "torchrun")
    module, _, name = target.partition(":")
    try:
        body = getattr(importlib.import_module(module), name)
        body(schema.load(params_path))
        return 0
    except GrpolabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
