"""Generation engine: CUDA path vs CPU reference, CUDA-graph replay vs eager steps, batched vs alone.

CPU: batched generation through the reference path equals generating each prompt alone, and the
row view of the cache. GPU (skipped without CUDA): greedy text of an fp32 model on CUDA (Triton
kernels, fused projections, CUDA-graph decode) equals the CPU reference path over 64 tokens; graph
replays give the same tokens as eager steps; batched generation equals generating alone.
"""

from __future__ import annotations

import pytest
import torch

from conftest import needs_cuda
from factory_model import make_checkpoint
from gatedgen.batch import generate_batch
from gatedgen.engine import Decoder, batch_bucket
from gatedgen.generate import GenerationSettings, Session, generate_text
from gatedgen.loading import load_model
from gatedgen.sampling import SamplingParams
from gatedgen.tokenizer import Tokenizer

PROMPTS = ["Once upon a time", "Hi", "The quick brown fox jumps over the lazy dog, and then", "a b c d e f g"]


def _greedy(n: int) -> GenerationSettings:
    return GenerationSettings(max_tokens=n, sampling=SamplingParams(temperature=0), ignore_eos=True)


@pytest.fixture(scope="module", params=[{}, {"use_forget_gate": False, "rope_theta": 10000.0}],
                ids=["fox", "ungated-rope"])
def ckpt(tmp_path_factory, request):
    return make_checkpoint(tmp_path_factory.mktemp("engine"), **request.param)


def _load(ckpt, device):
    return load_model(ckpt, dtype="float32", device=torch.device(device)), Tokenizer.from_dir(ckpt)


def test_batch_equals_alone_cpu(ckpt):
    model, tok = _load(ckpt, "cpu")
    alone = [generate_text(Session(model, tok, 256), p, _greedy(20)) for p in PROMPTS]
    batched = generate_batch(model, tok, PROMPTS, _greedy(20))
    assert [r.text for r in batched] == alone
    assert all(len(r.tokens) == 20 and r.finish_reason == "length" for r in batched)


def test_cache_row_is_a_view():
    from gatedgen.bench.generate import PRESETS, random_model

    model = random_model(PRESETS["tiny"], "cpu", torch.float32)
    cache = model.new_cache(3, 16)
    row = cache.row(1)
    model(torch.tensor([[5, 6, 7]]), row, mode="prefill")
    cache.lengths[1] = row.lengths[0]
    assert cache.seqlens.tolist() == [0, 3, 0] and cache.lengths == [0, 3, 0]
    assert cache.k[:, 1, :3].abs().sum() > 0 and cache.k[:, 0].abs().sum() == 0


def test_batch_bucket():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]


@needs_cuda
def test_cuda_greedy_equals_cpu_reference(ckpt):
    cpu_model, tok = _load(ckpt, "cpu")
    gpu_model, _ = _load(ckpt, "cuda")
    for prompt in PROMPTS[:2]:
        ref = generate_text(Session(cpu_model, tok, 256), prompt, _greedy(64))
        out = generate_text(Session(gpu_model, tok, 256), prompt, _greedy(64))
        assert out == ref


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_replay_equals_eager(ckpt, dtype, batch):
    model = load_model(ckpt, dtype=dtype, device=torch.device("cuda"))
    params = SamplingParams(temperature=0)
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, 11), device="cuda")
    runs = []
    for use_graphs in (False, True):
        cache = model.new_cache(batch, 64)
        decoder = Decoder(model, cache, use_graphs)
        sampler = decoder.sampler(params)
        decoder.capture(params)
        with torch.inference_mode():
            ids = sampler(model(prompt, cache, mode="prefill", last_only=True)[:, -1])
        tokens = [ids.tolist()]
        for _ in range(40):
            ids = decoder.step(ids, params)
            tokens.append(ids.tolist())
        assert cache.lengths == [11 + 40] * batch and cache.seqlens.tolist() == cache.lengths
        runs.append(tokens)
    assert runs[0] == runs[1]


@needs_cuda
def test_graph_sampling_seeded_reproducible(ckpt):
    model, tok = _load(ckpt, "cuda")
    settings = GenerationSettings(max_tokens=30, sampling=SamplingParams(temperature=1.0, top_k=20, seed=7),
                                  ignore_eos=True)
    session = Session(model, tok, 256)
    a = generate_text(session, "Once upon a time", settings)
    session.reset()
    b = generate_text(session, "Once upon a time", settings)
    assert a == b


@needs_cuda
def test_batch_equals_alone_cuda(ckpt):
    model, tok = _load(ckpt, "cuda")
    alone = [generate_text(Session(model, tok, 256), p, _greedy(40)) for p in PROMPTS]
    batched = generate_batch(model, tok, PROMPTS, _greedy(40))
    assert [r.text for r in batched] == alone
