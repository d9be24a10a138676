"""Real data for the data stage: dataset files from the Hugging Face hub (`data.source: hub`) or files
the user already has (`data.source: local`), converted to the Archer/verl rows the trainer reads.

    dvc repro data             # or: python pipelines/data.py [params.yaml]

Each entry of `data.train_sets` / `data.val_sets` names a dataset: `repo_id`, a pinned `revision`, its
`files` (paths in the repo; for `local`, paths on disk) and how to read its rows (`format`):

- `verl`: rows already in the verl/Archer form (`prompt` chat messages, `reward_model.ground_truth`,
  `data_source`) such as DAPO-Math-17k or Archer2.0's JSON; `problem_pattern` (a regex with one group)
  can pull the bare problem out of the prompt so that `prompt_template` restates it;
- `problem`: one problem and one answer per row (AIME 2024/2025, MATH-500: `problem`/`question`,
  `answer`), turned into a one-message chat prompt with `prompt_template`;
- `auto`: `verl` when the first row has `reward_model`, else `problem`.

Downloads go to `data.download_dir/<repo_id>/<revision>/<file>` through `huggingface_hub.hf_hub_download`
(its progress bars); a file already there whose sha256 matches `download_manifest.json` is not fetched
again, and a file put there by hand (no network) is used and recorded. Without network the stage fails in seconds, naming the dataset, the revision and how to use
local files instead. The converted rows go to `data.train_files[0]` / `data.val_files[0]` (JSON lists)
and `data.dir/manifest.json` records every file read (repo, revision, the commit it resolved to,
size, sha256) and every file written (rows, sha256).

Why DAPO-Math-17k is the default training set: the seed's scripts read Archer2.0's
`archer2.0-math-1.5b-train.json`; its authors publish their code set on the hub
(`Fate-Zero/Archer2.0-Code-1.5B`) and their math model, but no math training set could be found there
(checked 2026-11-27), so the recipe uses the public set of the same kind the user also trains on.
Its rows repeat each of ~17k problems many times; `dedupe: true` keeps the first of each prompt.
Validation: AIME 2024, AIME 2025 and MATH-500, as the user judges runs.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from rich.progress import Progress

from grpolab.data.rows import DataError, read_rows
from grpolab.util import sha256_file as sha256

PROBLEM_KEYS = ("problem", "question", "Problem", "Question")
ANSWER_KEYS = ("answer", "Answer", "ground_truth", "final_answer")
MANIFEST = "download_manifest.json"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def reachable(url: str, timeout_s: float = 5.0) -> str | None:
    """None when a TCP connection to the hub's host opens within `timeout_s`, else why not (so that no
    download starts its minutes of retries)."""
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout_s).close()
        return None
    except OSError as exc:
        return f"{u.hostname}:{port} unreachable ({exc.strerror or type(exc).__name__})"


def _advice(spec, split: str) -> str:
    return (f"  To use files you already have: copy {spec.files} of {spec.repo_id} (revision "
            f"{spec.revision}) to that folder, or set `data.source: local` and list the files on disk in "
            f"data.{split}_sets[].files (`dvc exp run -S data.source=local`); `data.source: toy` runs the "
            f"demo data.")


def download(spec, split: str, root: Path, log=print) -> list[tuple[Path, dict]]:
    """Fetch `spec.files` at `spec.revision` into root/<repo_id>/<revision>/ unless present and
    unchanged; returns (local path, manifest entry) per file. DataError when it cannot."""
    from huggingface_hub import hf_hub_download

    where = root / spec.repo_id / spec.revision
    man_path = where / MANIFEST
    known = json.loads(man_path.read_text()) if man_path.exists() else {}
    out, checked = [], None
    for name in spec.files:
        path = where / name
        entry = known.get(name)
        if path.exists() and entry is None:  # placed there by hand (no network): used and recorded
            entry = {"repo_id": spec.repo_id, "revision": spec.revision, "commit": "", "file": name,
                     "size": path.stat().st_size, "sha256": sha256(path), "placed_by_hand": True}
            known[name] = entry
            man_path.write_text(json.dumps(known, indent=1) + "\n")
            log(f"  {spec.repo_id}@{spec.revision}: {name} found in {where} (not downloaded): using it")
        if path.exists() and entry["size"] == path.stat().st_size and entry["sha256"] == sha256(path):
            log(f"  {spec.repo_id}@{spec.revision}: {name} present and unchanged ({entry['size']:,} bytes)")
            out.append((path, entry))
            continue
        if checked is None:
            checked = reachable(endpoint())
        if checked:
            raise DataError(f"cannot download dataset {spec.repo_id} (revision {spec.revision}, file {name}) "
                            f"from {endpoint()}: {checked}.\n" + _advice(spec, split) +
                            f"\n  Expected location: {path}")
        try:
            got = Path(hf_hub_download(spec.repo_id, name, repo_type="dataset", revision=spec.revision,
                                       local_dir=str(where)))
        except Exception as exc:  # hub errors come as several httpx / huggingface_hub types
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise DataError(f"cannot download dataset {spec.repo_id} (revision {spec.revision}, file {name}): "
                            f"{type(exc).__name__}: {first}\n" + _advice(spec, split)) from None
        entry = {"repo_id": spec.repo_id, "revision": spec.revision, "commit": _commit(where, name),
                 "file": name, "size": got.stat().st_size, "sha256": sha256(got)}
        known[name] = entry
        man_path.write_text(json.dumps(known, indent=1) + "\n")
        out.append((got, entry))
    return out


def _commit(where: Path, name: str) -> str:
    """The commit hf_hub_download resolved the revision to (from its local_dir metadata), or ''."""
    meta = where / ".cache" / "huggingface" / "download" / (name + ".metadata")
    try:
        return meta.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return ""


def _first(row: dict, keys: tuple[str, ...]):
    for k in keys:
        if row.get(k) not in (None, ""):
            return row[k]
    return None


def convert_rows(rows: list[dict], spec, template: str, where: str) -> list[dict]:
    """Rows of one file in the verl/Archer form (module docstring)."""
    fmt = spec.format
    if fmt == "auto":
        fmt = "verl" if rows and isinstance(rows[0], dict) and "reward_model" in rows[0] else "problem"
    pattern = re.compile(spec.problem_pattern, re.S) if spec.problem_pattern else None
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where} row {i}: not an object")
        extra = {k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) and k not in
                 PROBLEM_KEYS + ANSWER_KEYS + ("solution", "prompt", "data_source")}
        if fmt == "verl":
            prompt = row.get("prompt")
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt or []]
            gt = (row.get("reward_model") or {}).get("ground_truth")
            if pattern and prompt:
                m = pattern.search(str(prompt[-1].get("content", "")))
                if not m:
                    raise DataError(f"{where} row {i}: problem_pattern {spec.problem_pattern!r} does not match "
                                    f"the prompt {str(prompt[-1].get('content', ''))[:120]!r}")
                prompt[-1]["content"] = template.format(problem=m.group(1).strip())
            extra.update(row.get("extra_info") or {})
            src = spec.data_source or row.get("data_source") or spec.repo_id
        else:
            problem, gt = _first(row, PROBLEM_KEYS), _first(row, ANSWER_KEYS)
            if problem is None or gt is None:
                raise DataError(f"{where} row {i}: no problem ({'/'.join(PROBLEM_KEYS)}) or answer "
                                f"({'/'.join(ANSWER_KEYS)}) field; has {sorted(row)}")
            prompt = [{"role": "user", "content": template.format(problem=str(problem).strip())}]
            src = spec.data_source or spec.repo_id
        if gt is None or str(gt).strip() == "":
            raise DataError(f"{where} row {i}: no ground truth")
        extra["index"] = i
        out.append({"data_source": str(src), "prompt": prompt, "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": str(gt).strip()}, "extra_info": extra})
    if spec.dedupe:
        seen, kept = set(), []
        for r in out:
            key = json.dumps(r["prompt"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        out = kept
    return out


def prepare(d, log=print) -> dict:
    """The data stage for `data.source` hub or local (`d` the params' `data` group): download or
    read, convert, write train/val rows and the manifest; returns the manifest."""
    manifest = {"source": d.source, "inputs": [], "outputs": []}
    for split, specs, dest in (("train", d.train_sets, d.train_files[0]), ("val", d.val_sets, d.val_files[0])):
        if not specs:
            raise DataError(f"data.{split}_sets is empty: name at least one dataset for data.source {d.source}")
        rows: list[dict] = []
        for spec in specs:
            if d.source == "hub":
                files = download(spec, split, Path(d.download_dir), log)
            else:
                files = []
                for f in spec.files:
                    if not Path(f).exists():
                        raise DataError(f"data.{split}_sets: {spec.repo_id or 'local'} file {f} not found "
                                        f"(data.source local reads files on disk)")
                    files.append((Path(f), {"file": f, "size": Path(f).stat().st_size, "sha256": sha256(Path(f))}))
            with Progress(transient=True) as prog:
                task = prog.add_task(f"converting {spec.repo_id or 'local'}", total=len(files))
                for path, entry in files:
                    got = convert_rows(read_rows(path, required=()), spec, d.prompt_template, str(path))
                    rows += got
                    manifest["inputs"].append({**entry, "split": split, "rows": len(got)})
                    prog.advance(task)
            log(f"  {split}: {spec.repo_id or 'local'} -> {len(rows)} rows so far")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n")
        manifest["outputs"].append({"file": str(dest), "split": split, "rows": len(rows),
                                    "size": dest.stat().st_size, "sha256": sha256(dest)})
    out = Path(d.dir) / "manifest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
