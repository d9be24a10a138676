"""Model fetching: built-in tiny model (deterministic, offline), manifest, hub failure without network."""
import json
import time

import pytest
import torch

from grpolab.model import load as models
from grpolab.train.preflight import param_count
from grpolab.util import sha256_file


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
    assert entry["sha256"] == sha256_file(d / "model.safetensors")
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


def test_path_that_does_not_exist_is_named(tmp_path):
    for path in (str(tmp_path / "nope"), "./models/nope", "~/nope/model/"):
        with pytest.raises(models.DownloadError, match="no such directory"):
            models.fetch(path, "main", tmp_path / "x")


@pytest.mark.e2e
def test_download_stage_local_dir_passes_dvc_and_ctrl_c_is_one_line(tmp_path):
    """Under real DVC: Ctrl-C during the download stage is one line (exit 130); a local model folder
    then passes `dvc repro download` (its files linked into model.local_dir, the stage's output)."""
    import copy
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers import DEMO_OVERRIDES, make_workspace

    from grpolab.pipeline.demo import project_root

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop("DVC_ROOT", None)
    ws = tmp_path / "ws"
    make_workspace(ws, project_root(), copy.deepcopy(DEMO_OVERRIDES))
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=ws, env=env, check=True)
    proc = subprocess.Popen([sys.executable, "pipelines/download.py"], cwd=ws, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # as from a terminal: pytest-xdist workers ignore SIGINT, and a child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stderr.readline()  # "download: builtin:tiny-qwen3 -> models/tiny-qwen3": building now
    assert first.startswith("download"), first
    time.sleep(1.0)  # the build (imports + 150 warm-up steps) takes several seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "interrupted: download stopped by Ctrl-C; run it again to pick up where it stopped"], err
    src = models.build_tiny_model(tmp_path / "my-model", warmup_steps=0)
    p = ws / "params.yaml"
    p.write_text(p.read_text().replace("builtin:tiny-qwen3", str(src)))
    r = subprocess.run(["dvc", "repro", "download"], cwd=ws, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert models.has_weights(ws / "models" / "tiny-qwen3")
    man = json.loads((ws / "results" / "download" / "manifest.json").read_text())
    assert {f["file"] for f in man["files"]} >= {"config.json", "model.safetensors"}
