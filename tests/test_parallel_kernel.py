"""Triton parallel gated attention (kernels/attn/parallel.py) against the fp64 reference.

On a machine without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1, as in
CI) at small shapes; without CUDA and without the interpreter the tests are skipped. The tests marked
needs_cuda run real shapes on a GPU. Every test draws fresh random inputs (seed printed on failure)
and every new buffer of the kernel module is NaN-filled so that unwritten elements fail the check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import cu_seqlens_of, interpret, nan_buffers_fixture, needs_cuda, rel_err, triton_device
from kernels.attn import naive

DEVICE = triton_device()  # conftest: skips this module without CUDA or TRITON_INTERPRET=1

from kernels.attn import parallel  # noqa: E402  (after the skip: imports triton)

# ||out - ref|| / ||ref|| bounds against the fp64 reference, per input dtype
FWD_TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
BWD_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


nan_buffers = pytest.fixture(autouse=True)(nan_buffers_fixture)  # conftest: NaN-filled torch.empty


@pytest.fixture
def seed():
    s = torch.seed() % 2**31
    torch.manual_seed(s)
    return s


def _inputs(B, T, HQ, H, D, dtype, gate_shift=4.0, qk_gain=1.0, device=DEVICE):
    q = (torch.randn(B, T, HQ, D) * qk_gain).to(dtype).to(device)
    k = (torch.randn(B, T, H, D) * qk_gain).to(dtype).to(device)
    v = torch.randn(B, T, H, D).to(dtype).to(device)
    g = F.logsigmoid(torch.randn(B, T, HQ) + gate_shift).to(device)
    return q, k, v, g


def _reference(q, k, v, g=None, gc=None, cu_seqlens=None, do=None, scale=None):
    """o (and grads of q, k, v, g/gc when do is given) of naive.parallel_attn in fp64."""
    leaves = [t.detach().double().cpu().requires_grad_(do is not None) for t in (q, k, v)]
    gate = g if g is not None else gc
    gate64 = gate.detach().double().cpu().requires_grad_(do is not None) if gate is not None else None
    kw = dict(g=gate64) if g is not None else dict(gc=gate64)
    cu = cu_seqlens.cpu() if cu_seqlens is not None else None
    o, lse = naive.parallel_attn(*leaves, scale=scale, cu_seqlens=cu, return_lse=True, **kw)
    if do is None:
        return o, lse
    o.backward(do.double().cpu())
    grads = [t.grad for t in leaves] + [gate64.grad if gate64 is not None else None]
    return o, lse, grads


def _check(name, out, ref, tol, seed):
    err = rel_err(out, ref)
    assert err < tol, f"{name}: rel err {err:.3g} >= {tol} (seed {seed})"


def _run_fwd_bwd(q, k, v, g=None, gc=None, cu_seqlens=None):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    gate = g if g is not None else gc
    gate_leaf = gate.detach().clone().requires_grad_() if gate is not None else None
    kw = dict(g=gate_leaf) if g is not None else dict(gc=gate_leaf)
    o = parallel.parallel_attn(*leaves, cu_seqlens=cu_seqlens, **kw)
    do = torch.randn_like(o)
    o.backward(do)
    grads = [t.grad for t in leaves] + [gate_leaf.grad if gate_leaf is not None else None]
    return o, do, grads


def _check_fwd_bwd(q, k, v, g, seed, dtype, gc=None, cu_seqlens=None, names=("dq", "dk", "dv", "dg")):
    o, do, grads = _run_fwd_bwd(q, k, v, g, gc, cu_seqlens)
    o_ref, _, grads_ref = _reference(q, k, v, g, gc, cu_seqlens, do=do)
    _check("o", o, o_ref, FWD_TOL[dtype], seed)
    for name, got, want in zip(names, grads, grads_ref):
        if want is None:
            assert got is None, name
            continue
        _check(name, got, want, BWD_TOL[dtype], seed)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B,T,HQ,H,D",
    [(2, 63, 4, 4, 64), (1, 63, 8, 2, 100), (2, 37, 2, 1, 16), (1, 1, 2, 2, 32), (1, 70, 2, 2, 256)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gated", [True, False])
def test_forward(B, T, HQ, H, D, dtype, gated, seed):
    q, k, v, g = _inputs(B, T, HQ, H, D, dtype)
    g = g if gated else None
    o, lse = parallel.parallel_attn(q, k, v, g, return_lse=True)
    o_ref, lse_ref = _reference(q, k, v, g)
    assert o.dtype == dtype and o.shape == q.shape and lse.dtype == torch.float32
    _check("o", o, o_ref, FWD_TOL[dtype], seed)
    _check("lse", lse, lse_ref, 1e-4 if dtype == torch.float32 else 5e-3, seed)


def test_forward_fp16_gqa(seed):
    q, k, v, g = _inputs(2, 45, 8, 2, 96, torch.float16)
    _check("o", parallel.parallel_attn(q, k, v, g), _reference(q, k, v, g)[0], FWD_TOL[torch.float16], seed)


@pytest.mark.parametrize("Tq", [1, 5, 40])
def test_forward_continues_cache(Tq, seed):
    Tk = 57
    q, k, v, g = _inputs(2, Tk, 4, 2, 64, torch.float32)
    gc = torch.cumsum(g, dim=1) - 3.0  # only differences count
    o, lse = parallel.parallel_attn(q[:, -Tq:], k, v, gc=gc, return_lse=True)
    o_ref, lse_ref = _reference(q[:, -Tq:], k, v, gc=gc)
    _check("o", o, o_ref, FWD_TOL[torch.float32], seed)
    _check("lse", lse, lse_ref, 1e-4, seed)


def test_forward_extreme_gates_and_scores(seed):
    # gates -1e4: history forgotten, each query sees only its own value
    q, k, v, g = _inputs(1, 50, 4, 2, 32, torch.float32)
    o = parallel.parallel_attn(q, k, v, torch.full_like(g, -1e4))
    _check("o (forgotten)", o, v.repeat_interleave(2, dim=2), 1e-5, seed)
    # gates near 0 (no forgetting) and large |q.k| (scores in the hundreds)
    q, k, v, g = _inputs(1, 50, 4, 2, 32, torch.float32, gate_shift=20.0, qk_gain=6.0)
    _check("o (large scores)", parallel.parallel_attn(q, k, v, g), _reference(q, k, v, g)[0], 1e-4, seed)


# ---------------------------------------------------------------------------------------------
# forward + backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,T,HQ,H,D", [(2, 63, 4, 4, 64), (1, 63, 8, 2, 100), (1, 40, 2, 1, 256)])
@pytest.mark.parametrize("gated", [True, False])
def test_backward_fp32(B, T, HQ, H, D, gated, seed):
    q, k, v, g = _inputs(B, T, HQ, H, D, torch.float32)
    _check_fwd_bwd(q, k, v, g if gated else None, seed, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backward_half(dtype, seed):
    q, k, v, g = _inputs(2, 63, 8, 2, 64, dtype)
    _check_fwd_bwd(q, k, v, g, seed, dtype)


def test_backward_extreme_gates(seed):
    # very negative gates: each row attends to itself only, so dv = do and dq, dk, dg are ~1e-12
    # cancellation noise (no meaningful relative error): they must be finite and tiny
    q, k, v, g = _inputs(1, 40, 2, 1, 32, torch.float32, gate_shift=-30.0)
    o, do, (dq, dk, dv, dg) = _run_fwd_bwd(q, k, v, g)
    _check("o", o, v.repeat_interleave(2, dim=2), 1e-5, seed)
    # the running sums reach 40 x -30 = -1200, where fp32 spacing is 1.2e-4: the backward's recomputed
    # p = exp(s - lse) on the diagonal carries that much relative error (measured 3.5e-5 on the H100)
    _check("dv", dv, do.view(1, 40, 1, 2, 32).sum(3), BWD_TOL[torch.float32], seed)
    for name, t in (("dq", dq), ("dk", dk), ("dg", dg)):
        assert torch.isfinite(t).all() and t.abs().max() < 1e-4, name
    q, k, v, g = _inputs(1, 40, 2, 1, 32, torch.float32, gate_shift=20.0, qk_gain=4.0)
    _check_fwd_bwd(q, k, v, g, seed, torch.float32)


def test_varlen_with_length_one(seed):
    lens = [7, 1, 40, 12]
    cu = cu_seqlens_of(lens, DEVICE)
    q, k, v, g = _inputs(1, sum(lens), 4, 2, 64, torch.float32)
    _check_fwd_bwd(q, k, v, g, seed, torch.float32, cu_seqlens=cu)
    # a varlen call must equal separate calls per sequence (and not leak across boundaries)
    o = parallel.parallel_attn(q, k, v, g, cu_seqlens=cu)
    for bos, eos in zip(cu[:-1].tolist(), cu[1:].tolist()):
        sep = parallel.parallel_attn(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], g[:, bos:eos])
        _check(f"seq {bos}:{eos}", o[:, bos:eos], sep, 1e-5, seed)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("gated", [True, False])
def test_forward_tma_matches_pointer_loads(varlen, gated, seed, monkeypatch):
    """bf16 at a power-of-two head dim takes the TMA descriptor loads (which read past a sequence's end
    into the next one); the pointer loads must give the same output, and the rows of the neighbouring
    sequence (set to inf) must not reach it."""
    monkeypatch.setattr(parallel, "_HOPPER", False)  # the tl kernel's variants (sm_90 would take the Gluon one)
    B, T = (1, 70) if varlen else (2, 45)
    q, k, v, g = _inputs(B, T, 4, 2, 64, torch.bfloat16)
    cu = torch.tensor([0, 33, 70], dtype=torch.int32, device=DEVICE) if varlen else None
    taken = []
    real = parallel._tile_descriptors
    monkeypatch.setattr(parallel, "_tile_descriptors", lambda *a: taken.append(real(*a)[0] is not None) or real(*a))
    gate = g if gated else None
    o_tma = parallel.parallel_attn(q, k, v, gate, cu_seqlens=cu)
    monkeypatch.setattr(parallel, "_TMA", False)
    o_ptr = parallel.parallel_attn(q, k, v, gate, cu_seqlens=cu)
    assert taken == [True, False]
    _check("tma vs pointer", o_tma, o_ptr, 1e-2, seed)
    _check("o", o_tma, _reference(q, k, v, gate, cu_seqlens=cu)[0], FWD_TOL[torch.bfloat16], seed)
    # poison what follows the first sequence: its output must not change
    n0 = 33 if varlen else T
    k2, v2 = k.clone().view(-1, 2, 64), v.clone().view(-1, 2, 64)
    k2[n0:], v2[n0:] = float("inf"), float("inf")
    monkeypatch.setattr(parallel, "_TMA", True)
    o_poison = parallel.parallel_attn(q, k2.view_as(k), v2.view_as(v), gate, cu_seqlens=cu)
    first = o_poison[:, :n0] if varlen else o_poison[:1]
    want = o_tma[:, :n0] if varlen else o_tma[:1]
    assert torch.equal(first, want)


@pytest.mark.parametrize("varlen", [False, True])
def test_forward_gate_row_layouts(varlen, seed, monkeypatch):
    """The per-head gate rows (mode 1) give the output of the [B, T, HQ] loads (mode 0), at a Tk that is
    not a multiple of 4 (padded rows) and with queries continuing a cache."""
    B, T = (1, 70) if varlen else (2, 45)
    q, k, v, g = _inputs(B, T, 4, 2, 64, torch.bfloat16)
    cu = torch.tensor([0, 33, 70], dtype=torch.int32, device=DEVICE) if varlen else None
    monkeypatch.setattr(parallel, "_GATE_T", 0)
    base = parallel.parallel_attn(q, k, v, g, cu_seqlens=cu)
    gc = torch.cumsum(g, dim=1)
    base_cont = parallel.parallel_attn(q[:, -13:], k, v, gc=gc) if not varlen else None
    monkeypatch.setattr(parallel, "_GATE_T", 1)
    _check("mode 1", parallel.parallel_attn(q, k, v, g, cu_seqlens=cu), base, 1e-2, seed)
    _check("o", parallel.parallel_attn(q, k, v, g, cu_seqlens=cu), _reference(q, k, v, g, cu_seqlens=cu)[0],
           FWD_TOL[torch.bfloat16], seed)
    if not varlen:
        _check("mode 1, Tq < Tk", parallel.parallel_attn(q[:, -13:], k, v, gc=gc), base_cont, 1e-2, seed)


@pytest.mark.parametrize("group", [0, 1, 3, 8])
@pytest.mark.parametrize("varlen", [False, True])
def test_forward_tile_groups(group, varlen, seed, monkeypatch):
    """The forward's programs taken GROUP (batch x head)s at a time: every tile of every head is computed
    once (NaN-poisoned output), with a smaller last group (12 or 4 heads in groups of 3 and 8)."""
    monkeypatch.setattr(parallel, "_HOPPER", False)  # the tl kernel (sm_90 would take the Gluon one)
    monkeypatch.setattr(parallel, "_TILE_GROUP", group)
    lens = [60, 1, 89]
    B, T = (1, sum(lens)) if varlen else (3, 150)
    q, k, v, g = _inputs(B, T, 4, 2, 32, torch.float32)
    cu = torch.tensor([0, 60, 61, 150], dtype=torch.int32, device=DEVICE) if varlen else None
    _check("o", parallel.parallel_attn(q, k, v, g, cu_seqlens=cu), _reference(q, k, v, g, cu_seqlens=cu)[0],
           FWD_TOL[torch.float32], seed)


def test_forward_block_kinds(seed, monkeypatch):
    """Gated 16-bit dense forwards with Tk >= _LONG_TK take the "fwd_long" blocks (here with the
    threshold lowered to 32 keys), packed, fp32, short and ungated ones do not; all match the reference."""
    monkeypatch.setattr(parallel, "_HOPPER", False)  # the tl kernel's variants (sm_90 would take the Gluon one)
    monkeypatch.setattr(parallel, "_LONG_TK", 32)
    kinds = []
    real = parallel._blocks
    monkeypatch.setattr(parallel, "_blocks", lambda kind, BK: kinds.append(kind) or real(kind, BK))
    cu = torch.tensor([0, 20, 45], dtype=torch.int32, device=DEVICE)
    cases = [  # (dtype, gated, T, packed, expected kind)
        (torch.bfloat16, True, 45, False, "fwd_long"),
        (torch.bfloat16, True, 31, False, "fwd"),
        (torch.bfloat16, True, 45, True, "fwd"),
        (torch.bfloat16, False, 45, False, "fwd_ungated"),
        (torch.float32, True, 45, False, "fwd"),
    ]
    for dtype, gated, T, packed, want in cases:
        q, k, v, g = _inputs(1 if packed else 2, T, 4, 2, 64, dtype)
        gate = g if gated else None
        o = parallel.parallel_attn(q, k, v, gate, cu_seqlens=cu if packed else None)
        assert kinds[-1] == want, (dtype, gated, T, packed)
        _check(f"o {want}", o, _reference(q, k, v, gate, cu_seqlens=cu if packed else None)[0], FWD_TOL[dtype], seed)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("gated", [True, False])
def test_backward_tma_matches_pointer_loads(varlen, gated, seed, monkeypatch):
    """bf16 at a power-of-two head dim: the backward loads q/do (dk/dv kernel) and k/v (dq kernel)
    through TMA descriptors, which read past a sequence's end. The gradients must equal those of the
    pointer loads and the reference, and the first sequence's gradients must not change when
    everything of the next sequence (q, k, v, do) is inf."""
    monkeypatch.setattr(parallel, "_HOPPER", False)  # the tl kernel's variants (sm_90 would take the Gluon one)
    B, T = (1, 70) if varlen else (2, 45)
    q, k, v, g = _inputs(B, T, 4, 2, 64, torch.bfloat16)
    cu = torch.tensor([0, 33, 70], dtype=torch.int32, device=DEVICE) if varlen else None
    gate = g if gated else None
    taken = []
    real = parallel._tile_descriptors
    monkeypatch.setattr(parallel, "_tile_descriptors", lambda *a: taken.append(real(*a)[0] is not None) or real(*a))
    o, do, grads_tma = _run_fwd_bwd(q, k, v, gate, cu_seqlens=cu)
    assert taken == [True, True, True]  # forward k/v, dk/dv q/do, dq k/v
    monkeypatch.setattr(parallel, "_TMA", False)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v) + ((g,) if gated else ())]
    parallel.parallel_attn(*leaves[:3], leaves[3] if gated else None, cu_seqlens=cu).backward(do)
    _, _, grads_ref = _reference(q, k, v, gate, cu_seqlens=cu, do=do)
    for name, got, ptr, want in zip(("dq", "dk", "dv", "dg"), grads_tma, [t.grad for t in leaves] + [None], grads_ref):
        if want is None:
            continue
        if name != "dg" or gated:
            _check(f"{name} tma vs pointer", got, ptr if ptr is not None else leaves[3].grad, 1e-2, seed)
        _check(name, got, want, BWD_TOL[torch.bfloat16], seed)
    # poison what follows the first sequence: its gradients must not change
    monkeypatch.setattr(parallel, "_TMA", True)
    n0 = 33 if varlen else T
    poisoned = []
    for t in (q, k, v, do):
        t2 = t.clone().view(B * T, -1)
        t2[n0:] = float("inf")
        poisoned.append(t2.view_as(t))
    leaves = [t.detach().clone().requires_grad_() for t in poisoned[:3]]
    gate_leaf = g.detach().clone().requires_grad_() if gated else None
    parallel.parallel_attn(*leaves, gate_leaf, cu_seqlens=cu).backward(poisoned[3])
    got = [t.grad for t in leaves] + ([gate_leaf.grad] if gated else [])
    # (packed dg is left out: the host's reverse running sum spans the packed row, so the NaN gradients
    # of the poisoned sequence reach the others' dg there, whatever the kernels do)
    names = ("dq", "dk", "dv") if varlen else ("dq", "dk", "dv", "dg")
    for name, a, b in zip(names, got, grads_tma):
        first = (lambda t: t[:, :n0]) if varlen else (lambda t: t[:1])
        assert torch.equal(first(a), first(b)), name


def test_backward_continues_cache(seed):
    Tk, Tq = 57, 20
    q, k, v, g = _inputs(2, Tk, 4, 2, 32, torch.float32)
    gc = torch.cumsum(g, dim=1)
    _check_fwd_bwd(q[:, -Tq:], k, v, None, seed, torch.float32, gc=gc, names=("dq", "dk", "dv", "dgc"))


def test_backward_deterministic(seed):
    q, k, v, g = _inputs(1, 63, 8, 2, 64, torch.bfloat16)
    _, do, grads = _run_fwd_bwd(q, k, v, g)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, g)]
    parallel.parallel_attn(*leaves).backward(do)
    for a, b in zip(grads, [t.grad for t in leaves]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repeated_calls_take_the_launch_fast_path(dtype, seed):
    """Calls of one shape with fresh values: each matches the reference (the second and third launch the
    kernels through LaunchCache's fast path on a GPU; the interpreter always takes Triton's), also with
    lse returned beside o and the gradient through o."""
    kernels = [parallel._PREPROCESS, parallel._DKDV, parallel._DQ] + ([parallel._FWD] if dtype == torch.float32 else [])
    hits = [c.hits for c in kernels]
    for call in range(3):
        q, k, v, g = _inputs(1, 45, 4, 2, 32, dtype)
        if call < 2:
            _check_fwd_bwd(q, k, v, g, seed, dtype)
            continue
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, g)]
        o, lse = parallel.parallel_attn(*leaves, return_lse=True)
        assert not lse.requires_grad
        do = torch.randn_like(o)
        o.backward(do)
        o_ref, lse_ref, grads_ref = _reference(q, k, v, g, do=do)
        _check("o", o, o_ref, FWD_TOL[dtype], seed)
        _check("lse", lse, lse_ref, FWD_TOL[torch.float32], seed)
        for name, t, want in zip(("dq", "dk", "dv", "dg"), leaves, grads_ref):
            _check(name, t.grad, want, BWD_TOL[dtype], seed)
    for cache, before in zip(kernels, hits):
        assert cache.hits == before if interpret else cache.hits >= before + 2, cache.kernel.fn.__name__


def test_rejects_bad_arguments():
    q, k, v, g = _inputs(1, 8, 2, 1, 16, torch.float32)
    with pytest.raises(ValueError):
        parallel.parallel_attn(q[:, -3:], k, v, g[:, -3:])
    with pytest.raises(ValueError):
        parallel.parallel_attn(q, k, v, g, gc=torch.cumsum(g, 1))


# ---------------------------------------------------------------------------------------------
# GPU: real shapes
# ---------------------------------------------------------------------------------------------


def _check_edge_rows(o, q, k, v, gc, seed, n=64):
    """bf16 output o [1, T, HQ, D] of a long sequence against naive.parallel_attn on its first and last n
    query rows only (the whole reference would not fit at such T)."""
    T = q.shape[1]
    for rows in (slice(0, n), slice(T - n, T)):
        tq = rows.stop
        ref = naive.parallel_attn(q[:, rows.start : tq], k[:, :tq], v[:, :tq], gc=gc[:, :tq])
        _check(f"rows {rows}", o[:, rows], ref, FWD_TOL[torch.bfloat16], seed)


@needs_cuda
@pytest.mark.parametrize(
    "B,T,HQ,H,D,dtype",
    [
        (2, 2048, 16, 16, 128, torch.bfloat16),
        (1, 4096, 32, 8, 128, torch.bfloat16),
        (4, 1000, 8, 8, 64, torch.bfloat16),
        (1, 777, 4, 2, 256, torch.bfloat16),
        (2, 1500, 8, 2, 96, torch.float16),
        (1, 300, 4, 2, 100, torch.float32),
    ],
)
def test_gpu_real_shapes(B, T, HQ, H, D, dtype, seed):
    q, k, v, g = _inputs(B, T, HQ, H, D, dtype)
    _check_fwd_bwd(q, k, v, g, seed, dtype)


@needs_cuda
def test_gpu_long_sequence_blocks(seed, monkeypatch):
    """Tk >= _LONG_TK (not a block multiple): the "fwd_long" blocks give the reference's output and the
    short-sequence blocks' (fp64 reference on the first 64 and the last 64 queries)."""
    T, HQ, H, D = parallel._LONG_TK + 77, 4, 2, 128
    q, k, v, g = _inputs(1, T, HQ, H, D, torch.bfloat16)
    o = parallel.parallel_attn(q, k, v, g)
    monkeypatch.setattr(parallel, "_LONG_TK", 2 * T)
    _check("long vs short blocks", o, parallel.parallel_attn(q, k, v, g), 1e-2, seed)
    gc = torch.cumsum(g.double(), 1).float()
    _check_edge_rows(o, q.double(), k.double(), v.double(), gc.double(), seed)


