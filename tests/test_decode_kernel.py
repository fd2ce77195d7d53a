"""Triton decode kernels (kernels/attn/decoding.py) against the reference in kernels/attn/naive.py.

CPU: runs under TRITON_INTERPRET=1 on small caches (skipped when neither it nor CUDA is there).
GPU: the same checks on CUDA tensors, plus real shapes, determinism and a CUDA-graph replay.
Inputs are fresh random draws every run; each test prints its seed (shown by pytest on failure).
Caches are NaN beyond each sequence's length, and outputs / split workspaces start as NaN, so an
element read past a length or never written shows up as NaN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import interpret, needs_cuda, poisoned, rel_err
from kernels.attn import naive

pytestmark = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)
if interpret or torch.cuda.is_available():
    from kernels.attn import decoding

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"

# ||out - ref|| / ||ref|| against the fp64 reference on the same (rounded) inputs. bf16 / fp16: the
# output is rounded to the input type and the probabilities are rounded to it before the P @ V
# product (measured ~4e-3 for bf16, ~3e-4 for fp16); fp32: exp2 and summation order only.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}


def _seed() -> tuple[torch.Generator, int]:
    seed = torch.seed() % 2**31
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed), seed


def _cache(B, Tmax, HQ, H, D, dtype, lens, gated, gen, gate_shift=2.0):
    """K/V/gc caches with random valid entries and NaN beyond each length."""
    k = poisoned(B, Tmax, H, D, dtype=dtype)
    v = poisoned(B, Tmax, H, D, dtype=dtype)
    gc = poisoned(B, Tmax, HQ) if gated else None
    for b, n in enumerate(lens):
        k[b, :n] = torch.randn(n, H, D, generator=gen).to(dtype)
        v[b, :n] = torch.randn(n, H, D, generator=gen).to(dtype)
        if gated:
            g = F.logsigmoid(torch.randn(n, HQ, generator=gen) + gate_shift)
            # any offset: only differences count
            gc[b, :n] = torch.cumsum(g, 0) - 5.0 * torch.rand(1, generator=gen)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(k), to(v), to(gc)


def _reference(q, k, v, gc, lens, scale=None):
    gc64 = gc.double() if gc is not None else None
    return naive.decode_attn(q.double(), k.double(), v.double(), gc64, cache_seqlens=lens, scale=scale)


def _run(q, k, v, gc, lens, **kw):
    """Our kernel with a NaN-filled output and split workspace; a fused merge gets its own zeroed
    counters, which it must leave at 0 (the next launch, or a graph replay, relies on it)."""
    B, Tq, HQ, D = q.shape
    out = poisoned(B, Tq, HQ, D, dtype=q.dtype, device=q.device)
    splits = kw.get("splits")
    if splits and splits > 1:
        kw["workspace"] = (
            poisoned(B * Tq * HQ, splits, D, device=q.device),
            poisoned(B * Tq * HQ, splits, device=q.device),
        )
    counters = None
    if kw.get("merge") == "fused":
        counters = kw["counters"] = torch.zeros(B * k.shape[2] + 5, dtype=torch.int32, device=q.device)
    o = decoding._decode_attn(q, k, v, gc, lens, out=out, **kw)
    assert o.data_ptr() == out.data_ptr()
    if counters is not None:
        assert (counters == 0).all(), f"fused merge left counters {counters.tolist()}"
    return o


# (dtype, D, HQ, H, Tq, gated): every dtype, D in {64, 100, 128}, GQA 8:2 and 4:1, Tq in {1, 3, 16},
# tiles under and over 16 rows, gated and not
CASES = [
    (torch.bfloat16, 128, 8, 2, 1, True),
    (torch.bfloat16, 64, 4, 1, 3, True),
    (torch.float16, 100, 8, 2, 1, False),
    (torch.float32, 64, 8, 2, 16, True),
    (torch.bfloat16, 100, 4, 1, 16, False),
    (torch.float16, 128, 4, 1, 3, True),
    (torch.float32, 100, 8, 2, 3, False),
    (torch.bfloat16, 64, 8, 2, 16, True),
]


# NS = 1 writes the output directly; NS > 1 merges in a second kernel or in the last split program
SPLIT_MERGE = [(1, "kernel"), (7, "kernel"), (7, "fused")]


@pytest.mark.parametrize("dtype,D,HQ,H,Tq,gated", CASES)
@pytest.mark.parametrize("splits,merge", SPLIT_MERGE)
def test_decode_matches_reference(dtype, D, HQ, H, Tq, gated, splits, merge):
    gen, seed = _seed()
    B, Tmax = 3, 53
    mid = int(torch.randint(Tq + 1, Tmax, (1,), generator=gen))
    lens = [Tq, mid, Tmax]  # shortest possible (1 when Tq = 1), ragged, full cache
    k, v, gc = _cache(B, Tmax, HQ, H, D, dtype, lens, gated, gen)
    q = torch.randn(B, Tq, HQ, D, generator=gen).to(dtype).to(DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    # 7 slices of 53 keys in blocks of 16: some slices lie past a length (neutral partials)
    o = _run(q, k, v, gc, seqlens, splits=splits, block_s=16, merge=merge)
    assert o.dtype == dtype
    err = rel_err(o, _reference(q, k, v, gc, seqlens))
    assert err < TOL[dtype], f"rel err {err:.2e} seed={seed} lens={lens}"


@pytest.mark.parametrize(
    "dtype,use_dot", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float16, False), (torch.float32, True)]
)
@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_small_tile_paths_and_scale(dtype, use_dot, merge):
    # G * Tq = 4 rows: padded to a 16-row tl.dot tile (default) or broadcast-multiply-reduce
    gen, seed = _seed()
    B, Tmax, HQ, H, D, Tq = 2, 40, 8, 2, 64, 1
    lens = [Tmax, 1 + int(torch.randint(1, Tmax - 1, (1,), generator=gen))]
    k, v, gc = _cache(B, Tmax, HQ, H, D, dtype, lens, True, gen)
    q = torch.randn(B, Tq, HQ, D, generator=gen).to(dtype).to(DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    o = _run(q, k, v, gc, seqlens, splits=3, block_s=16, use_dot=use_dot, scale=0.3, merge=merge)
    err = rel_err(o, _reference(q, k, v, gc, seqlens, scale=0.3))
    assert err < TOL[dtype], f"rel err {err:.2e} seed={seed}"


def test_default_launch_and_dispatch_names():
    # the public signature with its own split choice
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 2, 37, 4, 2, 32
    lens = [Tmax, 9]
    k, v, gc = _cache(B, Tmax, HQ, H, D, torch.float32, lens, True, gen)
    q = torch.randn(B, 1, HQ, D, generator=gen).to(DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    o = decoding.decode_attn(q, k, v, gc, seqlens)
    assert rel_err(o, _reference(q, k, v, gc, seqlens)) < TOL[torch.float32], f"seed={seed}"
    o = decoding.decode_attn(q, k, v, None, cache_seqlens=seqlens)
    assert rel_err(o, _reference(q, k, v, None, seqlens)) < TOL[torch.float32], f"seed={seed}"


@pytest.mark.parametrize("Tq", [1, 3])
@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_fully_forgotten_history(Tq, merge):
    # gates of -1e4: every query sees only its own value
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 2, 45, 8, 2, 64
    lens = [Tmax, 20]
    k, v, _ = _cache(B, Tmax, HQ, H, D, torch.bfloat16, lens, False, gen)
    gc = poisoned(B, Tmax, HQ)
    for b, n in enumerate(lens):
        gc[b, :n] = torch.cumsum(torch.full((n, HQ), -1e4), 0)
    gc = gc.to(DEVICE)
    q = torch.randn(B, Tq, HQ, D, generator=gen).to(torch.bfloat16).to(DEVICE)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    o = _run(q, k, v, gc, seqlens, splits=3, block_s=16, merge=merge)
    own = torch.stack([v[b, n - Tq : n] for b, n in enumerate(lens)]).repeat_interleave(HQ // H, dim=2)
    assert rel_err(o, own) < 1e-6, f"seed={seed}"


@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_length_one(merge):
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 2, 16, 4, 1, 100
    k, v, gc = _cache(B, Tmax, HQ, H, D, torch.float16, [1, 1], True, gen)
    q = torch.randn(B, 1, HQ, D, generator=gen).half().to(DEVICE)
    seqlens = torch.ones(B, dtype=torch.int32, device=DEVICE)
    # every slice but the first is past the length: NS - 1 neutral partials
    o = _run(q, k, v, gc, seqlens, splits=4, block_s=16, merge=merge)
    assert rel_err(o, v[:, :1].expand(B, 1, HQ, D)) < 1e-6, f"seed={seed}"


def test_fused_merge_counters_reused_across_calls():
    # the cached per-device counters serve call after call (lengths and batch shapes change, as in a
    # replayed graph and across layers): each launch must leave them at 0 and the result exact
    gen, seed = _seed()
    for B, Tmax, lens in [(2, 60, [60, 7]), (3, 60, [1, 33, 59]), (2, 60, [17, 60])]:
        HQ, H, D = 8, 2, 32
        k, v, gc = _cache(B, Tmax, HQ, H, D, torch.float32, lens, True, gen)
        q = torch.randn(B, 1, HQ, D, generator=gen).to(DEVICE)
        seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        o = decoding._decode_attn(q, k, v, gc, seqlens, splits=5, block_s=16, merge="fused")
        assert rel_err(o, _reference(q, k, v, gc, seqlens)) < TOL[torch.float32], f"seed={seed} lens={lens}"
        counters = decoding.merge_counters(q.device, B * H)
        assert counters.numel() >= 1024 and (counters == 0).all()


@pytest.mark.parametrize("B,H,Tmax,ceil_ns,waves_ns", [
    (1, 8, 32768, 17, 16),  # 136 programs would spill 4 past one wave of 132 SMs
    (8, 8, 8192, 3, 2),  # 192 programs = 1.45 waves; 128 = one
    (32, 8, 4096, 1, 1),  # already more than one wave without splitting
    (1, 3, 256, 4, 4),  # capped at one split per 64-token block
])
def test_split_count_fills_whole_waves(monkeypatch, B, H, Tmax, ceil_ns, waves_ns):
    monkeypatch.setattr(decoding, "num_sms", lambda device: 132)
    assert decoding.num_splits(B, H, Tmax, 64, "cpu", 1, rule="ceil") == ceil_ns
    ns = decoding.num_splits(B, H, Tmax, 64, "cpu", 1, rule="waves")
    assert ns == waves_ns
    assert ns <= min(-(-Tmax // 64), decoding.MAX_SPLITS)
    with pytest.raises(ValueError, match="split rule"):
        decoding.num_splits(B, H, Tmax, 64, "cpu", 1, rule="round")


@pytest.mark.parametrize("B,D,gated,given,bs", [
    (32, 128, False, None, 32),  # one slice per (sequence, KV head), ungated: 32-key tiles
    (32, 128, True, None, 64),  # gated: slower in a layer stream with 32
    (1, 128, False, None, 64),  # split: 64-key tiles
    (32, 64, False, None, 64),  # measured at head dim 128 only
    (32, 128, False, 64, 64),  # an explicit block is kept
])
def test_single_slice_takes_32_key_tiles(monkeypatch, B, D, gated, given, bs):
    """The plan alone (no launch): with 132 SMs, 32 x 4096 at 8 KV heads is one slice per (sequence, head),
    1 x 4096 is split."""
    monkeypatch.setattr(decoding, "num_sms", lambda device: 132)
    q = torch.zeros(B, 1, 32, D)
    k = torch.zeros(B, 4096, 8, D)
    gc = torch.zeros(B, 4096, 32) if gated else None
    lens = torch.full((B,), 4096, dtype=torch.int32)
    plan = decoding._plan(q, k, k, gc, lens, None, given, None, None, None, None, None, None)
    assert plan.meta["BS"] == bs
    assert (plan.NS == 1) == (B == 32)


def test_merge_mode_is_checked():
    q = torch.zeros(1, 1, 2, 16, device=DEVICE)
    kv = torch.zeros(1, 8, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="merge"):
        decoding._decode_attn(q, kv, kv, None, torch.ones(1, dtype=torch.int32, device=DEVICE), merge="both")
    assert decoding.MERGE in decoding.MERGE_MODES


def test_cached_plans_still_check_and_follow_the_inputs():
    # the launch plan is cached per key of shapes, strides and dtypes: a repeat with new data and
    # lengths, the same shapes ungated, and a transposed query must each give the reference's result;
    # inputs that differ from a valid call only in what the checks look at must still be refused
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 2, 40, 8, 2, 32
    hits = decoding._SPLIT.hits
    for lens in ([40, 3], [17, 40], [40, 3]):
        k, v, gc = _cache(B, Tmax, HQ, H, D, torch.float32, lens, True, gen)
        q = torch.randn(B, 1, HQ, D, generator=gen).to(DEVICE)
        seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        for g in (gc, None):
            o = decoding.decode_attn(q, k, v, g, seqlens)
            assert rel_err(o, _reference(q, k, v, g, seqlens)) < TOL[torch.float32], f"seed={seed} lens={lens}"
    # compiled: the repeats launched the cached kernel directly (the interpreter always goes through Triton)
    assert decoding._SPLIT.hits == hits if interpret else decoding._SPLIT.hits >= hits + 4
    qt = torch.randn(B, HQ, 1, D, generator=gen).to(DEVICE).transpose(1, 2)  # not contiguous
    o = decoding.decode_attn(qt, k, v, gc, seqlens)
    assert rel_err(o, _reference(qt, k, v, gc, seqlens)) < TOL[torch.float32], f"seed={seed}"
    with pytest.raises(ValueError, match="gc_cache"):
        decoding.decode_attn(q, k, v, gc.double(), seqlens)
    with pytest.raises(ValueError, match="gc_cache"):
        decoding.decode_attn(q, k, v, gc.transpose(0, 1).contiguous().transpose(0, 1), seqlens)
    with pytest.raises(ValueError, match="cache_seqlens"):
        decoding.decode_attn(q, k, v, gc, seqlens[:1])
    with pytest.raises(ValueError, match="contiguous"):
        k_strided = torch.randn(B, Tmax, D, H, generator=gen).to(DEVICE).transpose(2, 3)
        decoding.decode_attn(q, k_strided, v, gc, seqlens)


def _update_inputs(B, Tn, H, HQ, D, gen, dtype=torch.float32):
    k = torch.randn(B, Tn, H, D, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(B, Tn, H, D, generator=gen).to(dtype).to(DEVICE)
    g = F.logsigmoid(torch.randn(B, Tn, HQ, generator=gen) + 2).to(DEVICE)
    return k, v, g


# (block_t, chunk, block_p): the default grid (one BT-token tile per program), small tiles whose
# earlier-token sums take several prefix tiles, multi-tile chunks, and one program per (b, KV head)
APPEND_GRIDS = [(None, None, None), (16, None, 16), (16, 48, 32), (16, 10**9, None)]


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("block_t,chunk,block_p", APPEND_GRIDS)
def test_update_cache_matches_reference(gated, block_t, chunk, block_p):
    gen, seed = _seed()
    B, Tmax, H, HQ, D = 3, 120, 2, 8, 48
    caches = [poisoned(B, Tmax, H, D, dtype=torch.bfloat16, device=DEVICE) for _ in range(2)]
    gcc = poisoned(B, Tmax, HQ, device=DEVICE) if gated else None
    ref = [c.clone() for c in caches] + [gcc.clone() if gated else None]
    lens = torch.zeros(B, dtype=torch.int32, device=DEVICE)
    # a 70-token prompt (several blocks of the running-sum scan), then ragged steps of 1 and 5
    grid = {"block_t": block_t, "chunk": chunk, "block_p": block_p}
    for step, Tn in enumerate([70, 1, 5, 1]):
        k, v, g = _update_inputs(B, Tn, H, HQ, D, gen, dtype=torch.bfloat16)
        decoding.append_kv(caches[0], caches[1], gcc, k, v, g if gated else None, lens, logits=False, **grid)
        naive.update_cache(ref[0], ref[1], ref[2], k, v, g if gated else None, lens)
        lens += Tn
        if step == 1:
            lens[1] += 3  # ragged: sequence 1 skips ahead (its gap stays NaN in both)
    for ours, theirs in zip(caches, ref[:2]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True, msg=f"seed={seed}")
    if gated:
        torch.testing.assert_close(gcc, ref[2], rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"seed={seed}")
        # the newest entry continues from a rebased cache the same way
        decoding.rebase_gate_cache(gcc, lens)
        naive.rebase_gate_cache(ref[2], lens)
        torch.testing.assert_close(gcc, ref[2], rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"seed={seed}")
        k, v, g = _update_inputs(B, 2, H, HQ, D, gen, dtype=torch.bfloat16)
        decoding.update_cache(caches[0], caches[1], gcc, k, v, g, lens)
        naive.update_cache(ref[0], ref[1], ref[2], k, v, g, lens)
        torch.testing.assert_close(gcc, ref[2], rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"seed={seed}")


def test_update_cache_never_writes_past_tmax():
    # no host check is possible: tokens past the end are dropped, memory after the cache untouched
    gen, seed = _seed()
    B, Tmax, H, D = 2, 10, 2, 16
    big = poisoned(B, Tmax + 4, H, D, device=DEVICE)
    k_cache, v_cache = big[:, :Tmax], poisoned(B, Tmax, H, D, device=DEVICE)
    k, v, _ = _update_inputs(B, 3, H, H, D, gen)
    lens = torch.tensor([8, 2], dtype=torch.int32, device=DEVICE)
    decoding.update_cache(k_cache, v_cache, None, k, v, None, lens)
    assert torch.isnan(big[:, Tmax:]).all()
    torch.testing.assert_close(k_cache[0, 8:], k[0, :2])
    torch.testing.assert_close(k_cache[1, 2:5], k[1])


@pytest.mark.parametrize("block_t,chunk,block_p", APPEND_GRIDS)
def test_append_gate_logits_token_blocks(block_t, chunk, block_p):
    # the fused forget gate (logits -> logsigmoid -> running sum) over a long prompt split across many
    # programs: k, v, f are strided views of one projection, GQA 9:3 (3 of 4 gate lanes used), one
    # empty and one non-empty sequence, then decode steps; the last prompt token of sequence 1 lands
    # past Tmax and must be dropped
    from kernels.gate import naive as gate_naive

    gen, seed = _seed()
    B, Tn, HQ, H, D, Tmax = 2, 83, 9, 3, 16, 96
    lens = torch.tensor([0, 14], dtype=torch.int32, device=DEVICE)
    ours = [poisoned(B, Tmax, H, D, device=DEVICE), poisoned(B, Tmax, H, D, device=DEVICE), poisoned(B, Tmax, HQ, device=DEVICE)]
    ref = [t.clone() for t in ours]
    seq1 = torch.randn(14, HQ, generator=gen).to(DEVICE)
    for c in (ours, ref):  # sequence 1 already holds 14 tokens with running sums around -40
        c[0][1, :14], c[1][1, :14], c[2][1, :14] = 0.5, -0.5, seq1 - 40.0
    grid = {"block_t": block_t, "chunk": chunk, "block_p": block_p}
    for step, n in enumerate([Tn, 1, 1]):
        proj = (torch.randn(B, n, 2 * H * D + HQ + 7, generator=gen) * 2 + 1).to(DEVICE)
        k = proj[..., : H * D].view(B, n, H, D)
        v = proj[..., H * D : 2 * H * D].view(B, n, H, D)
        f = proj[..., 2 * H * D : 2 * H * D + HQ]
        decoding.append_kv(*ours, k, v, f, lens, logits=True, **grid)
        if step == 0:  # the reference refuses to overflow: give it the tokens that fit
            for b in range(B):
                m = min(n, Tmax - int(lens[b]))
                gate_naive.append_kv(*[t[b : b + 1] for t in ref], k[b : b + 1, :m], v[b : b + 1, :m],
                                     f[b : b + 1, :m], lens[b : b + 1])
        else:
            gate_naive.append_kv(*ref, k, v, f, lens)
        lens += n
        lens[1] = min(int(lens[1]), Tmax - 1)  # sequence 1: full after the prompt, overwrite its last slot
    for name, a, b in zip("kvg", ours, ref):
        assert torch.equal(a.isnan(), b.isnan()), f"{name}: written elements differ, seed={seed}"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True, msg=f"{name} seed={seed}")
    assert torch.isnan(ours[2][0, Tn + 2 :]).all()


def test_rebase_keeps_outputs_and_centres_recent_entries():
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 3, 300, 4, 2, 32
    lens = [300, 1, 170]
    k, v, gc = _cache(B, Tmax, HQ, H, D, torch.float32, lens, True, gen)
    gc = gc - 1000.0  # far from zero, as after a long context
    seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(B, 1, HQ, D, generator=gen).to(DEVICE)
    ref_gc = gc.clone()
    naive.rebase_gate_cache(ref_gc, seqlens)
    decoding.rebase_gate_cache(gc, seqlens)
    torch.testing.assert_close(gc, ref_gc, rtol=0, atol=0, equal_nan=True, msg=f"seed={seed}")
    for b, n in enumerate(lens):
        assert (gc[b, n - 1] == 0).all()
    o = _run(q, k, v, gc, seqlens, splits=2, block_s=16)
    assert rel_err(o, _reference(q, k, v, ref_gc, seqlens)) < TOL[torch.float32], f"seed={seed}"


# ---------------------------------------------------------------------------------------- GPU only


@needs_cuda
@pytest.mark.parametrize(
    "B,T,D,Tq",
    [(1, 32768, 128, 1), (8, 8192, 128, 1), (3, 4096, 128, 16), (2, 2048, 256, 3), (4, 3000, 100, 1)],
)
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_gpu_real_shapes_ragged_deterministic(B, T, D, Tq, gated, merge):
    gen, seed = _seed()
    HQ, H = 32, 8
    lens = [T] + [int(x) for x in torch.randint(Tq, T, (B - 1,), generator=gen)]
    k, v, gc = _cache(B, T, HQ, H, D, torch.bfloat16, lens, gated, gen)
    q = torch.randn(B, Tq, HQ, D, generator=gen).bfloat16().cuda()
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    o = decoding._decode_attn(q, k, v, gc, seqlens, merge=merge)
    gcf = gc.float() if gated else None
    ref = naive.decode_attn(q.float(), k.float(), v.float(), gcf, cache_seqlens=seqlens)
    err = rel_err(o, ref)
    assert err < TOL[torch.bfloat16], f"rel err {err:.2e} seed={seed} lens={lens}"
    assert torch.equal(o, decoding._decode_attn(q, k, v, gc, seqlens, merge=merge)), "not deterministic"
    assert (decoding.merge_counters(q.device, B * H) == 0).all()


@needs_cuda
@pytest.mark.parametrize("splits,block_s", [(None, None), (64, 16), (128, 16)])
def test_gpu_fused_merge_no_race(splits, block_s):
    # many concurrent slices per (b, head) finishing in any order: every replay must give the same
    # bits (a partial read before it was visible would change them) and match the reference
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 4, 4096, 32, 8, 128
    lens = [Tmax, 1, 2049, 777]
    k, v, gc = _cache(B, Tmax, HQ, H, D, torch.bfloat16, lens, True, gen)
    q = torch.randn(B, 1, HQ, D, generator=gen).bfloat16().cuda()
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")

    def step():
        return decoding._decode_attn(q, k, v, gc, seqlens, merge="fused", splits=splits, block_s=block_s)

    first = step().clone()
    ref = naive.decode_attn(q.float(), k.float(), v.float(), gc, cache_seqlens=seqlens)
    assert rel_err(first, ref) < TOL[torch.bfloat16], f"seed={seed}"
    replay = _capture(step)
    for i in range(300):
        o = replay()
        if i % 50 == 0 or i == 299:
            assert torch.equal(o, first), f"replay {i} differs, seed={seed}"
    assert (decoding.merge_counters(q.device, B * H) == 0).all()


def _capture(fn):
    """fn captured in a CUDA graph (after warm-up calls on a side stream); returns replay -> output."""
    fn()  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


@needs_cuda
@pytest.mark.parametrize("merge", ["kernel", "fused"])
def test_cuda_graph_replay_as_lengths_grow(merge):
    gen, seed = _seed()
    B, Tmax, HQ, H, D = 2, 8192, 32, 8, 128
    k, v, gc = _cache(B, Tmax, HQ, H, D, torch.bfloat16, [Tmax, Tmax], True, gen)
    q = torch.randn(B, 1, HQ, D, generator=gen).bfloat16().cuda()
    seqlens = torch.tensor([1, 300], dtype=torch.int32, device="cuda")

    def step():
        return decoding._decode_attn(q, k, v, gc, seqlens, merge=merge)

    replay = _capture(step)
    for step_len in [0, 1, 200, 3000, 4000]:
        seqlens += torch.tensor([step_len, step_len // 2], dtype=torch.int32, device="cuda")  # in place
        q.copy_(torch.randn(B, 1, HQ, D, generator=gen).bfloat16())
        o_static = replay()
        eager = step()
        at = seqlens.tolist()
        assert torch.equal(o_static, eager), f"graph replay differs from eager at lengths {at} seed={seed}"
        ref = naive.decode_attn(q.float(), k.float(), v.float(), gc, cache_seqlens=seqlens)
        assert rel_err(o_static, ref) < TOL[torch.bfloat16], f"seed={seed}"


@needs_cuda
@pytest.mark.parametrize("chunk", [None, 10**9])
def test_gpu_append_long_prompt_token_blocks(chunk):
    # a 3000-token prompt (the running sums' start of late chunks takes several prefix tiles) into
    # an empty and a non-empty bf16 cache, gates as logits (the fused forget gate), then one decode step
    from kernels.gate import naive as gate_naive

    gen, seed = _seed()
    B, Tn, HQ, H, D, Tmax = 2, 3000, 9, 3, 64, 3200
    lens = torch.tensor([0, 100], dtype=torch.int32, device="cuda")
    ours = [poisoned(B, Tmax, H, D, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    ours.append(poisoned(B, Tmax, HQ, device="cuda"))
    for t in ours:
        t[1, :100] = 0.25
    ref = [t.clone() for t in ours]
    for n in (Tn, 1):
        proj = (torch.randn(B, n, 2 * H * D + HQ, generator=gen) * 2 + 1).bfloat16().cuda()
        k = proj[..., : H * D].view(B, n, H, D)
        v = proj[..., H * D : 2 * H * D].view(B, n, H, D)
        f = proj[..., 2 * H * D :]
        decoding.append_kv(*ours, k, v, f, lens, logits=True, chunk=chunk)
        gate_naive.append_kv(*ref, k, v, f, lens)
        lens += n
    assert torch.equal(ours[0].isnan(), ref[0].isnan()) and torch.equal(ours[2].isnan(), ref[2].isnan())
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=0, equal_nan=True, msg=f"seed={seed}")
    torch.testing.assert_close(ours[1], ref[1], rtol=0, atol=0, equal_nan=True, msg=f"seed={seed}")
    # running sums reach ~ -1e3 over 3000 tokens: fp32 summation order differs from the sequential sum
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-5, atol=1e-4, equal_nan=True, msg=f"seed={seed}")
