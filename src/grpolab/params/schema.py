"""Typed params: one pydantic schema for `params.yaml`, validated before any model is loaded.

Every hyperparameter is documented here, once (cleanrl style). Top-level names are the seed recipe's
(verl / Archer2.0 shell-script names) so `dvc exp run -S temperature=1.2` works and reports read like
the hand-written change log. Groups hold what is edited less often.

    grpolab params check [params.yaml]     # prints derived values, or every error as `key: value — rule`

Derived values (tokens per sequence, responses per step, per-GPU batch, ...) are computed in one place:
`derived()`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grpolab.params.names import ENGINES, function_problems
from grpolab.params.rules import batch_rule_errors
from grpolab.util import deep_merge

PosInt = Field(gt=0)
Prob = Field(ge=0.0, le=1.0)

# Algorithm choices: the names of grpolab.train.algo's registries (tests/test_config.py keeps them equal),
# spelled out here so that `params check` needs no torch.
PolicyLoss = Literal["vanilla", "aspo"]
KlLossType = Literal["kl", "abs", "mse", "low_var_kl"]
LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
FilterRule = Literal["archer", "dapo"]


def D(default, description: str, **rules):
    """A schema field with its documentation (what it is, unit, the paper or verl name it follows):
    `grpolab params check --explain KEY` prints it; tests/test_config.py fails on a field without one."""
    return Field(default, description=description, **rules)



class _Strict(BaseModel):
    # extra="forbid": a typo such as `temprature` is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)


class ModelCfg(_Strict):
    path: str = D("Qwen/Qwen3-0.6B-Base", "Model to train: a Hugging Face hub id, a local directory, or "
                  "`builtin:tiny-qwen3` / `builtin:qwen3-0.6b-random` (built locally, no network). verl: "
                  "actor_rollout_ref.model.path")
    revision: str = D("main", "Hub revision (branch, tag or commit sha) pinned for the download")
    local_dir: str = D("models/Qwen3-0.6B-Base", "Folder the download stage writes the weights to (a DVC output)")
    dtype: Literal["auto", "bfloat16", "float32"] = D("auto", "Parameter dtype; auto: bf16 compute on GPU, "
                                                              "fp32 on CPU")
    gradient_checkpointing: bool | int = D(True, "Recompute decoder layers' activations in the backward pass "
                                                 "(less memory, ~30% more compute): true = every layer, an "
                                                 "integer N = the first N layers only, false or 0 = off. verl: "
                                                 "model.enable_gradient_checkpointing")
    use_liger: bool = D(False, "Liger kernels (Triton; CUDA only, `pip install liger-kernel`) for RMSNorm, "
                               "rotary embedding and SwiGLU in training. verl: model.use_liger")
    seed: int = D(0, "Seed of the built-in tiny model's weights and format warm-up")

    @field_validator("gradient_checkpointing")
    @classmethod
    def _layers(cls, v):
        if not isinstance(v, bool) and v < 0:
            raise ValueError("true, false or a number of layers >= 0")
        return v
    manifest: str = D("results/download/manifest.json", "File listing each downloaded file's size and sha256")


class DatasetSpec(_Strict):
    """One dataset the data stage reads (grpolab.data.hub): hub files at a pinned revision, or files on disk."""

    repo_id: str = D("", "Hugging Face dataset id (data.source hub); a label for data.source local")
    revision: str = D("main", "Hub revision: pin a commit sha (data/manifest.json records the commit each "
                              "download resolved to)")
    files: list[str] = D([], "Paths in the repo (hub) or on disk (local): .json, .jsonl or .parquet")
    format: Literal["auto", "verl", "problem"] = D("auto", "verl rows (prompt messages, reward_model), problem "
                                                           "rows (problem/question + answer), or auto-detect")
    data_source: str = D("", "data_source written on each row (empty: the row's own, else repo_id)")
    problem_pattern: str = D("", "verl rows: regex whose group 1 is the bare problem, restated with "
                                 "data.prompt_template (DAPO's 'Answer:' instruction -> \\boxed{})")
    dedupe: bool = D(False, "Keep only the first row of each prompt")


DAPO_PATTERN = r"^Solve the following math problem step by step\..*?\n\n(.*)\n\nRemember to put your answer"
DEFAULT_TRAIN_SETS = [DatasetSpec(repo_id="BytedTsinghua-SIA/DAPO-Math-17k", files=["data/dapo-math-17k.parquet"],
                                  format="verl", data_source="dapo_math_17k", problem_pattern=DAPO_PATTERN,
                                  dedupe=True)]
DEFAULT_VAL_SETS = [
    DatasetSpec(repo_id="HuggingFaceH4/aime_2024", files=["data/train-00000-of-00001.parquet"],
                format="problem", data_source="aime_2024"),
    DatasetSpec(repo_id="math-ai/aime25", files=["test.jsonl"], format="problem", data_source="aime_2025"),
    DatasetSpec(repo_id="HuggingFaceH4/MATH-500", revision="ff5b20257d8185524591543f8ff5993951537bb8",
                files=["test.jsonl"], format="problem", data_source="math_500"),
]


class DataCfg(_Strict):
    source: Literal["hub", "local", "toy"] = D(
        "hub", "Where the rows come from (grpolab.data.hub): hub = download train_sets/val_sets from the Hugging "
               "Face hub at their pinned revisions and convert them; local = convert the files on disk that "
               "train_sets/val_sets list; toy = generated arithmetic (the demo)")
    train_files: list[str] = D(["data/train.json"], "Training rows (Archer/verl format: `prompt` chat "
                                                    "messages, `reward_model.ground_truth`): JSON lists or parquet; "
                                                    "hub/local: the data stage writes the first. verl: data.train_files")
    val_files: list[str] = D(["data/val.json"], "Validation rows, same format; hub/local: the data stage writes "
                                                "the first. verl: data.val_files")
    dir: str = D("data", "Output folder of the data stage (converted rows and manifest.json)")
    train_sets: list[DatasetSpec] = D(DEFAULT_TRAIN_SETS, "Datasets converted into train_files[0] (hub/local): "
                                                          "DAPO-Math-17k by default (grpolab.data.hub says why)")
    val_sets: list[DatasetSpec] = D(DEFAULT_VAL_SETS, "Datasets converted into val_files[0] (hub/local): AIME "
                                                      "2024, AIME 2025 and MATH-500, each its own data_source")
    download_dir: str = D("downloads/datasets", "Folder of the hub files, kept between runs (not a DVC output); "
                                                "present and unchanged files are not fetched again")
    prompt_template: str = D("{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                             "User message of `problem` rows (and of verl rows with a problem_pattern); "
                             "{problem} is the problem, {{ }} a literal brace")
    toy_train_size: int = D(512, "Rows of the generated toy training set", gt=0)
    toy_val_size: int = D(64, "Rows of the generated toy validation set", gt=0)
    skip_bad_rows: bool = D(False, "False: refuse bad rows, naming their row numbers; True: skip and count them")
    shuffle: bool = D(True, "Shuffle the training prompts each epoch (seeded by `seed`). verl: data.shuffle")

    @field_validator("prompt_template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        try:
            ok = "{problem}" in v and v.format(problem="x") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ValueError("must contain {problem} and no other {...} field (write {{ }} for braces)")
        return v


class RolloutCfg(_Strict):
    engine: str = D("vllm", "Rollout engine: vllm, one colocated vLLM engine per training rank (GPU; "
                            "`pip install -e '.[vllm]'`), the real recipe's; hf, transformers generate on the "
                            "FSDP2 model (CPU, tests, demo). grpolab.rollout.engine. verl: rollout.name")
    gpu_memory_utilization: float = D(0.5, "vLLM: share of GPU memory for weights + KV cache (fraction). "
                                           "verl: rollout.gpu_memory_utilization", gt=0.0, le=1.0)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = D(
        "auto", "vLLM KV cache dtype: auto = the served dtype (bf16, 2 bytes per element); fp8 (= fp8_e4m3 on "
                "CUDA), fp8_e4m3, fp8_e5m2 store keys and values in 1 byte: twice the tokens in the same "
                "gpu_memory_utilization and half the bytes read per decode step, at a larger log-prob gap to "
                "the trainer (rollout/logprob_diff_*; measured in docs/gpu-runs.md). verl has no key of its own: "
                "rollout.engine_kwargs.vllm.kv_cache_dtype")
    mode: Literal["sync", "one_step_off"] = D(
        "sync", "sync: each step trains on responses of the weights it starts from; one_step_off: the next "
                "step's responses are generated while this step learns (vllm: overlapped on the GPU, the engine "
                "stays awake), so a step trains on responses one update old (rollout/staleness 1; old log-probs "
                "are recomputed under the current weights, tis_imp_ratio_cap corrects the gap). "
                "grpolab.rollout.ahead. verl: recipe one_step_off_policy")
    enable_sleep_mode: bool = D(True, "vLLM frees its memory during log-probs and updates. verl: "
                                      "rollout.free_cache_engine")
    sleep_level: Literal[1, 2] = D(2, "vLLM sleep level: 1 keeps weights in CPU memory, 2 drops them "
                                      "(they are pushed again anyway)")
    tensor_parallel_size: int = D(1, "vLLM tensor parallel size (must divide n_gpus_per_node). verl: "
                                     "rollout.tensor_model_parallel_size", gt=0)
    enforce_eager: bool = D(False, "vLLM: skip CUDA graphs (faster start-up, slower decoding). verl: "
                                   "rollout.enforce_eager")
    weight_bucket_mb: int = D(512, "vLLM weight push: MiB handed to load_weights at once", gt=0)
    check_weights: bool = D(True, "vLLM: checksum every pushed tensor read back from the engine (TP 1)")
    seed_responses: bool = D(True, "One seed per response (from seed, step, prompt index): rollouts "
                                   "independent of world size and batching, at vLLM's plain rate; false "
                                   "lets vLLM sample from its engine seed (not world-size independent)")
    logprobs: Literal["sample", "all", "none"] = D("sample", "vLLM: responses whose sampling log-probs are returned "
        "for rollout/logprob_diff_*: sample = the first of each prompt (cheaper), all = every response (always so "
        "with tis_imp_ratio_cap), none = no monitor, one request of n per prompt (fastest)")
    hf_prompts_per_call: int = D(1, "hf engine: prompts per generate call. Each response is sampled from "
                                    "its own seed (from seed, step, prompt index), so rollouts depend neither "
                                    "on this nor on the world size", gt=0)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"must be one of {sorted(ENGINES)}")
        return v


class ValCfg(_Strict):
    n: int = D(4, "Samples per validation prompt; the metric is acc/mean@n, and the evaluate stage's k "
                  "(avg@k, pass@1..k, maj@k). verl: val_kwargs.n", gt=0)
    temperature: float = D(0.6, "Sampling temperature of validation rollouts. verl: val_kwargs.temperature", gt=0.0)
    top_p: float = D(0.95, "Nucleus (top-p) sampling mass of validation rollouts (fraction). verl: "
                           "val_kwargs.top_p", gt=0.0, le=1.0)
    max_prompts: int = D(0, "Validation prompts used (0 = the whole validation set)", ge=0)
    output_dir: str = D("results/eval", "Folder of the evaluate stage: metrics.json, steps.json, responses/")
    checkpoints: Literal["all", "final"] | list[int] = D(
        "all", "Saved checkpoints the evaluate stage scores: all (every kept checkpoint and the final model), "
               "final, or a list of steps (grpolab.eval.evaluate)")
    include_base: bool = D(True, "Evaluate stage: also score the untrained model (model.local_dir) as step 0")
    pass_threshold: float = D(1.0, "A response counts as correct for pass@k when its score reaches this")
    select_metric: str = D("", "What picks the best evaluated step: avg@<n>, maj@<n> or pass@<j> (j <= n), "
                               "averaged over data sources; empty = avg@<n>")
    log_samples: int = D(8, "Responses per evaluated checkpoint sent to MLflow / W&B as a table", ge=0)


class TrainerCfg(_Strict):
    total_training_steps: int = D(500, "Training steps (one step = train_prompt_bsz prompts). verl: "
                                       "trainer.total_training_steps", gt=0)
    total_epochs: int = D(10, "Passes over the training set; the run ends at whichever of steps/epochs "
                              "comes first. verl: trainer.total_epochs", gt=0)
    save_freq: int = D(10, "Checkpoint every N steps (0 = only at the end). verl: trainer.save_freq", ge=0)
    test_freq: int = D(5, "Validation every N steps (0 = only at the end). verl: trainer.test_freq", ge=0)
    device: Literal["auto", "cpu", "cuda"] = D("auto", "Where to train; auto: cuda when visible, else cpu")
    cpu_threads: int = D(1, "torch threads on CPU (0 = torch's default); 1 is fastest for tiny models", ge=0)
    ppo_micro_batch_size_per_gpu: int = D(4, "Sequences per forward/backward pass on each rank (gradient "
                                             "accumulation splits a mini-batch into these). verl: "
                                             "actor.ppo_micro_batch_size_per_gpu", gt=0)
    use_dynamic_bsz: bool = D(True, "Micro-batches of packed, padding-free sequences up to "
                                    "ppo_max_token_len_per_gpu tokens (grpolab.train.packing) instead of "
                                    "ppo_micro_batch_size_per_gpu padded rows. verl: actor.use_dynamic_bsz")
    ppo_max_token_len_per_gpu: int = D(65536, "Token budget of one packed micro-batch (prompt + response tokens) "
                                              "with use_dynamic_bsz; a longer sequence runs alone. Fewer, larger ones "
                                              "run faster. verl: actor.ppo_max_token_len_per_gpu", gt=0)
    use_torch_compile: bool = D(True, "torch.compile the LM head's log-prob/entropy chunk (fuses its "
                                      "vocabulary-wide elementwise work) on CUDA; CPU runs stay eager. verl: "
                                      "actor.use_torch_compile")
    compile_layers: bool = D(True, "With use_torch_compile, also compile each decoder layer's forward "
                                   "(dynamic shapes; the first step pays the compilation: ~1 min on Qwen3-0.6B, H100). Skipped with "
                                   "model.use_liger, whose kernels torch.compile cannot trace")
    logits_chunk_tokens: int = D(1024, "Response tokens per chunk of the checkpointed LM head in the "
                                       "log-prob pass (0 = all at once; bounds logits memory)", ge=0)
    fused_head: bool = D(True, "The update's LM head chunks with a hand-written backward (logits recomputed once "
                               "and turned into their gradient in one pass) instead of activation checkpointing "
                               "(false); same values. verl: actor_rollout_ref.model.use_fused_kernels")
    output_dir: str = D("results/train", "Folder of the final model (and best/, with early stopping) and "
                                         "summary.json")
    log_samples: int = D(2, "Responses kept per step in the summary for eyeballing", ge=0)
    save_final: bool = D(True, "Write the final model (Hugging Face format) to <output_dir>/final")
    validate_at_end: bool = D(True, "Score the validation set after the last step")
    max_ckpt_to_keep: int = D(3, "Checkpoints kept per params fingerprint (grpolab.train.checkpoint.home). verl: "
                                 "trainer.max_actor_ckpt_to_keep", gt=0)
    resume_mode: Literal["auto", "disable"] = D("auto", "auto: continue from the latest valid checkpoint "
                                                        "written with the same params; disable: start over. "
                                                        "verl: trainer.resume_mode")
    export_hf: bool = D(False, "Also write each kept checkpoint in Hugging Face format (<ckpt>/hf)")
    param_offload: bool = D(False, "FSDP2 CPU offload of parameters, gradients and optimizer state. verl: "
                                   "actor.fsdp_config.param_offload")
    launcher: Literal["auto", "torchrun", "ray"] = D("auto", "How ranks start: auto = torchrun on one node, "
                                                             "Ray for nnodes > 1")
    ray_address: str = D("", "Ray cluster address (else $RAY_ADDRESS, else a local Ray instance)")
    val_before_train: bool = D(False, "Validate the untrained model before the first step, logged at step 0. "
                                      "verl: trainer.val_before_train")
    early_stop_metric: str = D("", "Early stopping against over-training (the score peaks, then falls): a "
                                   "validation metric without the data source (acc/mean@4: the mean of "
                                   "val-core/<data_source>/acc/mean@4 over data sources) or a full key; the best "
                                   "step's model is exported (HF) to <output_dir>/best. Empty = off")
    early_stop_patience: int = D(0, "Stop after this many validations without a new best of early_stop_metric "
                                    "(0 = never stop, only export the best)", ge=0)
    monitor_action: Literal["stop", "warn"] = D("stop", "What a `monitor:` rule's abandon_if does when it fires: "
                                                         "stop (save a checkpoint, end the run cleanly) or warn")


class SmokeCfg(_Strict):
    """Overrides applied by the smoke stage (2 steps, small batches, short sequences)."""

    total_training_steps: int = D(2, "Steps the smoke test runs", gt=0)
    train_prompt_bsz: int = D(8, "Smoke test: prompts per step (see train_prompt_bsz)", gt=0)
    train_prompt_mini_bsz: int = D(4, "Smoke test: prompts per optimizer update (see train_prompt_mini_bsz)", gt=0)
    n_resp_per_prompt: int = D(4, "Smoke test: responses per prompt (see n_resp_per_prompt)", gt=0)
    max_prompt_length: int = D(512, "Smoke test: prompt length cap, tokens", gt=0)
    max_response_length: int = D(1024, "Smoke test: response length cap, tokens", gt=0)
    output_dir: str = D("results/smoke", "Folder of the smoke stage's summary.json and checks.json")
    device_memory_gb: float = D(0.0, "Device memory the memory check compares with, GB (0 = read it from "
                                     "the device; on CPU the system RAM)", ge=0.0)
    max_grad_norm: float = D(1000.0, "A smoke step whose actor/grad_norm exceeds this fails the smoke test",
                             gt=0.0)


class RewardCfg(_Strict):
    """How responses are scored (grpolab.reward.functions documents the calling convention)."""

    function: str | dict[str, float] = D(
        "builtin:math", "`builtin:math` (the last \\boxed{} answer checked by math-verify), "
                        "`package.module:function` or `path/in/workspace.py:function`; or a mapping of those "
                        "to weights (score = sum of weight * score). A function is called like verl's "
                        "custom_reward_function")
    timeout_s: float = D(5.0, "Hard time bound, seconds per answer (built-in) or per call (a function): past "
                              "it the worker process is killed and the response scores 0 (reward/timeout, or "
                              "reward/error for a function)", gt=0.0)

    @field_validator("function", mode="before")
    @classmethod
    def _known_form(cls, v):
        problems = function_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


class TrackingCfg(_Strict):
    mlflow: bool = D(True, "Record runs in MLflow")
    mlflow_tracking_uri: str = D("", "MLflow store; empty: sqlite:///<repo root>/mlflow.db (artifacts in "
                                     "<repo root>/mlartifacts), or a server such as http://127.0.0.1:5000")
    wandb: bool = D(True, "Record runs in W&B: online when WANDB_API_KEY is set, offline otherwise "
                          "(`wandb sync` uploads later)")
    wandb_key_file: str = D("", "File holding the W&B key (read, never copied anywhere)")
    dvclive_dir: str = D("dvclive", "dvclive folder (`dvc exp show`, `dvc plots show`)")
    reports_dir: str = D("reports", "Folder of the delivery reports, index.md and progress.md")


_H = "Run health (grpolab.metrics.health). "


class HealthCfg(_Strict):
    """Run-health thresholds (warnings during training, Notes in the report), defined here once;
    grpolab.metrics.health says how each rule combines them."""

    stall_score: float = D(0.01, _H + "Reward stall: critic/score/mean at or below this counts as no reward")
    stall_steps: int = D(100, _H + "Reward stall: steps without reward before it is flagged (at most)", gt=0)
    stall_min_steps: int = D(10, _H + "Reward stall: flagged after at least this many steps (short runs)", gt=0)
    entropy_floor: float = D(0.1, _H + "Entropy collapse: recent mean actor/entropy below this (nats/token)", ge=0.0)
    entropy_rel_drop: float = D(0.9, _H + "Entropy collapse: or a fall by this fraction from the first "
                                     "window's highest", gt=0.0, le=1.0)
    clip_ratio_max: float = D(0.05, _H + "Length cap: recent response_length/clip_ratio above this (fraction "
                                   "of responses hitting max_response_length)", ge=0.0, le=1.0)
    capped_token_share_max: float = D(0.5, _H + "Length cap: or capped responses owning more than this "
                                           "fraction of all response tokens", ge=0.0, le=1.0)
    grad_norm_spike: float = D(10.0, _H + "Grad-norm spike: a step's actor/grad_norm above this multiple "
                                    "of the median before it", gt=1.0)
    grad_norm_lookback: int = D(20, _H + "Grad-norm spike: steps the median is taken over (at most)", gt=0)
    grad_norm_min_prior: int = D(5, _H + "Grad-norm spike: steps needed before a spike can be judged", gt=0)
    solve_none_min_steps: int = D(50, _H + "solve_none not falling: judged after this many steps (at most)", gt=0)
    solve_none_level: float = D(0.5, _H + "solve_none not falling: recent batch/solve_none at or above this "
                                     "(fraction of groups with no correct response)", ge=0.0, le=1.0)
    solve_none_min_drop: float = D(0.05, _H + "solve_none not falling: and fell by less than this since "
                                         "the start", ge=0.0)
    peak_drop: float = D(0.05, _H + "Score peaked then fell: latest average below the peak by this much "
                               "(absolute)", ge=0.0)
    peak_rel_drop: float = D(0.1, _H + "Score peaked then fell: and by this fraction of the peak", ge=0.0)
    peak_patience: int = D(10, _H + "Score peaked then fell: the peak is at least this many steps old", gt=0)
    reward_error_share: float = D(0.1, _H + "Reward function failing: recent reward/error above this fraction of "
                                        "a step's responses", ge=0.0, le=1.0)
    window: int = D(5, _H + "Smoothing window (steps) shared by the rules", gt=0)
    warn_every: int = D(50, _H + "A finding still firing is repeated every this many steps", gt=0)


# A monitor condition: a comparison (`< 0.5`, `>= 2`) or a closed range (`5..9`), numbers as YAML writes them.
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
CONDITION_RE = rf"^\s*(?:(?P<op><=|>=|<|>)\s*(?P<x>{_NUM})|(?P<lo>{_NUM})\s*\.\.\s*(?P<hi>{_NUM}))\s*$"


class MonitorRule(_Strict):
    metric: str = D(..., "Metric to watch, by its full name (`actor/entropy`, `critic/score/mean`, "
                         "`val-core/<source>/acc/mean@<n>`); unknown names are refused against the glossary")
    step: int | None = D(None, "Check only at this step (else at every step the metric is logged)", gt=0)
    target: str | None = D(None, "What a healthy run shows: `> 0.1`, `< 120`, `5..9` (reported, never acts)")
    abandon_if: str | None = D(None, "When to give the run up: `< 0.05`, `> 300`, `0..0.5`; fires at the first "
                                     "step it holds (trainer.monitor_action: stop | warn)")

    @field_validator("target", "abandon_if")
    @classmethod
    def _condition(cls, v: str | None) -> str | None:
        if v is not None and not re.match(CONDITION_RE, str(v)):
            raise ValueError(f"{v!r} is no condition: write `< x`, `> x`, `<= x`, `>= x` or a range `a..b`")
        return None if v is None else str(v).strip()

    @model_validator(mode="after")
    def _something(self) -> "MonitorRule":
        if self.target is None and self.abandon_if is None:
            raise ValueError(f"rule for {self.metric!r} has neither target nor abandon_if")
        return self


class Params(_Strict):
    # --- identity -----------------------------------------------------------------------------
    exp_name: str = D("Archer2.0-Qwen3-0.6B-Math", "Experiment name: run names and report file names. "
                                                   "verl: trainer.experiment_name")
    project_name: str = D("Archer2.0", "MLflow experiment / W&B project. verl: trainer.project_name")
    request: str = D("", "Why this experiment exists (one sentence); the report's Request. Set per "
                         "experiment: dvc exp run -S 'request=...'")
    seed: int = D(42, "Seed of data order, sampling and initialisation")
    # --- resources ----------------------------------------------------------------------------
    n_gpus_per_node: int = D(4, "GPUs (ranks) per node. verl: trainer.n_gpus_per_node", gt=0)
    nnodes: int = D(1, "Nodes; world size = n_gpus_per_node x nnodes. verl: trainer.nnodes", gt=0)
    # --- batch & lengths (verl names) ---------------------------------------------------------
    train_prompt_bsz: int = D(64, "Prompts per training step. verl: data.train_batch_size", gt=0)
    train_prompt_mini_bsz: int = D(16, "Prompts per optimizer update (PPO mini-batch). verl: "
                                       "actor.ppo_mini_batch_size", gt=0)
    n_resp_per_prompt: int = D(16, "Responses sampled per prompt: the GRPO group size. verl: rollout.n", gt=0)
    max_prompt_length: int = D(2048, "Prompt length cap, tokens (longer prompts are refused or skipped). "
                                     "verl: data.max_prompt_length", gt=0)
    max_response_length: int = D(32768, "Response length cap, tokens. verl: data.max_response_length", gt=0)
    # --- optimizer ----------------------------------------------------------------------------
    lr: float = D(1.0e-6, "AdamW learning rate (constant after warmup). verl: actor.optim.lr", gt=0.0)
    lr_warmup_steps: int = D(10, "Linear warmup, steps. verl: actor.optim.lr_warmup_steps", ge=0)
    weight_decay: float = D(0.1, "AdamW weight decay. verl: actor.optim.weight_decay", ge=0.0)
    grad_clip: float = D(1.0, "Clip the global gradient norm to this (L2). verl: actor.grad_clip", gt=0.0)
    ppo_epochs: int = D(3, "Passes over each step's rollouts (updates per mini-batch). verl: actor.ppo_epochs", gt=0)
    # --- loss (verl semantics, see grpolab.train.algo) ----------------------------------------------
    policy_loss: PolicyLoss = D("vanilla", "Policy loss: vanilla PPO-clip (arXiv 1707.06347, with clip-higher "
                                           "and dual clip) or aspo (arXiv 2510.06062, Archer2.0's code). verl: "
                                           "actor.policy_loss.loss_mode")
    norm_adv_by_std: bool = D(True, "GRPO advantage (score - group mean) / (group std + 1e-6); False = "
                                    "Dr. GRPO, no std division (arXiv 2503.20783). verl: "
                                    "algorithm.norm_adv_by_std_in_grpo")
    kl_loss_coef: float = D(0.001, "Weight of the KL-to-reference loss (0 = no reference model). verl: "
                                   "actor.kl_loss_coef", ge=0.0)
    kl_loss_type: KlLossType = D("low_var_kl", "KL estimator: kl (k1), abs, mse (k2, half squared), low_var_kl "
                                               "(k3, Schulman 2020). verl: actor.kl_loss_type")
    entropy_coeff: float = D(0.0, "Weight of the entropy bonus (subtracted from the loss). verl: "
                                  "actor.entropy_coeff", ge=0.0)
    clip_ratio_low: float = D(0.2, "PPO clip: ratio floor 1 - clip_ratio_low. verl: actor.clip_ratio_low",
                              ge=0.0, lt=1.0)
    clip_ratio_high: float = D(0.2, "PPO clip: ratio ceiling 1 + clip_ratio_high (DAPO clip-higher, arXiv "
                                    "2503.14476). verl: actor.clip_ratio_high", ge=0.0)
    clip_ratio_c: float = D(3.0, "Dual-clip bound for negative advantages (arXiv 1912.09729; ASPO: both "
                                 "signs). verl: actor.clip_ratio_c", gt=1.0)
    loss_agg_mode: LossAggMode = D("token-mean", "How token losses become one number: token-mean, "
                                                 "seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm "
                                                 "(a sum over sequences divided by max_response_length, Dr. GRPO "
                                                 "arXiv 2503.20783). verl: actor.loss_agg_mode (agg_loss)")
    entropy_quantile: float | None = D(None, "Archer token classes (arXiv 2507.15778): per response, tokens "
                                             "whose entropy is above this quantile are high-entropy; null = off "
                                             "(fraction; Archer2.0 uses 0.8)", gt=0.0, lt=1.0)
    high_entropy_clip_ratio_low: float = D(0.4, "PPO clip floor of high-entropy tokens (Archer2.0 ASPO: 0.4)",
                                           ge=0.0, lt=1.0)
    high_entropy_clip_ratio_high: float = D(0.4, "PPO clip ceiling of high-entropy tokens (Archer2.0 ASPO: "
                                                 "0.4)", ge=0.0)
    high_entropy_kl_loss_scale_coef: float = D(0.0, "KL weight of high-entropy tokens (Archer: KL only on "
                                                    "low-entropy tokens)", ge=0.0)
    filter_groups: bool = D(False, "Drop prompt groups without learning signal (filter_groups_rule). verl: "
                                   "algorithm.filter_groups.enable")
    filter_groups_rule: FilterRule = D("archer", "archer: drop groups whose scores are all exactly 0 or all "
                                                 "exactly 1 (Archer2.0); dapo: drop groups whose scores are all "
                                                 "equal, groups of one kept (verl DAPO, arXiv 2503.14476)")
    overlong_buffer_len: int = D(0, "DAPO overlong penalty buffer, tokens before max_response_length where "
                                    "the penalty ramps (0 = off). verl: reward_model.overlong_buffer.len", ge=0)
    overlong_penalty_factor: float = D(1.0, "DAPO overlong penalty at the cap (score units). verl: "
                                            "reward_model.overlong_buffer.penalty_factor", ge=0.0)
    tis_imp_ratio_cap: float | None = D(None, "Truncated importance sampling against the rollout engine's "
                                              "own log-probs: each token's policy loss weighted by min(exp("
                                              "old_logp - rollout_logp), cap); null = off (Yao et al. 2025, "
                                              "\"Your Efficient RL Framework Secretly Brings You Off-Policy RL "
                                              "Training\"). verl: tis_imp_ratio_cap", gt=1.0)
    # --- sampling -----------------------------------------------------------------------------
    temperature: float = D(1.0, "Rollout sampling temperature (log-probs use the same). verl: "
                                "rollout.temperature", gt=0.0)
    top_p: float = D(1.0, "Rollout nucleus (top-p) sampling mass (fraction). verl: rollout.top_p", gt=0.0, le=1.0)
    # --- groups -------------------------------------------------------------------------------
    model: ModelCfg = D(ModelCfg(), "What model to train and where it is stored")
    data: DataCfg = D(DataCfg(), "Training and validation rows")
    rollout: RolloutCfg = D(RolloutCfg(), "The rollout engine")
    val: ValCfg = D(ValCfg(), "Validation sampling and the evaluate stage")
    reward: RewardCfg = D(RewardCfg(), "The reward: built-in math verification and user reward functions")
    trainer: TrainerCfg = D(TrainerCfg(), "The step loop: budget, checkpoints, devices, launch")
    smoke: SmokeCfg = D(SmokeCfg(), "The smoke stage's overrides")
    tracking: TrackingCfg = D(TrackingCfg(), "Where runs are recorded (dvclive, MLflow, W&B, reports)")
    health: HealthCfg = D(HealthCfg(), "Run-health thresholds")
    monitor: list[MonitorRule] = D([], "Monitoring criteria written before a run: each `{metric, step?, target?, "
                                       "abandon_if?}`; checked live by the trainer, reported with each rule's status")

    @field_validator("exp_name", "project_name")
    @classmethod
    def _a_name(cls, v: str) -> str:
        bad = sorted({c for c in v if c in '/\\:*?"<>|' or ord(c) < 32})
        if not v.strip() or bad or v.startswith("."):
            raise ValueError("must be a name usable in file and run names: not empty, no leading '.', none of "
                             "/ \\ : * ? \" < > | or control characters" + (f" (has {' '.join(map(repr, bad))})" if bad else ""))
        return v

    @model_validator(mode="after")
    def _batch_rules(self) -> "Params":
        errs = batch_rule_errors(self.model_dump())
        if errs:
            raise ValueError("; ".join(errs))
        return self

    @property
    def world_size(self) -> int:
        return self.n_gpus_per_node * self.nnodes

    def with_smoke(self) -> "Params":
        """The smoke-test variant: this recipe with the SMOKE_REPLACES keys replaced (by `smoke:` or fixed values),
        so the smoke stage reads none of them (dvc.yaml leaves them out: a new step budget does not rerun it)."""
        s, data = self.smoke, self.model_dump()
        data.update({k: getattr(s, k) for k in SMOKE_REPLACES if "." not in k})
        data["trainer"].update(total_training_steps=s.total_training_steps, output_dir=s.output_dir, save_freq=0,
                               test_freq=0, save_final=False, validate_at_end=False)
        data["monitor"] = []  # 2 small steps: the criteria are the real run's (the stage checks them)
        return Params.model_validate(data)


SMOKE_REPLACES = ("train_prompt_bsz", "train_prompt_mini_bsz", "n_resp_per_prompt", "max_prompt_length", "max_response_length",
                  *(f"trainer.{k}" for k in ("total_training_steps", "output_dir", "save_freq", "test_freq", "save_final",
                                             "validate_at_end")))


def _merged_with_defaults(raw: dict) -> dict:
    return deep_merge(Params.model_construct().model_dump(), raw)


def derived(p: Params) -> dict[str, Any]:
    """Values computed from the recipe, shown by `params check` and in every report."""
    ws = p.world_size
    return {
        "max_token_len": p.max_prompt_length + p.max_response_length,
        "responses_per_step": p.train_prompt_bsz * p.n_resp_per_prompt,
        "updates_per_step": p.ppo_epochs * (p.train_prompt_bsz // p.train_prompt_mini_bsz),
        "world_size": ws,
        "prompts_per_gpu": p.train_prompt_bsz / ws,
        "responses_per_gpu": p.train_prompt_bsz * p.n_resp_per_prompt / ws,
        "max_tokens_per_step": p.train_prompt_bsz * p.n_resp_per_prompt * (p.max_prompt_length + p.max_response_length),
    }


class ParamsError(ValueError):
    """Params failed validation; `.errors` holds one `key: value — rule` line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} invalid param(s):\n  " + "\n  ".join(errors))


