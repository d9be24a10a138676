"""params validation: every bad value is named as `key: value — rule`, derived values are right."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpolab.params import schema as config

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_are_the_seed_recipe():
    p = config.load(ROOT / "params.yaml")
    assert (p.model.path, p.n_gpus_per_node, p.train_prompt_bsz, p.n_resp_per_prompt) == (
        "Qwen/Qwen3-0.6B-Base", 4, 64, 16)
    assert (p.max_response_length, p.lr, p.ppo_epochs, p.kl_loss_coef, p.temperature) == (
        32768, 1e-6, 3, 0.001, 1.0)
    assert (p.kl_loss_type, p.clip_ratio_c, p.loss_agg_mode, p.val.n, p.val.temperature) == (
        "low_var_kl", 3.0, "token-mean", 4, 0.6)


def test_derived_values():
    p = config.load(ROOT / "params.yaml")
    d = config.derived(p)
    assert d["max_token_len"] == 2048 + 32768
    assert d["responses_per_step"] == 64 * 16
    assert d["responses_per_gpu"] == 64 * 16 / 4
    assert d["updates_per_step"] == 3 * (64 // 16)


@pytest.mark.parametrize("raw, key", [
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"val": {"top_p": -0.1}}, "val.top_p"),
    ({"train_prompt_bsz": 0}, "train_prompt_bsz"),
    ({"n_resp_per_prompt": -4}, "n_resp_per_prompt"),
    ({"lr": "fast"}, "lr"),
    ({"ppo_epochs": 1.5}, "ppo_epochs"),
    ({"temprature": 1.2}, "temprature"),
    ({"model": {"pth": "x"}}, "model.pth"),
    ({"kl_loss_type": "k9"}, "kl_loss_type"),
    ({"loss_agg_mode": "mean"}, "loss_agg_mode"),
    ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
    ({"policy_loss": "aspoo"}, "policy_loss"),
    ({"filter_groups_rule": "std"}, "filter_groups_rule"),
    ({"high_entropy_clip_ratio_low": 1.0}, "high_entropy_clip_ratio_low"),
    ({"high_entropy_kl_loss_scale_coef": 0.1}, "high_entropy_kl_loss_scale_coef"),  # needs classes
    ({"reward": {"timeout_s": 0}}, "reward.timeout_s"),
    ({"reward": {"function": "rewards"}}, "reward.function"),
    ({"reward": {"function": {"builtin:math": 1.0, "m:f": "x"}}}, "reward.function"),
    ({"train_prompt_bsz": 10, "train_prompt_mini_bsz": 4}, "train_prompt_mini_bsz"),
    ({"train_prompt_mini_bsz": 6, "train_prompt_bsz": 12}, "train_prompt_mini_bsz"),  # 6 % 4 GPUs
    ({"smoke": {"train_prompt_bsz": 3}}, "smoke.train_prompt_mini_bsz"),
    # the demo's smoke batch (4 prompts, mini-batch 2) on 4 GPUs: refused here, not by the smoke stage
    ({"n_gpus_per_node": 4, "smoke": {"train_prompt_bsz": 4, "train_prompt_mini_bsz": 2}}, "smoke.train_prompt_mini_bsz"),
    ({"exp_name": "lr/4"}, "exp_name"),
    ({"exp_name": ""}, "exp_name"),
    ({"project_name": "a\nb"}, "project_name"),
])
def test_bad_value_is_named(raw, key):
    with pytest.raises(config.ParamsError) as e:
        config.validate(raw)
    assert any(err.startswith(f"{key}: ") and " — " in err for err in e.value.errors), e.value.errors


def test_algorithm_choices_are_the_algo_registries():
    """The schema's enumerations name exactly what grpolab.train.algo implements."""
    from typing import get_args

    from grpolab.train import algo

    assert set(get_args(config.PolicyLoss)) == set(algo.POLICY_LOSSES)
    assert set(get_args(config.KlLossType)) == set(algo.KL_TYPES)
    assert set(get_args(config.LossAggMode)) == set(algo.AGG_MODES)
    assert set(get_args(config.FilterRule)) == set(algo.FILTER_RULES)


def test_every_broken_key_is_reported_at_once():
    raw = {"temprature": 1, "temperature": -1, "top_p": 2, "lr": "abc",
           "train_prompt_bsz": 10, "train_prompt_mini_bsz": 4}
    with pytest.raises(config.ParamsError) as e:
        config.validate(raw)
    named = {err.split(":")[0] for err in e.value.errors}
    assert {"temprature", "temperature", "top_p", "lr", "train_prompt_mini_bsz"} <= named


