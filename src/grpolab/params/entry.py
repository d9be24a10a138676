"""The entry point of every `pipelines/<stage>.py`: read and validate params, run one stage function,
exit cleanly.

    run_stage(train)            # python pipelines/train.py [params.yaml]

A params.yaml changed while the pipeline runs is put back first (`grpolab.params.guard`). A bad params
file exits 1 naming every bad key (`key: value — rule`) before anything runs; a
`grpolab.util.GrpolabError` (a failed check, missing data, no GPU, ...) exits 1 with its one-line
message; Ctrl-C exits 130 with one line. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from rich.markup import escape

from grpolab.params.guard import guard
from grpolab.params.schema import Params, ParamsError, load
from grpolab.util import GrpolabError, console, quiet_logs


def print_params_error(path: Path | str, exc: ParamsError) -> None:
    console.print(f"[red]error[/]: {path}: {len(exc.errors)} invalid param(s):")
    for e in exc.errors:
        console.print(f"  {e}", markup=False, highlight=False)


def run_stage(fn: Callable[[Params], object], argv: list[str] | None = None) -> None:
    """Validate the params file (argv[0], default params.yaml), then `fn(params)`; exits on errors."""
    quiet_logs()
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path("params.yaml")
    def warn(m: str) -> None:
        console.print(f"[yellow]warning[/]: {escape(m)}", highlight=False)

    guard(path, warn)
    try:
        p = load(path)
    except ParamsError as exc:
        print_params_error(path, exc)
        sys.exit(1)
    try:
        fn(p)
        guard(path, warn)  # once more: a second `dvc exp run` started during this stage
    except GrpolabError as exc:
        console.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; what was written is kept
        console.print(f"[yellow]interrupted[/]: {getattr(fn, '__name__', 'stage')} stopped by Ctrl-C; "
                      f"run it again to pick up where it stopped", highlight=False)
        sys.exit(130)
