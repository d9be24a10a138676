"""The evaluate stage on a real tiny run: two saved (DCP) checkpoints + the untrained model, through
the hf engine; its numbers agree with re-scoring its saved responses (`grpolab score`); the DCP ->
Hugging Face conversion gives the final model's exact weights; MLflow holds the metrics at each
checkpoint's step and a table of responses."""
from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
import torch
from rich.console import Console

from grpolab.eval import evaluate as checkpoint_eval
from grpolab.params import schema as config
from grpolab.data import rows as data
from grpolab.metrics import evalmetrics as evaluation
from grpolab.model import load as models
from grpolab.reward.score_cli import score_file
from grpolab.params.stagedefs import params_fingerprint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from grpolab.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("ckeval")
    mdir = models.build_tiny_model(tmp / "m", seed=0, warmup_steps=20)
    data.write_toy(tmp / "d", 16, 6)
    p = config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 4,
        "max_prompt_length": 64, "max_response_length": 12, "lr": 1e-2, "lr_warmup_steps": 0, "kl_loss_coef": 0.0, "seed": 3,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp / "d/train.json")], "val_files": [str(tmp / "d/val.json")]},
        "rollout": {"engine": "hf"}, "val": {"n": 4, "output_dir": str(tmp / "eval"), "log_samples": 3},
        "trainer": {"device": "cpu", "total_training_steps": 2, "test_freq": 0, "save_freq": 1,
                    "output_dir": str(tmp / "out"), "validate_at_end": False},
        "tracking": {"mlflow": True, "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "wandb": False},
    })
    t = Trainer(p, mdir, fingerprint=params_fingerprint(p))  # as the train stage: its trajectory's folder
    t.fit()
    metrics = checkpoint_eval.evaluate(p, Console(file=io.StringIO()))
    return {"p": p, "tmp": tmp, "metrics": metrics}


def test_every_checkpoint_and_the_base_model_are_scored(run):
    out = Path(run["p"].val.output_dir)
    steps = checkpoint_eval.read_steps(out / "steps.json")
    assert sorted(steps) == [0, 1, 2]
    assert sorted(f.name for f in (out / "responses").iterdir()) == ["step_0.jsonl", "step_1.jsonl", "step_2.jsonl"]
    for s, m in steps.items():
        assert m["eval/toy/add/n_prompts"] == 6 and set(evaluation.QUALITY) <= {k.rsplit("/", 1)[1] for k in m}
        assert 0 <= m["eval/toy/add/pass@1"] <= m["eval/toy/add/pass@2"] <= m["eval/toy/add/pass@4"] <= 1
        assert m["eval/toy/add/pass@1"] == pytest.approx(m["eval/toy/add/avg@4"])  # 0/1 scores
    dvc = run["metrics"]
    assert dvc["eval/step"] == 2 and dvc["eval/best_step"] in steps
    assert dvc["eval/best/avg@4"] == max(m["eval/toy/add/avg@4"] for m in steps.values())
    assert not any(k.startswith("val-core") for k in dvc)  # never the training loop's names


def test_numbers_agree_with_rescoring_the_saved_responses(run, tmp_path):
    out = Path(run["p"].val.output_dir)
    steps = checkpoint_eval.read_steps(out / "steps.json")
    from grpolab.reward.math_reward import RewardScorer

    with RewardScorer(num_workers=1) as verifier:
        same = evaluation.math_equivalence(verifier)
        for s, m in steps.items():
            buf = io.StringIO()
            assert score_file(out / "responses" / f"step_{s}.jsonl", buf, workers=1) == 0
            rows = [json.loads(x) for x in buf.getvalue().splitlines()]
            assert len(rows) == 6 * 4 and all(r["step"] == s for r in rows)
            assert [r["score"] for r in rows] == [r["score"] for r in map(json.loads, (out / "responses" / f"step_{s}.jsonl").read_text().splitlines())]
            assert evaluation.step_metrics(rows, same) == pytest.approx(m)


def test_dcp_checkpoint_converts_to_the_final_weights(run, tmp_path):
    p = run["p"]
    ck = checkpoint_eval.checkpoints_root(p) / "global_step_2"
    hf = checkpoint_eval.export_dcp(ck, Path(p.model.local_dir), tmp_path / "hf")
    a, _ = models.load(hf)
    b, _ = models.load(Path(p.trainer.output_dir) / "final")
    base, _ = models.load(p.model.local_dir)
    sa, sb, s0 = a.state_dict(), b.state_dict(), base.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], s0[k]) for k in sa)  # trained weights, not the base model's


def test_mlflow_has_eval_metrics_at_checkpoint_steps_and_a_sample_table(run):
    con = sqlite3.connect(run["tmp"] / "mlflow.db")
    (rid,) = con.execute("select run_uuid from runs where name like '%-evaluate'").fetchone()
    steps = sorted(s for (s,) in con.execute("select step from metrics where run_uuid=? and key=?",
                                            (rid, "eval/toy/add/avg_at_4")))
    assert steps == [0, 1, 2]
    art = con.execute("select artifact_uri from runs where run_uuid=?", (rid,)).fetchone()[0]
    table = Path(art.replace("file://", "")) / "eval/samples_step_2.json"
    assert table.exists() and len(json.loads(table.read_text())["data"]) == 3


def test_asking_for_a_step_that_was_not_saved_names_the_saved_ones(run):
    p = run["p"].model_copy(deep=True)
    p.val.checkpoints = [1, 7]
    with pytest.raises(checkpoint_eval.EvalError, match=r"step\(s\) \[7\]; saved: \[1, 2\]"):
        checkpoint_eval.targets(p)


def test_pushed_weights_sample_what_a_fresh_engine_on_the_exported_folder_samples(run, tmp_path):
    """Step 1 was evaluated by pushing the DCP checkpoint's weights into the engine started on the base
    model; an engine started on the exported Hugging Face folder gives the very same responses (same
    seeds), and they differ from the untrained model's."""
    from grpolab.train import validation
    from grpolab.reward.functions import RewardFunctions
    from grpolab.rollout.engine import make_engine

    p = run["p"]
    hf = checkpoint_eval.export_dcp(checkpoint_eval.checkpoints_root(p) / "global_step_1",
                                    Path(p.model.local_dir), tmp_path / "hf")
    tok = models.load_tokenizer(hf)
    encode = lambda m: tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),  # noqa: E731
                           add_special_tokens=False)["input_ids"]
    examples, _ = data.load_examples(p.data.val_files)
    engine, scorer = make_engine(p, hf), RewardFunctions(num_workers=1)
    try:
        fresh = validation.sample(engine, tok, examples, p, 0, scorer, 0, 1, encode)
    finally:
        scorer.close()
    out = Path(p.val.output_dir) / "responses"
    saved = [json.loads(x) for x in (out / "step_1.jsonl").read_text().splitlines()]
    base = [json.loads(x) for x in (out / "step_0.jsonl").read_text().splitlines()]
    assert [r["response"] for r in fresh] == [r["response"] for r in saved]
    assert [r["response"] for r in base] != [r["response"] for r in saved]