@needs_cuda
def test_gpu_varlen_and_cache(seed):
    lens = [1, 300, 1024, 77, 2000]
    cu = cu_seqlens_of(lens, DEVICE)
    q, k, v, g = _inputs(1, sum(lens), 8, 2, 128, torch.bfloat16)
    _check_fwd_bwd(q, k, v, g, seed, torch.bfloat16, cu_seqlens=cu)
    q, k, v, g = _inputs(2, 3000, 8, 2, 128, torch.bfloat16)
    gc = torch.cumsum(g, 1)
    _check_fwd_bwd(q[:, -700:], k, v, None, seed, torch.bfloat16, gc=gc, names=("dq", "dk", "dv", "dgc"))


@needs_cuda
def test_gpu_no_int32_overflow(seed):
    # T * HQ * D = 2^31: the last query rows' offsets do not fit in int32 (as T = 128k with 64
    # heads of 256 would, at an eighth of the FLOPs)
    T, HQ, H, D = 16384, 512, 8, 256
    q = torch.randn(1, T, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(1, T, HQ, device="cuda") + 4)
    o = parallel.parallel_attn(q, k, v, g)
    assert not torch.isnan(o).any()
    gc = torch.cumsum(g.double(), 1).float()
    hq = slice(HQ - HQ // H, HQ)  # the last kv group: the largest offsets
    _check_edge_rows(o[:, :, hq], q[:, :, hq], k[:, :, H - 1 :], v[:, :, H - 1 :], gc[:, :, hq], seed)
