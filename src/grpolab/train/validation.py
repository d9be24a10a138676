"""Validation sampling as a function over a rollout engine (not a second Trainer): the training loop's
`val-core/<data_source>/acc/mean@n` (and verl's best@k / maj@k, grpolab.metrics.valmetrics) and the evaluate
stage call the same `sample` (`run` = `sample` + those metrics).

Prompts are split over ranks round-robin; ranks with fewer prompts repeat the first one as a dummy
(not scored) so every rank makes the same number of engine calls. Each prompt is seeded from
(seed + 1, step, index), so the result does not depend on the world size.
"""
from __future__ import annotations

import math
import time

from grpolab.train import dist
from grpolab.metrics import valmetrics
from grpolab.metrics.evalmetrics import has_repeated_ngram
from grpolab.reward.math_reward import extract_answer
from grpolab.rollout.engine import Sampling, prompt_seed


def sample(engine, tok, examples, p, step: int, scorer, rank: int, world: int, encode) -> list[dict]:
    """This rank's share of `examples`, val.n responses each, scored: one dict per response with
    `data_source`, `prompt` (index in `examples`), `sample` (0..n-1), `response`, `ground_truth`,
    `score`, `pred` (the answer maj@ votes on), `length` (tokens), `truncated`, `boxed` and `repeat20`
    (grpolab.metrics.evalmetrics). `scorer` a grpolab.reward.functions.RewardFunctions; `encode(messages) -> ids`."""
    if not examples or not p.val.n:
        return []
    mine = list(range(rank, len(examples), world))
    per_rank = math.ceil(len(examples) / world)
    ids = [encode(examples[i].prompt) for i in mine]
    ids += [encode(examples[0].prompt)] * (per_rank - len(mine))
    seeds = [prompt_seed(p.seed + 1, step, i) for i in range(rank, rank + per_rank * world, world)]
    engine.wake()
    rollout = engine.generate(ids, Sampling(p.val.n, p.val.temperature, p.val.top_p, p.max_response_length),
                              seeds=seeds)
    engine.sleep()
    groups = rollout.group_index.tolist()
    real = [j for j, g in enumerate(groups) if g < len(mine)]
    texts = tok.batch_decode([rollout.response_ids[j] for j in real], skip_special_tokens=True)
    uids = [mine[groups[j]] for j in real]
    ex = [examples[u] for u in uids]
    res = scorer.score(texts, [e.ground_truth for e in ex], [e.data_source for e in ex],
                       [e.extra_info for e in ex])
    rows, seen = [], {}
    for j, u, e, text, r in zip(real, uids, ex, texts, res):
        seen[u] = seen.get(u, -1) + 1
        resp = rollout.response_ids[j]
        rows.append({"data_source": e.data_source, "prompt": u, "sample": seen[u], "response": text,
                     "ground_truth": e.ground_truth, "score": r.score, "pred": r.pred, "length": len(resp),
                     "truncated": bool(rollout.truncated[j]), "boxed": extract_answer(text)[1] == "ok",
                     "repeat20": has_repeated_ngram(resp)})
    return rows


def run(engine, tok, examples, p, step: int, scorer, rank: int, world: int, encode) -> dict:
    """verl's validation metrics per data source over `examples` (acc/mean@n, best@k, maj@k, ...:
    grpolab.metrics.valmetrics), combined over ranks."""
    if not examples or not p.val.n:
        return {}
    t0 = time.perf_counter()
    rows = sample(engine, tok, examples, p, step, scorer, rank, world, encode)
    rows = [(r["data_source"], r["prompt"], r["score"], r["pred"]) for r in rows]
    out = valmetrics.validation_metrics([r for part in dist.gather_objects(rows) for r in part])
    out["timing_s/testing"] = time.perf_counter() - t0
    return out
