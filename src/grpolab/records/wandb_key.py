"""Remember that W&B online failed with a key, so that the next stages go offline at once.

A bad or unusable `WANDB_API_KEY` (or no route to W&B) cost every stage ~40 s of online time-outs
before it fell back to offline. The first failure is written to `<repo root>/wandb/grpolab-online-failed.json`
with a hash of the key (never the key); later stages with the same key skip the online attempt and
say so in one line. An authentication error is remembered until the key changes; any other failure
(network) for an hour. A later online success, or deleting the file, starts over.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

RETRY_AFTER_S = 3600.0
_AUTH_WORDS = ("401", "403", "api key", "api_key", "unauthorized", "invalid", "permission")


def marker(root: Path) -> Path:
    return Path(root) / "wandb" / "grpolab-online-failed.json"


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def remembered_failure(root: Path, key: str) -> str | None:
    """Why online failed earlier with this key, while that still holds; else None."""
    try:
        rec = json.loads(marker(root).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key_sha256") != _key_hash(key):
        return None
    if not rec.get("auth") and time.time() - float(rec.get("at", 0)) > RETRY_AFTER_S:
        return None
    return str(rec.get("why", "unknown"))


def remember_failure(root: Path, key: str, why: str) -> None:
    m = marker(root)
    try:
        m.parent.mkdir(parents=True, exist_ok=True)
        auth = any(w in why.lower() for w in _AUTH_WORDS)
        m.write_text(json.dumps({"key_sha256": _key_hash(key), "why": why, "auth": auth, "at": time.time()}) + "\n")
    except OSError:
        pass


def forget(root: Path) -> None:
    marker(root).unlink(missing_ok=True)
