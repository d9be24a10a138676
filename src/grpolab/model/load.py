"""Models: fetch a Hugging Face snapshot, or build the built-in tiny Qwen3 model locally.

    grpolab model download            # what the `download` DVC stage runs

`model.path` is one of
- a hub id (`Qwen/Qwen3-0.6B-Base`): fetched with huggingface_hub at `model.revision` into
  `model.local_dir`; skipped when the weights are already there;
- a local directory holding `config.json` and weights: used as is (its files hard-linked into
  `model.local_dir`, the stage's DVC output); a path that does not exist is named as such;
- `builtin:tiny-qwen3`: a ~100k-parameter Qwen3-architecture model with a character-level tokenizer,
  built here without network, deterministic from `model.seed`, then warmed up for a few hundred
  steps of supervised training on the answer *format* (`\\boxed{<number>}`) with random numbers, so
  that RL has non-zero rewards to start from while accuracy starts near chance.

The stage writes a manifest (file, size, sha256) of what it produced.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from grpolab.util import GrpolabError, sha256_file
from grpolab.data.rows import toy_question

BUILTIN_TINY = "builtin:tiny-qwen3"
BUILTIN_06B = "builtin:qwen3-0.6b-random"  # Qwen3-0.6B's shape, random weights: GPU memory/speed runs
QWEN3_06B_SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True)
# Models whose architecture is known before any download (preflight on a fresh clone): hub id -> config.
KNOWN_CONFIGS = {name: {**QWEN3_06B_SHAPE, "model_type": "qwen3"}
                 for name in ("Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-0.6B", BUILTIN_06B)}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class DownloadError(GrpolabError):
    pass


def has_weights(d: Path) -> bool:
    return (d / "config.json").exists() and any(
        f.suffix in WEIGHT_SUFFIXES for f in d.glob("*") if f.is_file()
    )


def build_tiny_tokenizer(vocab_size: int = 0):
    """Character-level tokenizer over printable ASCII plus Qwen's chat special tokens; with
    `vocab_size`, padded with `<xN>` filler tokens so that every id a larger model samples decodes."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["<unk>"] + chars)}
    vocab.update({f"<x{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(out_dir: Path, seed: int = 0, warmup_steps: int = 150) -> Path:
    """Build, warm up and save the built-in tiny Qwen3 model and its tokenizer into `out_dir`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_tiny_tokenizer()
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 100k-parameter model: threading only adds overhead
    cfg = Qwen3Config(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # Init std 0.1 (HF default 0.02): with the default, attention logits start ~0 and stay flat
        # for a long plateau, so the model ignores the operands for ~150 SFT (and far more RL)
        # steps; 0.1 lets RL learn the toy sums within ~100 steps (tests/test_learning.py).
        initializer_range=0.1,
    )
    model = Qwen3ForCausalLM(cfg)
    if warmup_steps:
        _format_warmup(model, tok, seed, warmup_steps)
    torch.set_num_threads(threads)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def build_random_06b(out_dir: Path, seed: int = 0) -> Path:
    """Qwen3-0.6B's architecture with random bf16 weights (no download); for GPU smoke/speed runs."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_tiny_tokenizer(QWEN3_06B_SHAPE["vocab_size"])
    torch.manual_seed(seed)
    cfg = Qwen3Config(**QWEN3_06B_SHAPE, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype="bfloat16")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _format_warmup(model, tok, seed: int, steps: int, batch: int = 32) -> None:
    """Teach the answer format only: `\\boxed{N}` with N random, independent of the question."""
    import torch

    rng = random.Random(seed)
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    prompts = {}  # question -> token ids (the toy question space is small: tokenize once)
    answers = {n: encode(f"\\boxed{{{n}}}<|im_end|>") for n in range(19)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        seqs = []
        for _ in range(batch):
            q, _ = toy_question(rng)
            if q not in prompts:
                prompts[q] = encode(tok.apply_chat_template([{"role": "user", "content": q}],
                                                            tokenize=False, add_generation_prompt=True))
            seqs.append((prompts[q], answers[rng.randint(0, 18)]))
        width = max(len(p) + len(a) for p, a in seqs)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        for i, (p, a) in enumerate(seqs):  # right padding; loss on the answer tokens only
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (ids != tok.pad_token_id),
                     labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def snapshot(repo_id: str, revision: str, local_dir: Path) -> Path:
    """Fetch a hub snapshot; no network gives a DownloadError naming the alternatives."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(local_dir),
                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as exc:  # network errors come as several httpx / hub exception types
        if type(exc).__name__ == "HFValidationError":
            raise DownloadError(f"model.path: '{repo_id}' — neither an existing directory nor a valid "
                                f"hub id ('org/name')") from None
        raise DownloadError(
            f"could not download '{repo_id}' (revision '{revision}') from the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
            f"  Alternatives: put the weights in '{local_dir}' (config.json + *.safetensors), set "
            f"model.path to a local directory, or use the built-in model: "
            f"`dvc exp run -S model.path={BUILTIN_TINY}`."
        ) from None
    return local_dir


def fetch(path: str, revision: str, local_dir: Path, seed: int = 0) -> Path:
    """Resolve `model.path` to a directory holding weights, downloading or building as needed."""
    if path == BUILTIN_TINY:
        stamp = local_dir / ".builtin-seed"
        if has_weights(local_dir) and stamp.exists() and stamp.read_text().strip() == str(seed):
            return local_dir
        build_tiny_model(local_dir, seed=seed)
        stamp.write_text(str(seed))
        return local_dir
    if path == BUILTIN_06B:
        stamp = local_dir / ".builtin-seed"
        if not (has_weights(local_dir) and stamp.exists() and stamp.read_text().strip() == str(seed)):
            build_random_06b(local_dir, seed=seed)
            stamp.write_text(str(seed))
        return local_dir
    if path.startswith("builtin:"):
        raise DownloadError(f"model.path: '{path}' — unknown built-in model; use '{BUILTIN_TINY}' "
                            f"or '{BUILTIN_06B}'")
    local = Path(path).expanduser()
    if local.is_dir():
        if not has_weights(local):
            raise DownloadError(f"model.path: '{path}' — directory has no config.json + weights")
        return use_local_dir(local, local_dir)
    if looks_like_path(path):
        raise DownloadError(f"model.path: '{path}' — no such directory (a local model is a folder with "
                            f"config.json + weights; a hub id looks like 'Qwen/Qwen3-0.6B-Base')")
    if has_weights(local_dir):
        return local_dir  # already downloaded
    return snapshot(path, revision, local_dir)


def looks_like_path(path: str) -> bool:
    """A filesystem path rather than a hub id (`org/name`)."""
    return (path.startswith(("/", "./", "../", "~", ".\\")) or path.endswith("/") or path.count("/") > 1
            or "\\" in path or Path(path).suffix in (".safetensors", ".bin", ".json"))


def use_local_dir(src: Path, local_dir: Path) -> Path:
    """A local model folder is used as is, but the stage's output is `model.local_dir` (a DVC output):
    its files are linked there (hard links; copies across file systems). Returns `local_dir`."""
    import os
    import shutil

    if local_dir.exists() and src.resolve() == local_dir.resolve():
        return local_dir

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    tmp = local_dir.with_name(local_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link, ignore=shutil.ignore_patterns(".cache", ".git"))
    shutil.rmtree(local_dir, ignore_errors=True)
    tmp.rename(local_dir)
    return local_dir


def write_manifest(model_dir: Path, out: Path, source: str, revision: str) -> dict:
    files = [
        {"file": str(f.relative_to(model_dir)), "size": f.stat().st_size, "sha256": sha256_file(f)}
        for f in sorted(model_dir.rglob("*"))
        if f.is_file() and ".cache" not in f.parts
    ]
    manifest = {"source": source, "revision": revision, "dir": str(model_dir), "files": files}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of a model directory, left-padding, with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(model_dir: str | Path, dtype=None, device: str = "cpu"):
    """Load (model, tokenizer) from a directory written by `fetch`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model, load_tokenizer(model_dir)
