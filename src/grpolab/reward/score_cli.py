"""`grpolab score IN.jsonl`: re-score saved rollouts with the training reward.

Input: one JSON object per line with a string ``response`` and a ``ground_truth`` (a string; a
JSON number is accepted and turned into its string). Blank lines are skipped and produce no output.

Output (stdout, nothing but JSON): exactly one line per non-blank input line, in input order --
the input object with ``score`` (0.0/1.0) and ``reason`` (see :data:`grpolab.reward.math_reward.REASONS`)
added.

Bad rows: a line that is not a JSON object, or lacks ``response`` / ``ground_truth`` (or has the
wrong type), does not stop the run. An error naming the file and line number goes to stderr, and
the row is still echoed on stdout, with ``"score": null`` and ``"reason": "bad_row: <why>"``; a
line that is not JSON at all is echoed as ``{"raw": <the line>, "score": null, "reason": ...}``.
The other rows are scored as usual and the exit code is 1 (0 when every row was good).

Invalid UTF-8 bytes are replaced by U+FFFD rather than failing the line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, TextIO

import typer

from grpolab.reward.math_reward import RewardScorer

__all__ = ["score", "score_file"]

_CHUNK = 512  # rows scored per batch (keeps memory flat and output streaming on big files)
_PROGRESS_MIN_ROWS = 1000


def _parse_row(line: str) -> tuple[dict | None, dict | None, str | None]:
    """Returns ``(row, task, error)``; ``row`` is what gets echoed, ``task`` the (response, gt)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return {"raw": line.rstrip("\r\n")}, None, f"invalid JSON ({e.msg} at column {e.colno})"
    except RecursionError:  # e.g. 100,000 nested "[": Python's parser gives up, the row is bad
        return {"raw": line.rstrip("\r\n")}, None, "invalid JSON (nested too deeply)"
    if not isinstance(row, dict):
        return {"raw": line.rstrip("\r\n")}, None, f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in ("response", "ground_truth") if k not in row]
    if missing:
        return row, None, "missing field " + ", ".join(repr(k) for k in missing)
    resp, gt = row["response"], row["ground_truth"]
    if not isinstance(resp, str):
        return row, None, f"'response' must be a string, got {type(resp).__name__}"
    if isinstance(gt, bool) or not isinstance(gt, (str, int, float)):
        return row, None, f"'ground_truth' must be a string or number, got {type(gt).__name__}"
    return row, {"response": resp, "ground_truth": str(gt)}, None


def _rows(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line


def score_file(path: Path, out: TextIO, timeout_s: float = 5.0, workers: int = 0,
               err: TextIO | None = None) -> int:
    """Score every row of the JSONL file ``path`` and write the rows, with ``score`` and
    ``reason`` added, to ``out`` in input order. Errors go to ``err`` (default: stderr).
    Returns the exit code: 0 when every row was good, 1 when at least one row was bad."""
    err = err if err is not None else sys.stderr
    path = Path(path)
    bad = 0
    progress = None
    task_id = None
    interactive = bool(getattr(err, "isatty", lambda: False)())
    n_rows = sum(1 for _ in _rows(path)) if interactive else 0  # progress bar only on a terminal
    if n_rows > _PROGRESS_MIN_ROWS:
        from rich.console import Console
        from rich.progress import Progress

        progress = Progress(console=Console(file=err), transient=True)
        task_id = progress.add_task("scoring", total=n_rows)
        progress.start()

    def flush(chunk: list[tuple[dict, dict | None]], scorer: RewardScorer) -> None:
        todo = [t for _, t in chunk if t is not None]
        results = iter(scorer.score([t["response"] for t in todo], [t["ground_truth"] for t in todo]))
        for row, task in chunk:
            if task is not None:
                r = next(results)
                row["score"], row["reason"] = r.score, r.reason
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        if progress is not None:
            progress.advance(task_id, len(chunk))

    try:
        with RewardScorer(num_workers=workers, timeout_s=timeout_s) as scorer:
            chunk: list[tuple[dict, dict | None]] = []
            for lineno, line in _rows(path):
                row, task, why = _parse_row(line)
                if why is not None:
                    bad += 1
                    print(f"error: {path}:{lineno}: bad row: {why}", file=err)
                    row = dict(row or {})
                    row["score"], row["reason"] = None, f"bad_row: {why}"
                chunk.append((row, task))
                if len(chunk) >= _CHUNK:
                    flush(chunk, scorer)
                    chunk = []
            if chunk:
                flush(chunk, scorer)
    finally:
        if progress is not None:
            progress.stop()
    if bad:
        print(f"{bad} bad row(s) in {path}", file=err)
    return 1 if bad else 0


def score(path: Path = typer.Argument(..., help="JSONL rows with `response` and `ground_truth`"),
          timeout_s: float = typer.Option(5.0, "--timeout", help="seconds per answer"),
          workers: int = typer.Option(0, "--workers", help="worker processes (0 = all cores)")) -> None:
    """Re-score saved rollouts: each row is printed back with `score` and `reason` (JSON only on
    stdout; errors on stderr; exit code 1 if any row was bad, 2 if the file cannot be read)."""
    try:
        code = score_file(path, sys.stdout, timeout_s=timeout_s, workers=workers)
    except OSError as e:
        print(f"error: cannot read {path}: {e}", file=sys.stderr)
        raise typer.Exit(2)
    raise typer.Exit(code)
