"""Pre-flight estimates from params and the model's config.json, before anything loads."""
from __future__ import annotations

import json
from pathlib import Path


def param_count_from_config(c: dict) -> int:
    """Parameters of a Qwen2/Qwen3-style decoder computed from its config (no weights read)."""
    H, L, V, I = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or H // nh
    attn = H * nh * hd + 2 * H * nkv * hd + nh * hd * H
    if c.get("attention_bias"):
        attn += nh * hd + 2 * nkv * hd
    if c.get("model_type") == "qwen3":
        attn += 2 * hd  # q_norm, k_norm
    layer = attn + 3 * H * I + 2 * H
    emb = V * H * (1 if c.get("tie_word_embeddings") else 2)
    return emb + L * layer + H


def param_count(model_dir: str | Path) -> int:
    cfg = Path(model_dir) / "config.json"
    if not cfg.exists():
        return 0
    return param_count_from_config(json.loads(cfg.read_text()))