def _format_errors(exc: ValidationError, raw: dict) -> list[str]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "value_error" and not loc:  # our cross-field rules, already formatted
            out.extend(str(e["ctx"]["error"]).split("; "))
            continue
        value = e.get("input")
        rule = e["msg"]
        if e["type"] == "value_error":  # a field validator's own message, without pydantic's prefix
            rule = str(e["ctx"]["error"])
        if e["type"] == "extra_forbidden":
            rule = "unknown key (typo?)"
        out.append(f"{loc}: {value!r} — {rule}")
    return out


def validate(raw: dict, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(source, [f"<root>: {raw!r} — must be a mapping of keys to values"])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = _format_errors(exc, raw)
        errors += [e for e in batch_rule_errors(_merged_with_defaults(raw)) if e not in errors]
        raise ParamsError(source, errors) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raises ParamsError naming every bad key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(str(path), [f"{path}: file not found"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(str(path), [f"<yaml>: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ParamsError(str(path), [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    if raw is None:
        raise ParamsError(str(path), [f"{path}: the file is empty (no params at all); restore it, e.g. "
                                      f"`git checkout -- {path}`"])
    if not isinstance(raw, dict):
        raise ParamsError(str(path), [f"{path}: expected a mapping of params, got a {type(raw).__name__}"])
    return validate(raw, str(path))


def fields() -> dict[str, Any]:
    """Every schema field by its `a.b` name (groups too) -> pydantic FieldInfo."""
    out: dict[str, Any] = {}

    def walk(model, prefix: str) -> None:
        for name, info in model.model_fields.items():
            out[prefix + name] = info
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, f"{prefix}{name}.")
    walk(Params, "")
    return out


def explain(key: str) -> dict[str, str]:
    """{"description", "type", "default", "rule"} of one key; KeyError says which keys are close."""
    import difflib

    all_fields = fields()
    if key not in all_fields:
        close = difflib.get_close_matches(key, list(all_fields), n=3)
        raise KeyError(f"{key!r} is not a param" + (f"; did you mean {', '.join(close)}?" if close else
                                                    "; `grpolab params check --explain model` lists a group"))
    info = all_fields[key]
    ann = info.annotation
    typ = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
    default = info.default.model_dump() if isinstance(info.default, BaseModel) else info.default
    ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    rule = ", ".join(f"{sym} {getattr(m, k)}" for m in info.metadata for k, sym in ops.items()
                     if getattr(m, k, None) is not None)
    desc = info.description or ""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        desc += ". Keys: " + ", ".join(ann.model_fields)
    return {"description": desc, "type": typ, "default": repr(default), "rule": rule}
