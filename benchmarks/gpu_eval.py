"""The evaluate stage on a GPU through vLLM (issue 10), in two processes:

    python benchmarks/gpu_eval.py run   OUT     # 2 training steps (vllm engine, checkpoint every step) of the
                                                # Qwen3-0.6B-shaped model, then grpolab.eval.evaluate with
                                                # rollout.engine vllm: steps 0 (base), 1 (DCP, pushed), 2 (final)
    python benchmarks/gpu_eval.py fresh OUT     # a fresh vLLM engine on step 1 exported to a HF folder must
                                                # sample exactly the responses saved for step 1

Needs vLLM (benchmarks/gpu_vllm.sh install) and the model at /tmp/qwen3-0.6b-random. Not run yet: issue
10's session had no device time left; the push path it exercises is the trainer's (tests/test_vllm_gpu.py).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

WS = Path("/tmp/w-ckeval")
MODEL = "/tmp/qwen3-0.6b-random"


class Say:
    def print(self, *a, **k):
        print(*a, flush=True)


def params(engine: str):
    from grpolab.params import schema as config

    return config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 4,
        "max_prompt_length": 128, "max_response_length": 64, "lr": 1e-4, "lr_warmup_steps": 0,
        "kl_loss_coef": 0.0, "seed": 5,
        "model": {"path": MODEL, "local_dir": MODEL},
        "data": {"source": "toy", "train_files": [str(WS / "data/train.json")], "val_files": [str(WS / "data/val.json")]},
        "rollout": {"engine": engine, "gpu_memory_utilization": 0.3, "enforce_eager": True},
        "val": {"n": 4, "max_prompts": 32, "output_dir": str(WS / "eval")},
        "trainer": {"total_training_steps": 2, "save_freq": 1, "test_freq": 0, "validate_at_end": False,
                    "output_dir": str(WS / "train")},
        "tracking": {"mlflow": False, "wandb": False},
    })


def run(out: Path) -> None:
    import shutil

    from grpolab.eval import evaluate as checkpoint_eval
    from grpolab.data import rows as data
    from grpolab.train.trainer import Trainer

    shutil.rmtree(WS, ignore_errors=True)
    data.write_toy(WS / "data", 64, 32, 0)
    t0 = time.time()
    from grpolab.params.stagedefs import params_fingerprint

    t = Trainer(params("vllm"), MODEL)
    t.fingerprint = params_fingerprint(params("vllm"))  # as the train stage: checkpoints in their own folder
    t.fit()
    t1 = time.time()
    m = checkpoint_eval.evaluate(params("vllm"), Say())
    t2 = time.time()
    res = {"train_s": t1 - t0, "evaluate_s": t2 - t1, "metrics": m,
           "steps": sorted(checkpoint_eval.read_steps(WS / "eval" / "steps.json"))}
    (out / "gpu-eval.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def fresh(out: Path) -> None:
    from grpolab.eval import evaluate as checkpoint_eval
    from grpolab.data import rows as data
    from grpolab.model import load as models
    from grpolab.train import validation
    from grpolab.reward.functions import RewardFunctions
    from grpolab.rollout.engine import make_engine

    p = params("vllm")
    hf = checkpoint_eval.export_dcp(checkpoint_eval.checkpoints_root(params("vllm")) / "global_step_1", Path(MODEL),
                                    WS / "step1-hf")
    tok = models.load_tokenizer(hf)
    encode = lambda m: tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),  # noqa: E731
                           add_special_tokens=False)["input_ids"]
    examples = data.load_examples(p.data.val_files)[0][: p.val.max_prompts]
    engine, scorer = make_engine(p, hf), RewardFunctions(num_workers=1)
    rows = validation.sample(engine, tok, examples, p, 0, scorer, 0, 1, encode)
    scorer.close()
    saved = [json.loads(x) for x in (WS / "eval/responses/step_1.jsonl").read_text().splitlines()]
    base = [json.loads(x) for x in (WS / "eval/responses/step_0.jsonl").read_text().splitlines()]
    same = sum(a["response"] == b["response"] for a, b in zip(rows, saved))
    res = {"responses": len(rows), "same_as_pushed_step1": same,
           "same_as_base": sum(a["response"] == b["response"] for a, b in zip(base, saved))}
    (out / "gpu-eval-fresh.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    {"run": run, "fresh": fresh}[sys.argv[1]](out)
