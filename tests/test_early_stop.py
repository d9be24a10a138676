"""Early stopping on a validation metric (trainer.early_stop_metric / early_stop_patience) and
val_before_train, on a real tiny run: the stop step and the exported best model follow the logged
validation values."""
from __future__ import annotations

import json

import torch

from grpolab.params import schema as config
from grpolab.data import rows as data
from grpolab.model import load as models
from grpolab.train.trainer import Hooks, Trainer, validation_value


def test_validation_value_by_key_or_averaged_over_data_sources():
    m = {"val-core/a/acc/mean@2": 0.2, "val-core/b/acc/mean@2": 0.6, "critic/score/mean": 1.0}
    assert validation_value(m, "acc/mean@2") == 0.4
    assert validation_value(m, "val-core/b/acc/mean@2") == 0.6
    assert validation_value(m, "acc/mean@8") is None and validation_value(m, "") is None


def test_early_stop_exports_the_best_and_stops_after_patience(tmp_path):
    mdir = models.build_tiny_model(tmp_path / "m", seed=0, warmup_steps=20)
    data.write_toy(tmp_path / "d", 32, 8)
    p = config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 4,
        "max_prompt_length": 64, "max_response_length": 10, "lr": 5e-3, "kl_loss_coef": 0.0, "seed": 1,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp_path / "d/train.json")], "val_files": [str(tmp_path / "d/val.json")]},
        "rollout": {"engine": "hf"}, "val": {"n": 2},
        "trainer": {"device": "cpu", "total_training_steps": 12, "test_freq": 1, "save_freq": 0,
                    "output_dir": str(tmp_path / "out"), "val_before_train": True,
                    "early_stop_metric": "acc/mean@2", "early_stop_patience": 2},
        "tracking": {"mlflow": False, "wandb": False},
    })
    logged: list[tuple[int, dict]] = []
    t = Trainer(p, mdir, hooks=Hooks(log=lambda m, s: logged.append((s, m)), warn=lambda m: None))
    res = t.fit()
    assert logged[0][0] == 0 and "val-core/toy/add/acc/mean@2" in logged[0][1]  # val_before_train
    vals = [(0, validation_value(logged[0][1], "acc/mean@2"))]  # the untrained model is a candidate too
    vals += [(i + 1, validation_value(h, "acc/mean@2")) for i, h in enumerate(res.history)]
    vals = [(s, v) for s, v in vals if v is not None]
    best, bad, stop = None, 0, None  # the rule, replayed on the logged values
    for s, v in vals:
        if best is None or v > best[1]:
            best, bad = (s, v), 0
        else:
            bad += 1
            if bad >= 2:
                stop = s
                break
    assert stop is not None and res.stopped_early and res.steps_done == stop < 12
    assert res.best == {"step": best[0], "metric": "acc/mean@2", "value": best[1], "dir": str(tmp_path / "out/best")}
    exported = tmp_path / "out" / "best"
    assert json.loads((exported / "trainer_state.json").read_text())["step"] == best[0]
    a, _ = models.load(exported)
    f, _ = models.load(tmp_path / "out" / "final")
    assert (best[0] == stop) == all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), f.state_dict().values()))
