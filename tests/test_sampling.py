"""Sampler: each option changes the distribution as it should; seeds; validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import needs_cuda

from gatedgen.errors import GatedgenError
from gatedgen.sampling import (
    Sampler,
    SamplingParams,
    apply_repetition_penalty,
    min_p_filter,
    sample_from_probs,
    top_k_filter,
    top_p_filter,
)

NEG_INF = float("-inf")


def random_logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def draw(params: SamplingParams, logits: torch.Tensor, steps: int) -> torch.Tensor:
    """Sample ``steps`` times from the same logits: [steps, B]."""
    sampler = Sampler(params, vocab_size=logits.shape[1], batch_size=logits.shape[0])
    return torch.stack([sampler(logits) for _ in range(steps)])


def empirical(params: SamplingParams, logits: torch.Tensor, n: int) -> torch.Tensor:
    """Frequencies over n draws for a single row: the row repeated n times, one call."""
    sampler = Sampler(params, vocab_size=logits.shape[-1], batch_size=n)
    ids = sampler(logits.reshape(1, -1).expand(n, -1))
    return torch.bincount(ids, minlength=logits.shape[-1]).double() / n


# --- greedy and its equivalents --------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = random_logits()
    ids = draw(SamplingParams(temperature=0, seed=1), logits, 5)
    assert (ids == logits.argmax(-1)).all()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=1.0, min_p=0.999999),
        SamplingParams(temperature=1e-4),
    ],
    ids=["top_k=1", "top_p_tiny", "min_p_near_1", "temperature_tiny"],
)
def test_options_that_reduce_to_greedy(params):
    logits = random_logits()
    params.seed = 3
    ids = draw(params, logits, 20)
    assert (ids == logits.argmax(-1)).all()


# --- the pure filters ------------------------------------------------------------------------------


def test_top_k_keeps_exactly_k():
    logits = random_logits(vocab=30)
    out = top_k_filter(logits, 5)
    assert ((out > NEG_INF).sum(-1) == 5).all()
    kept = out > NEG_INF
    assert (logits[kept].reshape(4, 5).min(-1).values >= logits.topk(5).values[:, -1]).all()
    assert torch.equal(top_k_filter(logits, 1000), logits)  # k larger than the vocabulary: no-op


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda p: (top_p_filter(logits, p) > NEG_INF).tolist()[0]  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    # unsorted input: positions are restored
    shuffled = logits[:, [2, 0, 3, 1]]
    assert (top_p_filter(shuffled, 0.6) > NEG_INF).tolist()[0] == [False, True, False, True]
    # kept logits are unchanged
    assert torch.equal(top_p_filter(shuffled, 0.6)[0, [1, 3]], shuffled[0, [1, 3]])


def test_min_p_relative_to_max():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = min_p_filter(probs.log(), 0.2)  # threshold 0.1
    assert (out > NEG_INF).tolist()[0] == [True, True, True, False]
    out = min_p_filter(probs.log(), 0.5)  # threshold 0.25
    assert (out > NEG_INF).tolist()[0] == [True, True, False, False]


def test_repetition_penalty_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 0.0]]
    # below 1 it rewards seen tokens
    assert apply_repetition_penalty(logits, seen, 0.5).tolist() == [[4.0, -1.0, 2.0, -2.0, 0.0]]


def test_sampler_penalty_sequence():
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0]])
    sampler = Sampler(SamplingParams(temperature=0, repetition_penalty=4.0), vocab_size=4)
    sampler.prime([[0]])
    # step 1: [0.75, 2, 1, -1] -> 1; step 2: [0.75, 0.5, 1, -1] -> 2; step 3: [0.75, 0.5, 0.25, -1] -> 0
    assert [sampler(logits).item() for _ in range(3)] == [1, 2, 0]
    assert sampler.seen.tolist() == [[True, True, True, False]]
    sampler.reset()
    assert sampler(logits).item() == 0


def test_prime_is_per_row_and_checks_ids():
    sampler = Sampler(SamplingParams(), vocab_size=5, batch_size=2)
    sampler.prime([[1, 1, 4], []])
    assert sampler.seen.tolist() == [[False, True, False, False, True], [False] * 5]
    with pytest.raises(ValueError):
        sampler.prime([[5], []])
    with pytest.raises(ValueError):
        sampler.prime([[1]])


def test_temperature_concentrates_and_flattens():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
    top_share = {
        t: empirical(SamplingParams(temperature=t, seed=0), logits, 20000)[0].item() for t in (0.25, 1.0, 4.0)
    }
    assert top_share[0.25] > 0.95 > top_share[1.0] > top_share[4.0] > 0.2


# --- the draw matches the intended distribution ----------------------------------------------------


def chi_square(freq: torch.Tensor, probs: torch.Tensor, n: int) -> float:
    mask = probs > 0
    return float((n * (freq[mask] - probs[mask]) ** 2 / probs[mask]).sum())


# chi-square critical value for 4 degrees of freedom at p = 0.999 is 18.47
CHI2_4DOF_999 = 18.47


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
def test_empirical_distribution_matches_softmax(temperature):
    logits = torch.tensor([1.5, 0.5, 0.0, -0.5, -1.0])
    n = 40000
    freq = empirical(SamplingParams(temperature=temperature, seed=1234), logits, n)
    probs = torch.softmax(logits.double() / temperature, -1)
    assert chi_square(freq, probs, n) < CHI2_4DOF_999
    # and it is sensitive: the wrong temperature is rejected
    wrong = torch.softmax(logits.double() / (temperature * 1.3), -1)
    assert chi_square(freq, wrong, n) > 5 * CHI2_4DOF_999


def test_filtered_distribution_renormalises():
    logits = torch.tensor([1.5, 0.5, 0.0, -0.5, -1.0])
    n = 40000
    freq = empirical(SamplingParams(temperature=1.0, top_k=3, seed=7), logits, n)
    probs = torch.softmax(logits.double(), -1)
    probs[3:] = 0
    probs /= probs.sum()
    assert freq[3:].sum() == 0
    assert chi_square(freq, probs, n) < 13.82  # 2 dof at p = 0.999


def test_sample_from_probs_never_picks_zero_probability():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]).repeat(500, 1)
    ids = sample_from_probs(probs, torch.Generator().manual_seed(0))
    assert (ids[0::2] == 1).all() and (ids[1::2] != 1).all()


# --- seeds -----------------------------------------------------------------------------------------


def test_same_seed_same_tokens():
    logits = random_logits()
    params = SamplingParams(temperature=1.0, top_p=0.9, min_p=0.01, repetition_penalty=1.2, seed=42)
    assert torch.equal(draw(params, logits, 30), draw(params, logits, 30))


def test_different_seeds_differ():
    logits = random_logits()
    a = draw(SamplingParams(temperature=1.0, seed=1), logits, 30)
    b = draw(SamplingParams(temperature=1.0, seed=2), logits, 30)
    assert not torch.equal(a, b)


def test_no_seed_is_nondeterministic():
    logits = random_logits(vocab=1000)
    a = draw(SamplingParams(temperature=1.0), logits, 10)
    b = draw(SamplingParams(temperature=1.0), logits, 10)
    assert not torch.equal(a, b)


def test_output_dtype_shape_and_fp16_input():
    logits = random_logits().half()
    ids = Sampler(SamplingParams(seed=0), vocab_size=50, batch_size=4)(logits)
    assert ids.dtype == torch.int64 and ids.shape == (4,)
    with pytest.raises(ValueError):
        Sampler(SamplingParams(), vocab_size=49, batch_size=4)(logits)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"min_p": -0.1},
        {"min_p": 1.0},
        {"top_k": -1},
        {"top_k": 2.5},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"seed": "x"},
    ],
)
def test_validation_errors(kwargs):
    params = SamplingParams(**kwargs)
    with pytest.raises(GatedgenError) as info:
        params.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(GatedgenError):
        Sampler(params, vocab_size=10)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"temperature": 0}, {"top_p": 1.0}, {"min_p": 0.0}, {"top_k": 0}, {"repetition_penalty": 0.5}],
)
def test_valid_edges(kwargs):
    assert SamplingParams(**kwargs).validate() is not None


# --- device: no host synchronisation, capturable in a CUDA graph -----------------------------------

ALL_ON = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=5)


@needs_cuda
@pytest.mark.gpu
def test_cuda_no_sync_and_graph_capture():
    vocab, batch = 1000, 2
    logits = torch.randn(batch, vocab, device="cuda")
    sampler = Sampler(ALL_ON, vocab_size=vocab, batch_size=batch, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        ids = sampler(logits)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ids.device.type == "cuda" and sampler.seen.sum().item() == batch

    # capture one step; replays must advance the random state and update the seen mask
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        sampler(logits)  # warm-up on a side stream, as CUDA graphs require
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(sampler.generator)
    with torch.cuda.graph(graph):
        out = sampler(logits)
    draws = []
    for _ in range(30):
        graph.replay()
        draws.append(out.clone())
    draws = torch.stack(draws)
    assert ((draws >= 0) & (draws < vocab)).all()
    assert len(set(draws[:, 0].tolist())) > 1  # not the same token every replay
    assert sampler.seen[0, draws[:, 0]].all()


@needs_cuda
@pytest.mark.gpu
def test_cuda_same_seed_same_tokens():
    logits = torch.randn(3, 500, device="cuda")
    runs = [draw_on(ALL_ON, logits) for _ in range(2)]
    assert torch.equal(*runs)


def draw_on(params: SamplingParams, logits: torch.Tensor, steps: int = 20) -> torch.Tensor:
    sampler = Sampler(params, logits.shape[1], logits.shape[0], device=logits.device)
    return torch.stack([sampler(logits) for _ in range(steps)])
