"""The hf rollout engine's per-response sampling: the right distribution, and responses that depend
only on their seed, not on how prompts are batched (prompts_per_call) — on the real tiny model."""
import pytest
import torch

from grpolab.model import load as models
from grpolab.rollout.engine import HFEngine, RowSampler, Sampling

SCORES = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


def _draw(rows: int, temperature: float, top_p: float, first_seed: int = 0) -> torch.Tensor:
    s = RowSampler(list(range(first_seed, first_seed + rows)), temperature, top_p, "cpu")
    out = s(torch.zeros(rows, 1, dtype=torch.long), SCORES.expand(rows, -1).clone())
    assert ((out == 0).sum(-1) == 1).all() and ((out == float("-inf")).sum(-1) == len(SCORES) - 1).all()
    return out.argmax(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.5])
def test_row_sampler_follows_the_tempered_softmax(temperature):
    tokens = _draw(20_000, temperature, 1.0)
    freq = torch.bincount(tokens, minlength=len(SCORES)).float() / len(tokens)
    expected = torch.exp(SCORES / temperature) / torch.exp(SCORES / temperature).sum()
    assert torch.allclose(freq, expected, atol=0.012), (freq, expected)


def test_row_sampler_top_p_keeps_the_smallest_nucleus():
    p = torch.softmax(SCORES, -1)  # 0.561, 0.206, 0.125, ...: cumulative 0.767 < 0.85 <= 0.892
    tokens = _draw(20_000, 1.0, 0.85)
    assert set(tokens.tolist()) == {0, 1, 2}
    freq = torch.bincount(tokens, minlength=len(SCORES)).float() / len(tokens)
    kept = p[:3] / p[:3].sum()
    assert torch.allclose(freq[:3], kept, atol=0.012), (freq, kept)


def test_row_sampler_rows_are_independent_of_their_neighbours():
    alone = [_draw(1, 1.0, 1.0, first_seed=s).item() for s in range(200, 260)]
    together = _draw(60, 1.0, 1.0, first_seed=200).tolist()
    assert alone == together and len(set(alone)) > 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = models.build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0, warmup_steps=30)
    model, tok = models.load(d, dtype=torch.float32, device="cpu")
    return model, tok


def test_responses_depend_on_their_seed_not_on_the_batching(tiny):
    model, tok = tiny
    torch.set_num_threads(1)
    prompts = [tok.encode(t) for t in ("1+2=", "12+3=", "4+40=", "0+0=", "3+33=")]  # different lengths
    seeds = [11, 22, 33, 44, 55]
    sampling = Sampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12)
    runs = {k: HFEngine(model, tok, prompts_per_call=k).generate(prompts, sampling, seeds=seeds).response_ids
            for k in (1, 2, 5)}
    assert runs[1] == runs[2] == runs[5]
    assert len(runs[1]) == 15 and len({tuple(r) for r in runs[1]}) > 5  # sampled, not one answer
    # reversing the prompt order (and their seeds) reverses the groups, response for response
    rev = HFEngine(model, tok, 2).generate(prompts[::-1], sampling, seeds=seeds[::-1]).response_ids
    assert [rev[(4 - g) * 3 + k] for g in range(5) for k in range(3)] == runs[1]
    # other seeds, other responses
    other = HFEngine(model, tok, 5).generate(prompts, sampling, seeds=[s + 1 for s in seeds]).response_ids
    assert other != runs[1]
