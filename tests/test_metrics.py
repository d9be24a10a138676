"""Every metric the trainer logs is documented once in grpolab.metrics."""
from grpolab import metrics


def test_patterns_match():
    assert metrics.describe("val-core/toy/add/acc/mean@4")
    assert metrics.describe("reward/no_box")
    assert metrics.describe("actor/not_a_metric") is None
    assert metrics.describe("critic/score/mean").startswith("mean response score")


def test_every_logged_key_is_documented(tmp_path):
    import yaml

    from grpolab import config, data, models
    from grpolab.trainer import Trainer

    mdir = models.build_tiny_model(tmp_path / "m", seed=0, warmup_steps=20)
    data.write_toy(tmp_path / "d", 16, 4)
    p = config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 4,
        "max_response_length": 8, "filter_groups": True, "entropy_quantile": 0.8, "overlong_buffer_len": 2,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp_path / "d/train.json")], "val_files": [str(tmp_path / "d/val.json")]},
        "rollout": {"engine": "hf"}, "val": {"n": 2},
        "trainer": {"device": "cpu", "total_training_steps": 2, "test_freq": 1, "save_freq": 0,
                    "output_dir": str(tmp_path / "out"), "save_final": False},
        "tracking": {"mlflow": False, "wandb": False},
    })
    logged = {}
    t = Trainer(p, mdir)
    t.log_fn = lambda m, s: logged.update(m)
    t.fit()
    missing = sorted(k for k in logged if metrics.describe(k) is None)
    assert not missing, missing
    assert "critic/score/mean" in logged and "val-core/toy/add/acc/mean@2" in logged
