"""The plain-PyTorch references in kernels/attn/naive.py against the direct fp64 formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import direct_attention, rel_err
from kernels.attn import naive


def _inputs(B, Tk, HQ, H, D, dtype=torch.float64, gate_shift=4.0, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    q = torch.randn(B, Tk, HQ, D, generator=gen, dtype=dtype)
    k = torch.randn(B, Tk, H, D, generator=gen, dtype=dtype)
    v = torch.randn(B, Tk, H, D, generator=gen, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, Tk, HQ, generator=gen, dtype=torch.float64) + gate_shift)
    return q, k, v, g


@pytest.mark.parametrize("B,T,HQ,H,D", [(2, 63, 4, 4, 16), (1, 37, 8, 2, 100), (3, 1, 2, 1, 8)])
@pytest.mark.parametrize("gated", [True, False])
def test_parallel_matches_direct(B, T, HQ, H, D, gated):
    q, k, v, g = _inputs(B, T, HQ, H, D)
    g = g if gated else None
    ref = direct_attention(q, k, v, g)
    out = naive.parallel_attn(q, k, v, g)
    assert rel_err(out, ref) < 1e-10


@pytest.mark.parametrize("shift", [-4.0, -30.0])
def test_strongly_negative_gates(shift):
    # gates near -30: history is forgotten to exp(-30 * distance); rows stay finite
    q, k, v, g = _inputs(2, 40, 4, 2, 32, gate_shift=shift)
    out = naive.parallel_attn(q, k, v, g)
    assert rel_err(out, direct_attention(q, k, v, g)) < 1e-10
    # fully forgotten history: each query sees only its own value
    g_hard = torch.full_like(g, -1e4)
    out = naive.parallel_attn(q, k, v, g_hard)
    own = v.repeat_interleave(2, dim=2)
    assert rel_err(out, own) < 1e-10


def test_float32_inputs_close_to_fp64():
    q, k, v, g = _inputs(2, 50, 4, 2, 64, dtype=torch.float32)
    out = naive.parallel_attn(q, k, v, g.float())
    assert out.dtype == torch.float32
    assert rel_err(out, direct_attention(q, k, v, g)) < 1e-5


@pytest.mark.parametrize("Tq", [1, 5, 29])
def test_queries_continue_a_cache(Tq):
    Tk = 45
    q, k, v, g = _inputs(2, Tk, 6, 3, 24)
    gc = torch.cumsum(g, dim=1) - 3.0  # running sums may start anywhere: only differences count
    out = naive.parallel_attn(q[:, -Tq:], k, v, gc=gc)
    ref = direct_attention(q[:, -Tq:], k, v, g)
    assert rel_err(out, ref) < 1e-10
    with pytest.raises(ValueError):  # raw gates cannot continue a cache
        naive.parallel_attn(q[:, -Tq:], k, v, g=g[:, -Tq:])


def test_varlen_matches_separate_sequences():
    lens = [7, 1, 30, 12]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)))
    q, k, v, g = _inputs(1, sum(lens), 4, 2, 16)
    out = naive.parallel_attn(q, k, v, g, cu_seqlens=cu)
    for bos, eos in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = direct_attention(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], g[:, bos:eos])
        assert rel_err(out[:, bos:eos], ref) < 1e-10


def test_lse_output():
    q, k, v, g = _inputs(1, 20, 2, 1, 8)
    o, lse = naive.parallel_attn(q, k, v, g, return_lse=True)
    assert lse.shape == (1, 20, 2) and lse.dtype == torch.float32
    s = (q[0, :, 0] @ k[0, :, 0].T) * 8**-0.5
    gc = torch.cumsum(g[0, :, 0], 0)
    s = s + gc[:, None] - gc[None, :]
    s = s.masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse[0, :, 0].double(), torch.logsumexp(s, -1), rtol=1e-6, atol=1e-6)


def test_long_prompt_blocks_bounded():
    # more queries than one reference block (256): blocks must stitch together exactly
    q, k, v, g = _inputs(1, 600, 2, 1, 8, dtype=torch.float32)
    out = naive.parallel_attn(q, k, v, g.float())
    gc = torch.cumsum(g, 1)
    ref = naive.parallel_attn(q.double()[:, 300:], k.double(), v.double(), gc=gc)
    assert rel_err(out[:, 300:], ref) < 1e-5


def test_decode_ragged_gqa():
    B, Tmax, HQ, H, D, Tq = 3, 40, 8, 2, 16, 3
    lens = torch.tensor([Tq, 17, 40], dtype=torch.int32)
    q, k, v, g = _inputs(B, Tmax, HQ, H, D)
    gc = torch.cumsum(g, dim=1)
    qn = torch.randn(B, Tq, HQ, D, dtype=torch.float64)
    out = naive.decode_attn(qn, k, v, gc, cache_seqlens=lens)
    for b, n in enumerate(lens.tolist()):
        ref = direct_attention(qn[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n], g[b : b + 1, :n])
        assert rel_err(out[b : b + 1], ref) < 1e-10
    out_ungated = naive.decode_attn(qn, k, v, None, cache_seqlens=lens)
    ref = direct_attention(qn[2:], k[2:], v[2:], None)
    assert rel_err(out_ungated[2:], ref) < 1e-10


def test_update_cache_and_rebase():
    B, Tmax, H, HQ, D = 2, 16, 2, 4, 8
    kc = torch.full((B, Tmax, H, D), float("nan"))
    vc = torch.full((B, Tmax, H, D), float("nan"))
    gcc = torch.full((B, Tmax, HQ), float("nan"))
    lens = torch.zeros(B, dtype=torch.int32)
    g_all = F.logsigmoid(torch.randn(B, 10, HQ))
    k_all, v_all = torch.randn(B, 10, H, D), torch.randn(B, 10, H, D)
    for t0, t1 in [(0, 4), (4, 5), (5, 10)]:
        naive.update_cache(kc, vc, gcc, k_all[:, t0:t1], v_all[:, t0:t1], g_all[:, t0:t1], lens)
        lens += t1 - t0
    torch.testing.assert_close(kc[:, :10], k_all)
    torch.testing.assert_close(gcc[:, :10], torch.cumsum(g_all, 1))
    q = torch.randn(B, 1, HQ, D)
    before = naive.decode_attn(q, kc, vc, gcc, cache_seqlens=lens)
    naive.rebase_gate_cache(gcc, lens)
    assert gcc[:, 9].abs().max() == 0
    torch.testing.assert_close(naive.decode_attn(q, kc, vc, gcc, cache_seqlens=lens), before)
