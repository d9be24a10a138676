"""One step's prompts and batch: which prompts a rank takes (`PromptSampler`, `rank_prompts`, `Prompts`) and
the padded (N, P + R) tensors the passes read (`build_batch`). Used by grpolab.train.trainer."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch


def build_batch(rollout, pad_id: int, device) -> dict:
    """Pack prompt (left-padded) + response (right-padded) into one (N, P+R) tensor."""
    P = max(len(p) for p in rollout.prompt_ids)
    R = max(1, max(len(r) for r in rollout.response_ids))
    N = len(rollout.response_ids)
    ids = torch.full((N, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((N, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(rollout.prompt_ids, rollout.response_ids)):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p):P + len(r)] = 1
    resp_mask = attn[:, P:].float()  # (N, R)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device),
            "position_ids": pos.to(device), "response_mask": resp_mask.to(device), "P": P}


def rank_prompts(batch_idx: list[int], mini: int, rank: int, world: int) -> list[int]:
    """This rank's share of a step's prompts: its slice of every global mini-batch, in order."""
    per = mini // world
    return [batch_idx[m + rank * per + j] for m in range(0, len(batch_idx), mini) for j in range(per)]


class PromptSampler:
    """Epoch-wise shuffled prompt order, deterministic from the seed; `pos` is the resumable state."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.pos = n, seed, shuffle, 0

    def take(self, k: int) -> tuple[list[int], int]:
        out = []
        while len(out) < k:
            epoch, off = divmod(self.pos, self.n)
            order = list(range(self.n))
            if self.shuffle:
                random.Random(self.seed + epoch).shuffle(order)
            out.append(order[off])
            self.pos += 1
        return out, self.pos // self.n


@dataclass
class Prompts:
    """One step's prompts on this rank: which rows of the step (`batch_idx`: training-set indices of the
    whole step, `positions`: this rank's), the epoch of its first prompt, and each prompt's sampling seed."""
    step: int
    epoch: int
    batch_idx: list[int]
    positions: list[int]
    seeds: list[int]
