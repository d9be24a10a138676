"""Rule-based math reward: extract the final ``\\boxed{}`` answer and check it with math-verify.

Pipeline for one (response, ground truth) pair::

    response --extract_answer--> content --(parent: cheap checks)--> worker: math_verify.parse + verify

* :func:`extract_answer` (:mod:`grpolab.reward.extract`, re-exported here) looks only at the text after
  the last ``</think>`` (when there is one) and returns the content of the last top-level
  ``\\boxed{...}`` / ``\\boxed {...}`` / ``\\fbox{...}``.
  It is linear in the response length, boxes nested in boxes included (``\\boxed{`` 100,000 deep:
  under a second), so it needs no time bound of its own.
* Everything that can be decided without sympy is decided in the calling process: missing, empty or
  unbalanced boxes, answers longer than ``max_answer_chars`` (``too_long``), and answers that are
  literally the ground truth (``correct``).
* The rest goes to worker processes that run math-verify with its own ``signal.alarm`` timeouts
  switched off (``parsing_timeout=None`` / ``timeout_seconds=None``: those only work in a main
  thread). The hard time bound is ours: a task that runs longer than ``timeout_s`` gets its worker
  process killed and scores 0 with reason ``timeout``. This holds no matter which thread or process
  calls :meth:`RewardScorer.score`.

Worker back-ends (``RewardScorer(backend=...)``):

``"pebble"``
    a :class:`pebble.ProcessPool` (per-task timeouts, hung workers are killed and replaced) whose
    workers are started with the ``spawn`` method. ``spawn`` is the one start method that works
    from any thread (``fork`` from a threaded process can deadlock) and from a process that was
    itself forked (``forkserver`` breaks there on CPython 3.11: a forked child inherits the
    parent's forkserver handle and ``os.waitpid`` on it fails with ``ChildProcessError``). Cost: each
    worker imports math-verify/sympy (~1 s) when it starts, which is not counted against the task
    timeout; and, as with any ``spawn`` pool, the caller's ``__main__`` script is re-imported in the
    workers, so it must be guarded by ``if __name__ == "__main__":``.
``"subprocess"``
    used automatically when the caller is a *daemonic* process (e.g. a ``multiprocessing.Pool``
    worker), where ``multiprocessing`` refuses to start children at all. Each worker slot is a plain
    ``subprocess.Popen`` of ``python -c 'grpolab.reward.math_reward._subprocess_worker_main()'`` talking JSON lines
    over its stdin/stdout, driven by one parent thread per slot that waits for each answer with a
    deadline (``select``) and kills + restarts the child on timeout. Same results, same bound.
``"auto"`` (default)
    ``"subprocess"`` in a daemonic process, else ``"pebble"``. Asking for ``"pebble"`` in a daemonic
    process raises ``ValueError`` at construction instead of hanging later.

Worker processes also get an address-space cap (``max_worker_memory_mb`` above what they use after
start-up; Linux only) so that a pathological answer cannot eat the machine's memory: hitting it
ends the task as ``parse_error`` (the worker is replaced). A task whose worker dies under it is
retried once; a pool that breaks as a whole (pebble: "Unexpected error within the Pool", e.g. its
idle workers killed on a loaded machine) is rebuilt and the batch retried, with one warning line.
Worker stdout is redirected to stderr, so nothing a library prints can corrupt a caller's JSON on
stdout.
"""
from __future__ import annotations

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import json
import logging
import math
import multiprocessing
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

from grpolab.reward.extract import EXTRACT_REASONS, extract_answer  # re-exported: part of this module's API
import grpolab

__all__ = [
    "EXTRACT_REASONS",
    "REASONS",
    "RewardResult",
    "RewardScorer",
    "extract_answer",
    "reward_metrics",
    "score_responses",
]

#: Reasons a :class:`RewardResult` can carry (``correct`` is the only one that scores 1).
REASONS: tuple[str, ...] = (
    "correct",
    "wrong",
    "no_box",
    "empty_box",
    "unbalanced_box",
    "timeout",
    "parse_error",
    "too_long",
)


@dataclass
class RewardResult:
    score: float
    reason: str


