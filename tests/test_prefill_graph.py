"""Graphed first prefill (gatedgen/prefill_graph.py): padded to a bucket, exact at the real tokens.

CPU: the padded pass (reference backend) equals the unpadded prefill -- logits, the cache up to the
real length, device and host lengths -- and decoding after it gives the same logits (the padded
entries are dead); caches start NaN-poisoned so entries nobody wrote show. PrefillGraphs in eager
mode (the same static buffers and host logic, no capture) behind a Session: same text as a plain
Session over a chat-like sequence, the graphed path taken exactly for the turns that start empty.
GPU (skipped without CUDA): the captured graphs against the eager prefill in fp32 and bf16, repeated
replays of one bucket with different lengths, and Sessions with graphs on and off give the same
greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

from conftest import needs_cuda, rel_err
from factory_model import make_checkpoint
from gatedgen.config import ModelConfig
from gatedgen.engine import Decoder, fuse_projections
from gatedgen.errors import GatedgenError
from gatedgen.generate import GenerationSettings, Session
from gatedgen.loading import load_model
from gatedgen.model import CausalLM
from gatedgen.prefill_graph import PAD_ID, PrefillGraphs, graphable, padded_prefill, prefill_bucket
from gatedgen.sampling import SamplingParams
from gatedgen.tokenizer import Tokenizer

LENGTHS = [1, 5, 16, 17, 40]


@pytest.fixture(scope="module", params=[{}, {"use_forget_gate": False, "rope_theta": 10000.0}],
                ids=["fox", "ungated-rope"])
def ckpt(tmp_path_factory, request):
    return make_checkpoint(tmp_path_factory.mktemp("prefill_graph"), **request.param)


def _poison(cache) -> None:
    for t in (cache.k, cache.v, cache.gc):
        if t is not None:
            t.fill_(float("nan"))


def _ids(model, n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.vocab_size, (n,), generator=gen).tolist()


def test_prefill_bucket():
    assert [prefill_bucket(n, 4096) for n in (1, 15, 16, 17, 100, 2047, 2048)] == [16, 16, 16, 32, 128, 2048, 2048]
    assert prefill_bucket(2049, 4096) is None and prefill_bucket(0, 4096) is None
    assert prefill_bucket(70, 80) == 80  # the 128 bucket does not fit the cache: its length instead
    assert prefill_bucket(81, 80) is None
    assert prefill_bucket(5, 100, buckets=(8, 4)) == 8 and prefill_bucket(9, 100, buckets=(4, 8)) is None


def test_graphable():
    base = dict(model_type="forgetting_transformer", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64)
    fox = CausalLM(ModelConfig(**base))
    pro = CausalLM(ModelConfig(**base, use_k_shift=True, use_v_shift=True))
    assert graphable(fox, fox.new_cache(1, 8))
    assert not graphable(fox, fox.new_cache(2, 8))  # batch 1 only
    assert not graphable(pro, pro.new_cache(1, 8))  # key/value shift: eager
    with pytest.raises(GatedgenError):
        PrefillGraphs(pro, pro.new_cache(1, 8), use_graphs=False)
    with pytest.raises(GatedgenError):
        PrefillGraphs(fox, fox.new_cache(1, 8), use_graphs=True)  # CPU cache: no graphs


@pytest.mark.parametrize("n", LENGTHS)
def test_padded_prefill_equals_unpadded(ckpt, n):
    model = load_model(ckpt, backend="reference")
    ids = _ids(model, n, seed=n)
    bucket = prefill_bucket(n, 64)
    ref, pad = model.new_cache(1, 64), model.new_cache(1, 64)
    _poison(ref), _poison(pad)
    with torch.inference_mode():
        want = model(torch.tensor([ids]), ref, mode="prefill", last_only=True)[:, -1]
    got = padded_prefill(model, pad, ids, bucket)
    assert got.shape == want.shape == (1, model.cfg.vocab_size)
    assert rel_err(got, want) < 1e-5
    assert pad.lengths == ref.lengths == [n] and pad.seqlens.tolist() == [n]
    for name in ("k", "v", "gc"):
        a, b = getattr(pad, name), getattr(ref, name)
        if a is not None:
            assert rel_err(a[:, :, :n], b[:, :, :n]) < 1e-5, name
            assert not torch.isnan(a[:, :, n:bucket]).any(), name  # the padding wrote dead entries
            assert torch.isnan(b[:, :, n:]).all(), name
    # decoding continues from the real length: the dead entries are overwritten, never read
    nxt = torch.tensor([[PAD_ID + 3]])
    with torch.inference_mode():
        for _ in range(3):
            a = model(nxt, pad, mode="decode")[:, -1]
            b = model(nxt, ref, mode="decode")[:, -1]
            assert rel_err(a, b) < 1e-5
            nxt = a.argmax(-1, keepdim=True)
    assert pad.lengths == [n + 3] and pad.seqlens.tolist() == [n + 3]


def test_prefill_graphs_eager_mode_buffers(ckpt):
    model = load_model(ckpt, backend="reference")
    cache = model.new_cache(1, 48)
    graphs = PrefillGraphs(model, cache, use_graphs=False)
    assert graphs._buf.numel() == 1 + 48  # the largest usable bucket is the cache's length
    for n in (40, 3, 33):  # long then short: stale ids of the earlier prompt are padded over
        ids = _ids(model, n, seed=100 + n)
        cache.reset()
        got = graphs.prefill(ids)
        bucket = graphs.bucket_for(n)
        assert graphs._buf[: 1 + bucket].tolist() == [n] + ids + [PAD_ID] * (bucket - n)
        ref = model.new_cache(1, 48)
        with torch.inference_mode():
            want = model(torch.tensor([ids]), ref, mode="prefill", last_only=True)[:, -1]
        assert rel_err(got, want) < 1e-5
        assert cache.lengths == [n] and cache.seqlens.tolist() == [n]
    with pytest.raises(GatedgenError, match="empty"):
        graphs.prefill([1, 2])  # the cache holds 33 tokens
    cache.reset()
    with pytest.raises(GatedgenError, match="bucket"):
        graphs.prefill(list(range(1, 50)))  # longer than the cache


def _greedy(n: int) -> GenerationSettings:
    return GenerationSettings(max_tokens=n, sampling=SamplingParams(temperature=0), ignore_eos=True)


def _tokens(session: Session, ids: list[int], n: int) -> list[int]:
    return [r.token for r in session.generate(ids, _greedy(n)) if r.token is not None]


def _chat(session: Session, model) -> list[list[int]]:
    """First turn, a continuation of it (reuses the cache), then an unrelated prompt (starts empty)."""
    a, b = _ids(model, 21, seed=1), _ids(model, 7, seed=2)
    out = [_tokens(session, a, 8)]
    out.append(_tokens(session, a + out[0] + b, 8))
    out.append(_tokens(session, b, 8))
    return out


def test_session_with_eager_mode_prefill_graphs(ckpt):
    model, tok = load_model(ckpt, backend="reference"), Tokenizer.from_dir(ckpt)
    plain = Session(model, tok, 128)
    assert plain.prefill_graphs is None  # CPU: no graphs
    session = Session(model, tok, 128)
    session.prefill_graphs = graphs = PrefillGraphs(model, session.cache, use_graphs=False)
    used = []
    prefill = graphs.prefill
    graphs.prefill = lambda ids: used.append(len(ids)) or prefill(ids)
    assert _chat(session, model) == _chat(plain, model)
    assert used == [21, 7]  # the first turn and the unrelated prompt; the continuation is eager
    assert session.cache.lengths == plain.cache.lengths and session.tokens == plain.tokens


# --- GPU ------------------------------------------------------------------------------------------


def _cuda_model(ckpt, dtype: str):
    return fuse_projections(load_model(ckpt, dtype=dtype, device=torch.device("cuda")))


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_prefill_equals_eager(ckpt, dtype):
    model = _cuda_model(ckpt, dtype)
    cache, ref = model.new_cache(1, 400), model.new_cache(1, 400)
    graphs = PrefillGraphs(model, cache)
    graphs.capture([16, 128])
    tol = 1e-4 if dtype == "float32" else 3e-2
    params = SamplingParams(temperature=0)
    for n in (1, 7, 16, 100, 128, 129, 300, 1, 100):  # replays of a bucket with other lengths
        ids = _ids(model, n, seed=n)
        cache.reset(), ref.reset()
        _poison(cache), _poison(ref)
        got = graphs.prefill(ids).clone()
        with torch.inference_mode():
            want = model(torch.tensor([ids], device="cuda"), ref, mode="prefill", last_only=True)[:, -1]
        assert rel_err(got, want) < tol, n
        assert cache.lengths == [n] and cache.seqlens.tolist() == [n]
        for name in ("k", "v", "gc"):
            a, b = getattr(cache, name), getattr(ref, name)
            if a is not None:
                assert rel_err(a[:, :, :n], b[:, :, :n]) < tol, (n, name)
        if dtype == "float32":  # greedy decoding after either prefill gives the same tokens
            runs = []
            for c, lg in ((cache, got), (ref, want)):
                decoder = Decoder(model, c)
                sampler = decoder.sampler(params)
                decoder.capture(params)
                ids_dev = sampler(lg)
                toks = [ids_dev.item()]
                for _ in range(12):
                    ids_dev = decoder.step(ids_dev, params)
                    toks.append(ids_dev.item())
                runs.append(toks)
            assert runs[0] == runs[1], n
    assert sorted(graphs._graphs) == [16, 128, 256, 400]  # 300 ran in the cache-length bucket


@needs_cuda
def test_graph_prefill_rejects_nonempty_cache(ckpt):
    model = _cuda_model(ckpt, "float32")
    cache = model.new_cache(1, 64)
    graphs = PrefillGraphs(model, cache)
    graphs.prefill([5, 6, 7])
    with pytest.raises(GatedgenError, match="empty"):
        graphs.prefill([5, 6, 7])
    with pytest.raises(GatedgenError, match="empty"):
        graphs.capture([32])


@needs_cuda
def test_session_graphs_on_equals_off(ckpt, monkeypatch):
    tok = Tokenizer.from_dir(ckpt)
    model = load_model(ckpt, dtype="float32", device=torch.device("cuda"))
    on = Session(model, tok, 256)
    assert on.prefill_graphs is not None
    monkeypatch.setenv("GATEDGEN_NO_GRAPH", "1")
    off = Session(model, tok, 256)
    assert off.prefill_graphs is None
    assert _chat(on, model) == _chat(off, model)
    assert sorted(on.prefill_graphs._graphs) == [16, 32]  # 21- and 7-token first prefills
