"""Cross-field rules of params.yaml (`grpolab.params.schema.Params` runs them after the per-field
checks): batch sizes that must divide over each other and over the ranks, options that need others.
"""
from __future__ import annotations


def batch_rule_errors(d: dict) -> list[str]:
    """Cross-field rules over a (nested) params dict, each error as `key: value — rule`.

    Works on raw dicts too, so these rules are reported alongside per-field type errors."""
    errs = []

    def rule(fn):
        try:
            msg = fn()
        except (TypeError, ValueError, KeyError, ZeroDivisionError, AttributeError):
            return  # a field is itself invalid; that field's own error says so
        if msg:
            errs.append(msg)

    sm = d["smoke"]
    world = d["n_gpus_per_node"] * d["nnodes"]
    rule(lambda: d["train_prompt_bsz"] % d["train_prompt_mini_bsz"] and (
        f"train_prompt_mini_bsz: {d['train_prompt_mini_bsz']} — must divide train_prompt_bsz "
        f"({d['train_prompt_bsz']})"))
    rule(lambda: world > 1 and d["train_prompt_mini_bsz"] % world and (
        f"train_prompt_mini_bsz: {d['train_prompt_mini_bsz']} — must be divisible by "
        f"n_gpus_per_node*nnodes ({world}) so each rank gets whole prompt groups"))
    rule(lambda: sm["train_prompt_bsz"] % sm["train_prompt_mini_bsz"] and (
        f"smoke.train_prompt_mini_bsz: {sm['train_prompt_mini_bsz']} — must divide "
        f"smoke.train_prompt_bsz ({sm['train_prompt_bsz']})"))
    rule(lambda: world > 1 and sm["train_prompt_mini_bsz"] % world and (
        f"smoke.train_prompt_mini_bsz: {sm['train_prompt_mini_bsz']} — must be divisible by "
        f"n_gpus_per_node*nnodes ({world}): the smoke stage runs on the same ranks"))
    rule(lambda: d.get("tis_imp_ratio_cap") is not None and d["rollout"]["engine"] == "hf" and (
        f"tis_imp_ratio_cap: {d['tis_imp_ratio_cap']} — needs an engine that reports its sampling "
        f"log-probs (rollout.engine: vllm); the hf engine samples with the trainer's own weights"))
    rule(lambda: d.get("tis_imp_ratio_cap") is not None and d["rollout"]["logprobs"] == "none" and (
        f"tis_imp_ratio_cap: {d['tis_imp_ratio_cap']} — needs the engine's log-probs of every response; "
        f"rollout.logprobs: none asks for none (use sample or all: with the cap, every response's are asked)"))
    rule(lambda: d["high_entropy_kl_loss_scale_coef"] > 0 and not (
        d["kl_loss_coef"] > 0 and d["entropy_quantile"] is not None) and (
        f"high_entropy_kl_loss_scale_coef: {d['high_entropy_kl_loss_scale_coef']} — needs "
        f"kl_loss_coef > 0 and entropy_quantile set (it weights the KL of high-entropy tokens)"))
    rule(lambda: d["val"]["select_metric"] and d["val"]["select_metric"] not in (
        [f"avg@{d['val']['n']}", f"maj@{d['val']['n']}"] + [f"pass@{j}" for j in range(1, d["val"]["n"] + 1)]) and (
        f"val.select_metric: {d['val']['select_metric']!r} — must be avg@{d['val']['n']}, maj@{d['val']['n']} or "
        f"pass@j with j <= val.n ({d['val']['n']}), or empty (avg@{d['val']['n']})"))
    rule(lambda: d["overlong_buffer_len"] >= d["max_response_length"] and (
        f"overlong_buffer_len: {d['overlong_buffer_len']} — must be smaller than "
        f"max_response_length ({d['max_response_length']})"))
    return errs