# ----------------------------------------------------------------------------------------------
# what runs inside a worker process
# ----------------------------------------------------------------------------------------------
def _gold_candidates(gold: str) -> list[str]:
    g = gold.strip()
    if "\\boxed" in g or "\\fbox" in g or g.startswith(("$", "\\(", "\\[")):
        return [g]
    # \boxed{} makes math-verify read the whole string as one LaTeX answer ("1,000", "(0,1]",
    # "\{1,2\}", "30^\circ"); the other forms are fall-backs for odd ground truths.
    return ["\\boxed{" + g + "}", "$" + g + "$", g]


def _verify_task(pred: str, gold: str) -> tuple[float, str]:
    """Score one extracted answer against its ground truth. Unbounded in time: run it in a worker."""
    from math_verify import parse, verify

    gold_parsed: list = []
    for cand in _gold_candidates(gold):
        gold_parsed = parse(cand, parsing_timeout=None)
        if gold_parsed:
            break
    if not gold_parsed:
        return 0.0, "parse_error"
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    if not pred_parsed:
        return 0.0, "parse_error"
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return 1.0, "correct"
    # math-verify falls back to the raw string when sympy could not read the answer
    if all(isinstance(p, str) for p in pred_parsed):
        return 0.0, "parse_error"
    return 0.0, "wrong"


def _limit_memory(extra_mb: int | None) -> None:
    if not extra_mb or extra_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + int(extra_mb) * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, ImportError):  # not Linux, or not allowed: run without a cap
        pass


def _worker_init(max_memory_mb: int | None) -> None:
    """Start-up of a worker process: quiet logs, stdout -> stderr, warm caches, memory cap."""
    try:
        sys.stdout.flush()
        os.dup2(2, 1)
    except OSError:
        pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _verify_task("\\frac{1}{2}", "0.5")  # imports sympy and compiles math-verify's regexes
    _limit_memory(max_memory_mb)


