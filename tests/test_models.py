"""Model fetching: built-in tiny model (deterministic, offline), manifest, hub failure without network."""
import json
import time

import pytest
import torch

from grpolab import models
from grpolab.preflight import param_count


def test_tiny_model_is_deterministic_and_generates_the_format(tmp_path):
    a = models.fetch(models.BUILTIN_TINY, "main", tmp_path / "a", seed=1)
    b = models.build_tiny_model(tmp_path / "b", seed=1)
    ma, tok = models.load(a)
    mb, _ = models.load(b)
    for (na, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.equal(pa, pb), na
    assert param_count(a) == sum(p.numel() for p in ma.parameters())
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = ma.generate(**enc, do_sample=True, max_new_tokens=12, num_return_sequences=8,
                      pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum(t.startswith("\\boxed{") for t in texts) >= 6, texts


def test_fetch_skips_existing_and_manifest_hashes(tmp_path):
    d = models.fetch(models.BUILTIN_TINY, "main", tmp_path / "m", seed=0)
    mtime = (d / "model.safetensors").stat().st_mtime
    models.fetch(models.BUILTIN_TINY, "main", d, seed=0)
    assert (d / "model.safetensors").stat().st_mtime == mtime  # not rebuilt
    man = models.write_manifest(d, tmp_path / "manifest.json", models.BUILTIN_TINY, "main")
    entry = next(f for f in man["files"] if f["file"] == "model.safetensors")
    assert entry["size"] == (d / "model.safetensors").stat().st_size
    assert entry["sha256"] == models.sha256(d / "model.safetensors")
    assert json.loads((tmp_path / "manifest.json").read_text()) == man


def test_local_dir_without_weights_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.DownloadError, match="no config.json"):
        models.fetch(str(tmp_path / "empty"), "main", tmp_path / "x")


def test_hub_id_without_network_fails_fast_naming_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    t0 = time.time()
    with pytest.raises(models.DownloadError) as e:
        models.fetch("Qwen/Qwen3-0.6B-Base", "main", tmp_path / "q")
    assert time.time() - t0 < 60
    msg = str(e.value)
    assert "Qwen/Qwen3-0.6B-Base" in msg and models.BUILTIN_TINY in msg and "local directory" in msg
