"""Data: Archer/verl prompt rows (JSON list or parquet) and the generated toy arithmetic set.

A row, as verl's and Archer2.0's preprocessing scripts write it:

    {"data_source": "toy/add",
     "prompt": [{"role": "user", "content": "What is 3+4?"}],   # chat messages
     "reward_model": {"style": "rule", "ground_truth": "7"},
     "extra_info": {"index": 0}}

    grpolab data toy --out data/      # writes data/train.json and data/val.json

Bad rows (no ground truth, empty prompt, `reward_model` not an object, a JSONL line that is not JSON,
prompt longer than `max_prompt_length` tokens) are refused with their row numbers (JSONL: the file's
line numbers), or skipped and counted when `data.skip_bad_rows` is true. A parquet file without the
`prompt` / `reward_model` columns is refused naming them. `check_files` runs all of it but the token
count before any model loads.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from grpolab.util import GrpolabError

TOY_SOURCE = "toy/add"
TOY_MAX_OPERAND = 5  # operands 0..4: 25 facts, small enough for the tiny model to learn on a CPU


@dataclass(frozen=True)
class Example:
    prompt: list[dict]  # chat messages
    ground_truth: str
    data_source: str
    index: int
    extra_info: dict = field(default_factory=dict, compare=False)  # the row's, for reward functions


class DataError(GrpolabError, ValueError):
    pass


def toy_question(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(TOY_MAX_OPERAND), rng.randrange(TOY_MAX_OPERAND)
    return f"What is {a}+{b}?", str(a + b)


def toy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, ans = toy_question(rng)
        rows.append({
            "data_source": TOY_SOURCE,
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": ans},
            "extra_info": {"index": i},
        })
    return rows


def write_toy(out_dir: Path, train_size: int, val_size: int, seed: int = 0) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, s in (("train", train_size, seed), ("val", val_size, seed + 1)):
        p = out_dir / f"{name}.json"
        p.write_text(json.dumps(toy_rows(n, s), indent=1) + "\n")
        paths.append(p)
    return paths


REQUIRED_COLUMNS = ("prompt", "reward_model")


class BadLine(str):
    """A JSONL line that is not JSON: kept in place as a row so that it is reported (or skipped)
    with its line number like any other bad row."""


def read_rows(path: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[dict]:
    """Rows of a file; `required`: the parquet columns it must have (() for raw hub files)."""
    return [row for _, row in read_located_rows(path, required)]


def read_located_rows(path: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[tuple[str, object]]:
    """``(where, row)`` pairs: ``where`` is "line N" (1-based, JSONL) or "row i" (0-based)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        out = []
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, never decoded with "?"
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out.append((f"line {n}", BadLine(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                                     f"{exc.start + 1}; JSON Lines files must be UTF-8)")))
                    continue
                if line.strip():
                    try:
                        out.append((f"line {n}", json.loads(line)))
                    except (json.JSONDecodeError, RecursionError) as exc:
                        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                        out.append((f"line {n}", BadLine(f"not valid JSON ({why})")))
        return out
    return [(f"row {i}", row) for i, row in enumerate(_read_whole(path, required))]


def _read_whole(path: Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                            f"(it has {', '.join(table.column_names) or 'none'}; rows need 'prompt' chat "
                            f"messages and 'reward_model' with a 'ground_truth')")
        return table.to_pylist()
    if path.suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                            f"JSON files must be UTF-8 (a binary or latin-1 file?)") from None
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        except RecursionError:
            raise DataError(f"{path}: not valid JSON: nested too deeply") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        return rows
    raise DataError(f"{path}: unsupported format '{path.suffix}' (use .json, .jsonl or .parquet)")


def row_problem(row, count_tokens=None, max_prompt_length: int | None = None) -> str | None:
    """Why a row is unusable, or None when it is fine."""
    if isinstance(row, BadLine):
        return str(row)
    if not isinstance(row, dict):
        return "row is not an object"
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not prompt or not isinstance(prompt, list) or not any(
        isinstance(m, dict) and str(m.get("content", "")).strip() for m in prompt
    ):
        return "empty prompt"
    rm = row.get("reward_model")
    if rm is not None and not isinstance(rm, dict):
        return (f"reward_model is a {type(rm).__name__}, expected an object with a ground_truth, "
                f"e.g. {{\"ground_truth\": \"7\"}}")
    gt = (rm or {}).get("ground_truth")
    if gt is None or str(gt).strip() == "":
        return "no reward_model.ground_truth"
    if count_tokens and max_prompt_length:
        n = count_tokens(prompt)
        if n > max_prompt_length:
            return f"prompt has {n} tokens > max_prompt_length {max_prompt_length}"
    return None


def load_examples(files: list[str], count_tokens=None, max_prompt_length: int | None = None,
                  skip_bad_rows: bool = False) -> tuple[list[Example], dict[str, int]]:
    """Read and validate rows from every file. Returns (examples, counts of skipped reasons)."""
    examples, bad, skipped = [], [], {}
    for f in files:
        for where, row in read_located_rows(f):
            why = row_problem(row, count_tokens, max_prompt_length)
            if why:
                bad.append(f"{f} {where}: {why}")
                key = ("prompt too long" if "tokens" in why else str(row).split(" (")[0] if isinstance(row, BadLine)
                       else "reward_model not an object" if why.startswith("reward_model is") else why)
                skipped[key] = skipped.get(key, 0) + 1
                continue
            prompt = row["prompt"] if isinstance(row["prompt"], list) else [
                {"role": "user", "content": row["prompt"]}]
            examples.append(Example(prompt=prompt,
                                    ground_truth=str(row["reward_model"]["ground_truth"]),
                                    data_source=str(row.get("data_source", "unknown")),
                                    index=len(examples),
                                    extra_info=dict(row.get("extra_info") or {})))
    if bad and not skip_bad_rows:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{len(bad)} bad row(s) (set data.skip_bad_rows: true to skip them):\n  {shown}")
    if not examples:
        raise DataError(f"no usable rows in {files}")
    return examples, skipped


def check_files(train_files: list[str], val_files: list[str], skip_bad_rows: bool) -> None:
    """Every data file exists, reads, and has usable rows (all but the prompt-length check, which
    needs the tokenizer): run by the smoke and train stages before any model work."""
    for files in (train_files, val_files):
        load_examples(files, skip_bad_rows=skip_bad_rows)
