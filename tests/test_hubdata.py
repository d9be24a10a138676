"""Real data (grpolab.data.hub): the conversion of each shipped format (small files in tests/data/hub in
the exact formats of DAPO-Math-17k, Archer2.0's JSON, AIME 2024, AIME 2025 and MATH-500), the
manifest, files already present, and the offline failure of `data.source: hub`: seconds, no traceback,
naming the dataset, the revision and how to use local files."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from grpolab.params import schema as config
from grpolab.data import rows as data
from grpolab.data import hub as hubdata
from grpolab.util import sha256_file as sha256

HUB = Path(__file__).parent / "data" / "hub"
BOX = "Please reason step by step, and put your final answer within \\boxed{}."
OFFLINE = "http://127.0.0.1:9"  # nothing listens there: the same failure as no network, deterministic


def _data(tmp: Path, source: str, train: list[dict], val: list[dict]) -> config.DataCfg:
    return config.DataCfg(source=source, dir=str(tmp / "data"), train_files=[str(tmp / "data/train.json")],
                          val_files=[str(tmp / "data/val.json")], download_dir=str(tmp / "dl"),
                          train_sets=train, val_sets=val)


LOCAL_TRAIN = [{"repo_id": "BytedTsinghua-SIA/DAPO-Math-17k", "files": [str(HUB / "dapo-math-17k.parquet")],
                "format": "verl", "data_source": "dapo_math_17k", "problem_pattern": config.DAPO_PATTERN,
                "dedupe": True},
               {"repo_id": "archer", "files": [str(HUB / "archer2.0-math-train.json")]}]
LOCAL_VAL = [{"repo_id": "HuggingFaceH4/aime_2024", "files": [str(HUB / "aime_2024-train-00000-of-00001.parquet")],
              "data_source": "aime_2024"},
             {"repo_id": "math-ai/aime25", "files": [str(HUB / "aime25-test.jsonl")], "data_source": "aime_2025"},
             {"repo_id": "HuggingFaceH4/MATH-500", "files": [str(HUB / "math500-test.jsonl")], "data_source": "math_500"}]


def test_local_files_of_every_shipped_format_convert_to_verl_rows(tmp_path):
    d = _data(tmp_path, "local", LOCAL_TRAIN, LOCAL_VAL)
    man = hubdata.prepare(d, log=lambda m: None)
    train = json.loads((tmp_path / "data/train.json").read_text())
    val = json.loads((tmp_path / "data/val.json").read_text())
    # DAPO: its "Answer:" instructions replaced by the boxed template, the repeated problem dropped
    dapo = [r for r in train if r["data_source"] == "dapo_math_17k"]
    assert len(dapo) == 2 and [r["reward_model"]["ground_truth"] for r in dapo] == ["13", "2"]
    assert dapo[0]["prompt"] == [{"role": "user", "content": "In triangle $ABC$, $AB = 5$ and $BC = 12$ with a right "
                                  "angle at $B$. Find $AC$.\n\n" + BOX}]
    assert dapo[0]["extra_info"]["index"] == 0 and "Answer:" not in json.dumps(dapo)
    # Archer2.0's JSON rows: kept as they are (their own data_source and prompt)
    archer = [r for r in train if r["data_source"] == "archer_math"]
    assert len(archer) == 1 and archer[0]["prompt"][0]["content"].startswith("What is $3\\cdot 4$?")
    assert archer[0]["extra_info"]["split"] == "train"
    # AIME 2024 (parquet), AIME 2025 and MATH-500 (JSONL): problem + answer -> one chat message
    by = {s: [r for r in val if r["data_source"] == s] for s in ("aime_2024", "aime_2025", "math_500")}
    assert [len(v) for v in by.values()] == [2, 2, 2]
    assert by["aime_2024"][0]["reward_model"]["ground_truth"] == "204" and by["aime_2024"][0]["extra_info"]["id"] == 60
    assert by["aime_2025"][1]["prompt"][0]["content"].endswith(BOX)
    assert by["math_500"][0]["reward_model"]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert by["math_500"][1]["extra_info"]["subject"] == "Prealgebra"
    # the trainer reads them; the manifest names every input and output with size and sha256
    examples, _ = data.load_examples(d.train_files + d.val_files)
    assert len(examples) == 3 + 6
    assert [o["rows"] for o in man["outputs"]] == [3, 6]
    assert {i["file"] for i in man["inputs"]} == {s["files"][0] for s in LOCAL_TRAIN + LOCAL_VAL}
    assert all(i["sha256"] == sha256(Path(i["file"])) for i in man["inputs"])
    assert json.loads((tmp_path / "data/manifest.json").read_text()) == man


def test_offline_hub_fails_in_seconds_naming_dataset_revision_and_local_files(tmp_path, monkeypatch, capsys):
    from grpolab.params.entry import run_stage
    from grpolab.data.stage import prepare_data

    monkeypatch.setenv("HF_ENDPOINT", OFFLINE)
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    Path("params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.time()
    with pytest.raises(SystemExit) as exc:
        run_stage(prepare_data, ["params.yaml"])
    assert exc.value.code == 1 and time.time() - t0 < 15
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "BytedTsinghua-SIA/DAPO-Math-17k" in err and "revision main" in err
    assert "data.source: local" in err and "downloads/datasets/BytedTsinghua-SIA/DAPO-Math-17k/main" in err
    assert not Path("data").exists()


def test_files_already_present_are_used_without_network_and_changed_ones_refetched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", OFFLINE)
    train = [{"repo_id": "BytedTsinghua-SIA/DAPO-Math-17k", "revision": "abc123", "files": ["data/dapo-math-17k.parquet"],
              "format": "verl", "problem_pattern": config.DAPO_PATTERN}]
    val = [{"repo_id": "HuggingFaceH4/MATH-500", "revision": "ff5b20257d8185524591543f8ff5993951537bb8",
            "files": ["test.jsonl"], "data_source": "math_500"}]
    d = _data(tmp_path, "hub", train, val)
    dl = tmp_path / "dl"
    (dl / "BytedTsinghua-SIA/DAPO-Math-17k/abc123/data").mkdir(parents=True)
    shutil.copy(HUB / "dapo-math-17k.parquet", dl / "BytedTsinghua-SIA/DAPO-Math-17k/abc123/data/dapo-math-17k.parquet")
    (dl / "HuggingFaceH4/MATH-500/ff5b20257d8185524591543f8ff5993951537bb8").mkdir(parents=True)
    target = dl / "HuggingFaceH4/MATH-500/ff5b20257d8185524591543f8ff5993951537bb8/test.jsonl"
    shutil.copy(HUB / "math500-test.jsonl", target)
    logs: list[str] = []
    man = hubdata.prepare(d, log=logs.append)
    assert [o["rows"] for o in man["outputs"]] == [3, 2] and all(i["placed_by_hand"] for i in man["inputs"])
    assert any("found in" in m for m in logs)
    logs.clear()
    hubdata.prepare(d, log=logs.append)  # recorded now: present and unchanged
    assert sum("present and unchanged" in m for m in logs) == 2
    target.write_text(target.read_text().replace("Precalculus", "Algebra"))  # changed: fetched again
    with pytest.raises(data.DataError, match=r"HuggingFaceH4/MATH-500 \(revision ff5b2025.*test\.jsonl\).*unreachable"):
        hubdata.prepare(d, log=logs.append)


def test_bad_rows_and_patterns_are_named(tmp_path):
    spec = config.DatasetSpec(repo_id="x", format="verl", problem_pattern="^NOPE(.*)")
    rows = data.read_rows(HUB / "dapo-math-17k.parquet", required=())
    with pytest.raises(data.DataError, match="row 0: problem_pattern"):
        hubdata.convert_rows(rows, spec, "{problem}", "f.parquet")
    with pytest.raises(data.DataError, match=r"row 0: no problem .* has \['x'\]"):
        hubdata.convert_rows([{"x": 1}], config.DatasetSpec(repo_id="y"), "{problem}", "f.jsonl")
    with pytest.raises(config.ParamsError, match="prompt_template"):
        config.validate({"data": {"prompt_template": "no field"}})
