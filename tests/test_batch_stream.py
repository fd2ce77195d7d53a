"""Continuous batching (gatedgen.batch.generate_stream): each prompt's text equals generating it alone,
whatever row it lands in and whoever shares the batch; finished rows take the next prompt."""

from __future__ import annotations

import pytest
import torch

from conftest import needs_cuda
from factory_model import make_checkpoint
from gatedgen.batch import BatchStats, generate_batch, generate_stream
from gatedgen.errors import GatedgenError
from gatedgen.generate import GenerationSettings, Session, generate_text
from gatedgen.loading import load_model
from gatedgen.sampling import SamplingParams
from gatedgen.tokenizer import Tokenizer

PROMPTS = ["Once upon a time", "Hi", "The quick brown fox jumps over the lazy dog, and then", "a b c d e f g",
           "z", "One two three four", "Tell me a story about a cat", "x y", "The end."]


@pytest.fixture(scope="module", params=[{}, {"use_forget_gate": False, "rope_theta": 10000.0}],
                ids=["fox", "ungated-rope"])
def ckpt(tmp_path_factory, request):
    return make_checkpoint(tmp_path_factory.mktemp("stream"), **request.param)


def _load(ckpt, device):
    return load_model(ckpt, dtype="float32", device=torch.device(device)), Tokenizer.from_dir(ckpt)


def _settings(n: int, **kw) -> GenerationSettings:
    return GenerationSettings(max_tokens=n, sampling=SamplingParams(temperature=0), **kw)


def _alone(model, tok, settings):
    return [generate_text(Session(model, tok, 256), p, settings) for p in PROMPTS]


def _check_stream(model, tok, settings, batch_size, chunk, use_graphs=None):
    alone = _alone(model, tok, settings)
    stats = BatchStats()
    got = {}
    for index, result in generate_stream(model, tok, iter(PROMPTS), settings, batch_size=batch_size,
                                         max_prompt_tokens=64, chunk=chunk, use_graphs=use_graphs, stats=stats):
        assert index not in got
        got[index] = result
    assert sorted(got) == list(range(len(PROMPTS)))
    assert [got[i].text for i in range(len(PROMPTS))] == alone
    assert stats.generated_tokens == sum(len(r.tokens) for r in got.values())
    assert stats.prompt_tokens == sum(len(tok.encode(p)) for p in PROMPTS)
    return got


@pytest.mark.parametrize("batch_size,chunk", [(3, 4), (2, 1), (16, 8)])
def test_stream_equals_alone_cpu(ckpt, batch_size, chunk):
    model, tok = _load(ckpt, "cpu")
    got = _check_stream(model, tok, _settings(12, ignore_eos=True), batch_size, chunk)
    assert all(len(r.tokens) == 12 and r.finish_reason == "length" for r in got.values())


def test_stream_stops_at_different_lengths_cpu(ckpt):
    """A stop token that some prompts reach early: their rows are refilled mid-flight."""
    model, tok = _load(ckpt, "cpu")
    free_run = generate_batch(model, tok, PROMPTS, _settings(16, ignore_eos=True))
    # stop at the most common token of the free-running continuations, so rows end at different steps
    seen = [t for r in free_run for t in set(r.tokens[1:])]
    stop = max(set(seen), key=seen.count)
    got = _check_stream(model, tok, _settings(16, ignore_eos=True, stop_token_ids=[stop]), 2, 3)
    lengths = {len(r.tokens) for r in got.values() if r.finish_reason == "stop"}
    assert len(lengths) >= 2 and any(r.finish_reason == "length" for r in got.values())


def test_stream_with_stop_strings_cpu(ckpt):
    """Stop strings need the incremental text path; whole-text decoding is used without them."""
    model, tok = _load(ckpt, "cpu")
    free_run = generate_batch(model, tok, PROMPTS, _settings(16, ignore_eos=True))
    texts = [r.text for r in free_run if len(r.text) > 6]
    stop = texts[0][3:5]  # a piece of text that appears mid-answer
    got = _check_stream(model, tok, _settings(16, ignore_eos=True, stop=[stop]), 3, 2)
    assert any(r.finish_reason == "stop" for r in got.values())
    assert all(stop not in r.text for r in got.values())


def test_generate_batch_is_one_wave_cpu(ckpt):
    model, tok = _load(ckpt, "cpu")
    settings = _settings(10, ignore_eos=True)
    assert [r.text for r in generate_batch(model, tok, PROMPTS, settings)] == _alone(model, tok, settings)


def test_stream_rejects_long_and_empty_prompts(ckpt):
    model, tok = _load(ckpt, "cpu")
    with pytest.raises(GatedgenError, match="max_prompt_tokens"):
        list(generate_stream(model, tok, ["a " * 50], _settings(4), max_prompt_tokens=8))
    with pytest.raises(GatedgenError, match="empty"):
        list(generate_stream(model, tok, [[]], _settings(4)))


def test_stream_reads_prompts_lazily(ckpt):
    model, tok = _load(ckpt, "cpu")
    taken = []

    def source():
        for i, p in enumerate(PROMPTS):
            taken.append(i)
            yield p

    stream = generate_stream(model, tok, source(), _settings(3, ignore_eos=True), batch_size=2, chunk=1)
    next(stream)
    assert len(taken) < len(PROMPTS)


def test_sample_rows_repetition_penalty_matches_full_batch():
    from gatedgen.sampling import Sampler

    torch.manual_seed(0)
    params = SamplingParams(temperature=0, repetition_penalty=1.7)
    full, part = Sampler(params, 50, 4), Sampler(params, 50, 4)
    prompts = [[1, 2, 3], [4], [5, 6], [7]]
    full.prime(prompts)
    part.reset_rows([0, 1, 2, 3], prompts)
    logits = torch.randn(4, 50)
    want = full(logits)
    rows = torch.tensor([2, 0])
    got = part.sample_rows(logits[rows], rows)
    assert got.tolist() == want[rows].tolist()
    assert torch.equal(part.seen[rows], full.seen[rows])


@needs_cuda
@pytest.mark.parametrize("batch_size,chunk", [(3, 4), (16, 8)])
def test_stream_equals_alone_cuda(ckpt, batch_size, chunk):
    model, tok = _load(ckpt, "cuda")
    _check_stream(model, tok, _settings(24, ignore_eos=True), batch_size, chunk)
