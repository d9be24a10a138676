"""Output folders that cannot be written (issue 22): refused before any work, or, where only the write
shows it (a full disk during the final export), a one-line error that leaves the checkpoints intact."""
from __future__ import annotations

import pytest

from grpolab.data import rows as data
from grpolab.model import load as models
from grpolab.params import schema as config
from grpolab.train import stage
from grpolab.util import StageFailed


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mdir = models.build_tiny_model(tmp_path / "m", seed=0, warmup_steps=5)
    data.write_toy(tmp_path / "d", 16, 4)
    return {
        "n_gpus_per_node": 1, "train_prompt_bsz": 2, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 2,
        "max_prompt_length": 64, "max_response_length": 8,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp_path / "d/train.json")], "val_files": [str(tmp_path / "d/val.json")]},
        "rollout": {"engine": "hf"},
        "trainer": {"device": "cpu", "output_dir": "out", "total_training_steps": 2, "save_freq": 1, "test_freq": 0,
                    "validate_at_end": False},
        "tracking": {"mlflow": False, "wandb": False, "reports_dir": "reports"},
    }


def test_an_unusable_reports_folder_is_refused_before_work(tiny, tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(StageFailed, match="reports: a file is in the way"):
        stage.train(config.validate(tiny))
    assert not (tmp_path / "out").exists() and (tmp_path / "reports").read_text() == "not a folder"


def test_a_failed_final_export_is_one_line_and_keeps_the_checkpoints(tiny, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "final").write_text("in the way")  # as a full disk would, the write of final/ fails
    with pytest.raises(StageFailed, match=r"writing the Hugging Face export out/final failed .*checkpoints are intact"):
        stage.train(config.validate(tiny))
    ckpts = sorted(p.name for p in tmp_path.rglob("global_step_*") if p.is_dir())
    assert ckpts == ["global_step_1", "global_step_2"]