def test_smoke_overrides_apply():
    p = config.load(ROOT / "params.yaml").with_smoke()
    assert p.trainer.total_training_steps == 2
    assert p.train_prompt_bsz == 8 and p.max_response_length == 1024


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grpolab.pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_params_check_cli(tmp_path):
    ok = _cli("params", "check", "--schema-only", str(ROOT / "params.yaml"))  # the GPU recipe (vllm)
    assert ok.returncode == 0 and "responses_per_step" in ok.stdout and "1,024" in ok.stdout
    here = tmp_path / "hf.yaml"
    here.write_text(yaml.safe_dump({"rollout": {"engine": "hf"}}))
    assert _cli("params", "check", str(here)).returncode == 0  # runnable here with the hf engine
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"temperature": 0, "top_p": 3, "typo_key": 1, "policy_loss": "aspoo"}))
    r = _cli("params", "check", str(bad))
    assert r.returncode == 1
    for key in ("temperature: 0", "top_p: 3", "typo_key: 1", "policy_loss: 'aspoo' — Input should be 'vanilla' or 'aspo'"):
        assert key in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_an_empty_or_unreadable_params_file_is_named(tmp_path):
    for text, says in ((b"", "the file is empty"), (b"# only a comment\n", "the file is empty"),
                       (b"- 1\n- 2\n", "expected a mapping of params, got a list"),
                       ("temperature: 1.0 # caf\u00e9\n".encode("latin-1"), "not UTF-8 text")):
        f = tmp_path / "params.yaml"
        f.write_bytes(text)
        for args in (("params", "check", str(f)), ("params", "check", "--schema-only", str(f))):
            r = _cli(*args)
            assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, (text, r.stderr)


def test_stage_refuses_bad_params_before_work(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"temperature": -2}))
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py")], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "temperature: -2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


def test_vllm_engine_without_vllm_or_cuda_is_refused_before_any_work(tmp_path):
    """This machine has neither vLLM nor CUDA: `params check` and every stage say so, with the
    install command, before any work (the schema alone accepts the recipe)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"rollout": {"engine": "vllm"}}))
    for cmd in ([sys.executable, str(ROOT / "pipelines" / "smoke.py")],
                [sys.executable, str(ROOT / "pipelines" / "train.py")],
                [sys.executable, str(ROOT / "pipelines" / "evaluate.py")]):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 1 and "rollout.engine: 'vllm'" in r.stderr, (cmd, r.stderr)
        assert "pip install -e '.[vllm]'" in r.stderr and "needs a CUDA GPU" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
    r = _cli("params", "check", str(tmp_path / "params.yaml"))
    assert r.returncode == 1 and "pip install -e '.[vllm]'" in r.stderr and "Traceback" not in r.stderr
    assert _cli("params", "check", "--schema-only", str(tmp_path / "params.yaml")).returncode == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"rollout": {"engine": "sglang"}}))
    r = _cli("params", "check", str(tmp_path / "params.yaml"))
    assert r.returncode == 1 and "rollout.engine: 'sglang'" in r.stderr and "'hf', 'vllm'" in r.stderr


def test_every_field_is_documented_in_the_schema():
    """cleanrl style: each param's description lives on its schema field (what, unit, paper/verl name)."""
    fields = config.fields()
    assert len(fields) > 100 and {"lr", "grad_clip", "kl_loss_coef", "temperature", "model.path"} <= set(fields)
    missing = [k for k, f in fields.items() if not (f.description or "").strip()]
    assert not missing, f"fields without a description: {missing}"
    assert "verl: actor.clip_ratio_low" in fields["clip_ratio_low"].description
    assert "arXiv" in fields["policy_loss"].description


def test_params_check_explain_prints_the_description(tmp_path):
    grpolab = str(Path(sys.executable).parent / "grpolab")
    ok = subprocess.run([grpolab, "params", "check", "--explain", "trainer.save_freq"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("trainer.save_freq: Checkpoint every N steps")
    assert "type: int" in ok.stdout and "default: 10" in ok.stdout and "rule: >= 0" in ok.stdout
    bad = subprocess.run([grpolab, "params", "check", "--explain", "temprature"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "'temprature' is not a param; did you mean temperature" in bad.stderr


def test_version_and_help_texts():
    from grpolab import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"grpolab {__version__}"
    for cmd in (("demo",), ("report",), ("compare",), ("diary",), ("params", "check")):
        h = _cli(*cmd, "--help")
        assert h.returncode == 0 and "<bool>" not in h.stdout, (cmd, h.stdout)  # a flag takes no value
    assert "`report` stage" in _cli("report", "--help").stdout and "write_report" not in _cli("report", "--help").stdout