def _subprocess_worker_main(max_memory_mb: int | None = None) -> None:
    """Entry point of a ``backend="subprocess"`` worker: JSON lines in on stdin, out on stdout."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    _worker_init(max_memory_mb)
    out.write("READY\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            res: tuple[float, str] = _verify_task(req[0], req[1])
        except Exception:  # noqa: BLE001 - one bad answer must not end the worker
            res = (0.0, "parse_error")
        out.write(json.dumps(res) + "\n")
        out.flush()


# ----------------------------------------------------------------------------------------------
# back-ends: run a list of (pred, gold) tasks, each within timeout_s, return [(score, reason)]
# ----------------------------------------------------------------------------------------------
_STARTUP_S = 120.0  # allowance for (re)starting a worker: never counted against a task's timeout
_EXPIRED = (0.0, "expired")  # a task whose worker process died under it: retried once, then parse_error
_POOL_RETRIES = 3  # a batch is retried on a fresh pool this many times before scoring gives up


class _PoolBroken(RuntimeError):
    """The worker pool stopped working as a whole (not one task): rebuild it and retry the batch."""


class _PebbleBackend:
    def __init__(self, num_workers: int, timeout_s: float, max_memory_mb: int | None):
        import pebble

        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._pool = pebble.ProcessPool(
            max_workers=num_workers,
            max_tasks=1000,  # recycle now and then: sympy caches only grow
            initializer=_worker_init,
            initargs=(max_memory_mb,),
            context=multiprocessing.get_context("spawn"),
        )
        self.broken = False

    def run(self, tasks: Sequence[tuple[str, str]]) -> list[tuple[float, str]]:
        """Results in order; a task whose worker died gets :data:`_EXPIRED` (the caller retries it).
        Raises :class:`_PoolBroken` when the pool itself stopped working (the caller rebuilds it)."""
        from pebble import ProcessExpired

        try:
            futures = [self._pool.schedule(_verify_task, args=t, timeout=self.timeout_s) for t in tasks]
        except RuntimeError as exc:  # "Unexpected error within the Pool": its manager gave up
            self.broken = True
            raise _PoolBroken(str(exc)) from None
        # Safety net only: pebble enforces the per-task timeout. If the pool itself stops making
        # progress (workers that cannot start), give up after a bound that real work never hits.
        rounds = math.ceil(len(tasks) / self.num_workers)
        deadline = time.monotonic() + rounds * (self.timeout_s + 5.0) + _STARTUP_S
        out: list[tuple[float, str]] = []
        for fut in futures:
            try:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if not fut.done():  # our safety net fired, not pebble's per-task timeout
                    fut.cancel()
                    self.broken = True
                out.append((0.0, "timeout"))
            except ProcessExpired:  # worker died: memory cap, segfault, killed from outside, ...
                out.append(_EXPIRED)
            except (BrokenProcessPool, RuntimeError) as exc:  # every worker gone, or the pool's own threads
                self.broken = True
                raise _PoolBroken(f"{type(exc).__name__}: {exc}") from None
            except Exception:  # noqa: BLE001 - an exception inside math-verify / sympy
                out.append((0.0, "parse_error"))
        return out

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)


class _SubprocessWorker:
    """One child ``python`` process serving one task at a time (see module docstring)."""

    def __init__(self, max_memory_mb: int | None):
        self.max_memory_mb = max_memory_mb
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def _start(self) -> None:
        src = os.path.dirname(os.path.dirname(os.path.abspath(grpolab.__file__)))
        code = (
            f"import sys; sys.path.insert(0, {src!r}); "
            f"from grpolab.reward.math_reward import _subprocess_worker_main; "
            f"_subprocess_worker_main({self.max_memory_mb!r})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._buf = b""
        if self._read_line(time.monotonic() + _STARTUP_S) != b"READY":
            self.kill()
            raise RuntimeError("reward worker subprocess did not start")

    def _read_line(self, deadline: float) -> bytes | None:
        """Next line from the child, or None on EOF / deadline."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def run(self, task: tuple[str, str], timeout_s: float) -> tuple[float, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(list(task)).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # the child is gone
            self.kill()
            return _EXPIRED
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            timed_out = self.proc.poll() is None
            self.kill()
            return (0.0, "timeout") if timed_out else _EXPIRED
        score, reason = json.loads(line)
        return float(score), str(reason)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # EOF: the child leaves its loop
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class _SubprocessBackend:
    def __init__(self, num_workers: int, timeout_s: float, max_memory_mb: int | None):
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._workers = [_SubprocessWorker(max_memory_mb) for _ in range(num_workers)]
        self.broken = False

    def run(self, tasks: Sequence[tuple[str, str]]) -> list[tuple[float, str]]:
        results: list[tuple[float, str] | None] = [None] * len(tasks)
        order = iter(range(len(tasks)))
        lock = threading.Lock()

        def drive(worker: _SubprocessWorker) -> None:
            while True:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = worker.run(tasks[i], self.timeout_s)
                except Exception:  # noqa: BLE001 - worker could not start
                    worker.kill()
                    results[i] = (0.0, "parse_error")

        threads = [threading.Thread(target=drive, args=(w,), daemon=True)
                   for w in self._workers[: max(1, min(len(self._workers), len(tasks)))]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r if r is not None else (0.0, "parse_error") for r in results]

    def close(self) -> None:
        for w in self._workers:
            w.close()


