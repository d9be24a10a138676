"""Data: Archer/verl prompt rows (JSON list or parquet) and the generated toy arithmetic set.

A row, as verl's and Archer2.0's preprocessing scripts write it:

    {"data_source": "toy/add",
     "prompt": [{"role": "user", "content": "What is 3+4?"}],   # chat messages
     "reward_model": {"style": "rule", "ground_truth": "7"},
     "extra_info": {"index": 0}}

    grpolab data toy --out data/      # writes data/train.json and data/val.json

Bad rows (no ground truth, empty prompt, prompt longer than `max_prompt_length` tokens) are refused
with their row numbers, or skipped and counted when `data.skip_bad_rows` is true.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

TOY_SOURCE = "toy/add"
TOY_MAX_OPERAND = 5  # operands 0..4: 25 facts, small enough for the tiny model to learn on a CPU


@dataclass(frozen=True)
class Example:
    prompt: list[dict]  # chat messages
    ground_truth: str
    data_source: str
    index: int
    extra_info: dict = field(default_factory=dict, compare=False)  # the row's, for reward functions


class DataError(ValueError):
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


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".json", ".jsonl"):
        text = path.read_text()
        try:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        return rows
    raise DataError(f"{path}: unsupported format '{path.suffix}' (use .json, .jsonl or .parquet)")


def row_problem(row, count_tokens=None, max_prompt_length: int | None = None) -> str | None:
    """Why a row is unusable, or None when it is fine."""
    if not isinstance(row, dict):
        return "row is not an object"
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not prompt or not isinstance(prompt, list) or not any(
        isinstance(m, dict) and str(m.get("content", "")).strip() for m in prompt
    ):
        return "empty prompt"
    gt = (row.get("reward_model") or {}).get("ground_truth")
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
        for i, row in enumerate(read_rows(f)):
            why = row_problem(row, count_tokens, max_prompt_length)
            if why:
                bad.append(f"{f} row {i}: {why}")
                key = "prompt too long" if "tokens" in why else why
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
