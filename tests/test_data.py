"""Archer/verl rows: reading JSON/parquet, refusing or skipping bad rows with their numbers."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpolab.data import rows as data


def _row(q="What is 1+1?", gt="2", src="toy/add"):
    return {"data_source": src, "prompt": [{"role": "user", "content": q}],
            "reward_model": {"style": "rule", "ground_truth": gt}}


def test_toy_rows_are_correct_arithmetic(tmp_path):
    train, val = data.write_toy(tmp_path, 50, 10, seed=3)
    rows = json.loads(train.read_text())
    assert len(rows) == 50 and len(json.loads(val.read_text())) == 10
    for r in rows:
        a, b = r["prompt"][0]["content"].removeprefix("What is ").rstrip("?").split("+")
        assert int(r["reward_model"]["ground_truth"]) == int(a) + int(b)


def test_parquet_and_json_read_the_same(tmp_path):
    rows = [_row(), _row("What is 2+2?", "4")]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    ex_json, _ = data.load_examples([str(tmp_path / "a.json")])
    ex_pq, _ = data.load_examples([str(tmp_path / "a.parquet")])
    assert [e.ground_truth for e in ex_json] == [e.ground_truth for e in ex_pq] == ["2", "4"]


def test_bad_rows_are_refused_with_row_numbers(tmp_path):
    rows = [_row(), {"prompt": [{"role": "user", "content": "q"}], "reward_model": {}},
            _row(q=""), _row(q="x" * 500)]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(rows))
    with pytest.raises(data.DataError) as e:
        data.load_examples([str(f)], count_tokens=lambda m: len(m[0]["content"]), max_prompt_length=100)
    msg = str(e.value)
    assert "row 1: no reward_model.ground_truth" in msg
    assert "row 2: empty prompt" in msg
    assert "row 3: prompt has 500 tokens > max_prompt_length 100" in msg
    assert "row 0" not in msg


def test_bad_rows_skipped_and_counted(tmp_path):
    rows = [_row(), _row(gt=""), _row(q="")]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(rows))
    ex, skipped = data.load_examples([str(f)], skip_bad_rows=True)
    assert len(ex) == 1
    assert skipped == {"no reward_model.ground_truth": 1, "empty prompt": 1}


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.read_rows(tmp_path / "nope.json")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(data.DataError, match="unsupported format"):
        data.read_rows(tmp_path / "x.csv")


def test_jsonl_errors_name_the_file_line_and_can_be_skipped(tmp_path):
    f = tmp_path / "rows.jsonl"
    lines = [json.dumps(_row()), "", '{"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground',
             json.dumps({**_row(), "reward_model": "7"}), json.dumps(_row("What is 2+2?", "4"))]
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError) as e:
        data.load_examples([str(f)])
    msg = str(e.value)
    assert f"{f} line 3: not valid JSON" in msg  # the file's line number, blank lines counted
    assert f"{f} line 4: reward_model is a str, expected an object with a ground_truth" in msg
    ex, skipped = data.load_examples([str(f)], skip_bad_rows=True)
    assert [x.ground_truth for x in ex] == ["2", "4"]
    assert skipped == {"not valid JSON": 1, "reward_model not an object": 1}


def test_files_that_are_not_utf8_are_named_never_decoded_with_replacements(tmp_path):
    """A latin-1 or binary .json is refused naming the file; a latin-1 JSONL line is a bad line with
    its number (never trained on as text with replacement characters)."""
    f = tmp_path / "rows.json"
    f.write_bytes(json.dumps([_row("Was ist 1+1? caf\u00e9")], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(data.DataError, match=rf"{f}: not UTF-8 text \(byte 0xe9"):
        data.read_rows(f)
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    with pytest.raises(data.DataError, match="bin.json: not UTF-8 text"):
        data.read_rows(tmp_path / "bin.json")
    g = tmp_path / "rows.jsonl"
    g.write_bytes(json.dumps(_row()).encode() + b"\n" + json.dumps(_row("caf\u00e9?"), ensure_ascii=False).encode("latin-1")
                  + b"\n" + json.dumps(_row("What is 2+2?", "4")).encode() + b"\n")
    with pytest.raises(data.DataError, match=rf"{g} line 2: not UTF-8 text \(byte 0xe9 at column"):
        data.load_examples([str(g)])
    ex, skipped = data.load_examples([str(g)], skip_bad_rows=True)
    assert [x.ground_truth for x in ex] == ["2", "4"] and skipped == {"not UTF-8 text": 1}


def test_parquet_without_the_columns_names_them(tmp_path):
    f = tmp_path / "wrong.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "What is 1+1?", "answer": "2"}]), f)
    with pytest.raises(data.DataError) as e:
        data.load_examples([str(f)])
    assert "missing column(s) 'prompt', 'reward_model' (it has question, answer" in str(e.value)


def test_data_is_checked_before_any_model_loads(tmp_path):
    from grpolab.params import schema as config
    from grpolab.train import stage as stages

    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(_row()) + "\n{oops\n")
    p = config.validate({"n_gpus_per_node": 1, "rollout": {"engine": "hf"},
                         "model": {"local_dir": str(tmp_path / "no-model-here")},
                         "data": {"train_files": [str(bad)], "val_files": [str(bad)]},
                         "trainer": {"device": "cpu", "output_dir": str(tmp_path / "out")},
                         "tracking": {"wandb": False, "mlflow": False}})
    with pytest.raises(data.DataError, match="line 2: not valid JSON"):
        stages.train(p)


def test_params_check_refuses_devices_this_machine_lacks(tmp_path):
    import torch
    import yaml
    from typer.testing import CliRunner

    from grpolab.pipeline.cli import app

    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"n_gpus_per_node": 2, "rollout": {"engine": "hf"}, "trainer": {"device": "cuda"}}))
    r = CliRunner().invoke(app, ["params", "check", str(f)])
    assert r.exit_code == 1
    assert "trainer.device: 'cuda' — no CUDA device is visible" in r.stderr
    assert "n_gpus_per_node: 2 — only 0 GPU(s) visible on this node" in r.stderr
    assert "Traceback" not in r.output