def _close_backend(backend) -> None:  # used by weakref.finalize: must not reference the scorer
    try:
        backend.close()
    except Exception:  # noqa: BLE001 - best effort at shutdown
        pass


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
class RewardScorer:
    """Scores batches of responses in parallel with a hard per-answer time bound.

    Use as a context manager (or call :meth:`close`). Worker processes start on the first batch
    that needs one and are reused across :meth:`score` calls.
    """

    def __init__(
        self,
        num_workers: int = 0,
        timeout_s: float = 5.0,
        max_answer_chars: int = 1000,
        *,
        backend: Literal["auto", "pebble", "subprocess"] = "auto",
        max_worker_memory_mb: int | None = 4096,
    ):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if backend not in ("auto", "pebble", "subprocess"):
            raise ValueError(f"unknown backend {backend!r}")
        self.num_workers = max(1, num_workers if num_workers > 0 else (os.cpu_count() or 1))
        self.timeout_s = float(timeout_s)
        self.max_answer_chars = int(max_answer_chars)
        self.max_worker_memory_mb = max_worker_memory_mb
        daemonic = bool(multiprocessing.current_process().daemon)
        if backend == "auto":
            backend = "subprocess" if daemonic else "pebble"
        elif backend == "pebble" and daemonic:
            raise ValueError("backend='pebble' cannot run in a daemonic process (multiprocessing "
                             "does not let it start children); use backend='subprocess' or 'auto'")
        self.backend = backend
        self._backend: _PebbleBackend | _SubprocessBackend | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    def _get_backend(self):
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        if self._backend is not None and self._backend.broken:
            self._drop_backend()
        if self._backend is None:
            cls = _PebbleBackend if self.backend == "pebble" else _SubprocessBackend
            self._backend = cls(self.num_workers, self.timeout_s, self.max_worker_memory_mb)
            self._finalizer = weakref.finalize(self, _close_backend, self._backend)
        return self._backend

    def _drop_backend(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the backend once
            self._finalizer = None
        self._backend = None

    def close(self) -> None:
        with self._lock:
            self._drop_backend()
            self._closed = True

    def _run(self, tasks: list[tuple[str, str]]) -> list[tuple[float, str]]:
        """Run tasks on the backend, surviving it: a broken pool is rebuilt and the batch retried;
        tasks whose worker died under them are retried once (a second death scores ``parse_error``)."""
        for attempt in range(_POOL_RETRIES + 1):
            try:
                out = self._get_backend().run(tasks)
                redo = [i for i, r in enumerate(out) if r == _EXPIRED]
                if redo:
                    again = self._get_backend().run([tasks[i] for i in redo])
                    for i, r in zip(redo, again):
                        out[i] = (0.0, "parse_error") if r == _EXPIRED else r
                return out
            except _PoolBroken as exc:
                self._drop_backend()
                if attempt == _POOL_RETRIES:
                    raise RuntimeError(f"reward worker pool broke {attempt + 1} times in a row ({exc}); "
                                       f"is the machine out of memory or processes? (The workers are spawned: they "
                                       f"import the main script, so a script that trains must start under "
                                       f"`if __name__ == '__main__':`.)") from None
                print(f"[grpolab] warning: reward worker pool broke ({exc}); rebuilt, batch retried",
                      file=sys.stderr)
        raise AssertionError("unreachable")

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- scoring -------------------------------------------------------------------------------
    def score(self, responses: Sequence[str], ground_truths: Sequence[str]) -> list[RewardResult]:
        """Score ``responses[i]`` against ``ground_truths[i]``; results are in input order.

        Every result is one of :data:`REASONS`; the call returns within roughly
        ``ceil(n_hard / num_workers) * timeout_s`` plus worker start-up, where ``n_hard`` is the
        number of distinct answers that needed math-verify.
        """
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        results: list[RewardResult | None] = [None] * len(responses)
        pending: dict[tuple[str, str], list[int]] = {}  # identical answers are verified once
        for i, (resp, gold) in enumerate(zip(responses, ground_truths)):
            content, why = extract_answer(resp)
            if content is None:
                results[i] = RewardResult(0.0, why)
                continue
            if len(content) > self.max_answer_chars:
                results[i] = RewardResult(0.0, "too_long")
                continue
            gold = str(gold)
            if content == gold.strip():
                results[i] = RewardResult(1.0, "correct")
                continue
            pending.setdefault((content, gold), []).append(i)
        if pending:
            tasks = list(pending)
            with self._lock:
                outcomes = self._run(tasks)
            for task, (score, reason) in zip(tasks, outcomes):
                for i in pending[task]:
                    results[i] = RewardResult(score, reason)
        return [r for r in results if r is not None]


def score_responses(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    scorer: RewardScorer | None = None,
    **kwargs,
) -> list[RewardResult]:
    """One-off scoring. Uses ``scorer`` when given, else makes a :class:`RewardScorer` from
    ``kwargs`` and closes it before returning (worker start-up is paid on every call)."""
    if scorer is not None:
        if kwargs:
            raise TypeError("pass either scorer= or RewardScorer keyword arguments, not both")
        return scorer.score(responses, ground_truths)
    with RewardScorer(**kwargs) as own:
        return own.score(responses, ground_truths)


def reward_metrics(results: Iterable[RewardResult]) -> dict[str, float]:
    """``reward/<reason>`` counts for every reason in :data:`REASONS` and ``reward/accuracy``."""
    counts = dict.fromkeys(REASONS, 0)
    n = 0
    for r in results:
        if r.reason not in counts:
            raise ValueError(f"unknown reward reason {r.reason!r}")
        counts[r.reason] += 1
        n += 1
    metrics = {f"reward/{k}": float(v) for k, v in counts.items()}
    metrics["reward/accuracy"] = counts["correct"] / n if n else 0.0
    return metrics
