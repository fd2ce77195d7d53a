"""The Gluon (sm_90) forward of the parallel attention, kernels/attn/parallel_fwd_hopper.py (host side:
parallel_hopper.py).

Gluon has no CPU interpreter, so on the CPU the kernel is compiled for sm_90 (the whole pipeline down
to PTX) and the structure that makes it fast is checked in the TTGIR; on an sm_90 GPU its outputs are
compared with the fp64 reference on fresh random inputs, NaN-poisoned outputs.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

from conftest import RTOL, assert_same_descriptor, cu_seqlens_of, nan_buffers_fixture, rel_err
from kernels.attn import naive

triton = pytest.importorskip("triton")

from kernels.attn import parallel, parallel_hopper  # noqa: E402
from kernels.attn.gate_scan import gate_scan as kernels_gate_scan  # noqa: E402

nan_buffers = pytest.fixture(autouse=True)(nan_buffers_fixture)  # conftest: NaN-filled torch.empty


# ----------------------------------------------------------------------------------------------
# CPU: compile for sm_90
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)  # the structure and the SASS tests read the same compile
def _compile_sm90(D: int, gated: bool, varlen: bool = False, half: bool = True) -> dict:
    """TTGIR, PTX and shared memory of the kernel compiled for sm_90, in a child process without
    TRITON_INTERPRET: under the interpreter (as the CPU suite runs) Triton's own jit functions that Gluon
    calls (gl.max, gl.sum) are interpreter objects that the compiler refuses; a warm Triton cache hid
    that until a cold-cache run."""
    code = ("import base64, json, sys; from kernels.attn.parallel_hopper import compile_sm90; "
            "k = compile_sm90(int(sys.argv[1]), *(a == '1' for a in sys.argv[2:])); "
            "json.dump(dict(ttgir=k.asm['ttgir'], ptx=k.asm['ptx'], shared=k.metadata.shared, "
            "cubin=base64.b64encode(k.asm['cubin']).decode()), sys.stdout)")
    env = {n: v for n, v in os.environ.items() if n != "TRITON_INTERPRET"}
    flags = [str(int(x)) for x in (gated, varlen, half)]
    out = subprocess.run([sys.executable, "-c", code, str(D), *flags], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


# (D, gated, packed batch, half last block)
VARIANTS = [(64, True, False, True), (64, False, False, True), (128, True, False, True), (128, False, False, True),
            (128, True, True, True), (64, False, True, True), (64, True, False, False), (128, True, False, False)]


@pytest.mark.parametrize("D,gated,varlen,half", VARIANTS)
def test_compiles_for_sm90_warp_specialised(D, gated, varlen, half):
    kernel = _compile_sm90(D, gated, varlen, half)
    ttgir, ptx = kernel["ttgir"], kernel["ptx"]
    assert ".target sm_90a" in ptx
    assert kernel["shared"] <= 227 * 1024
    # the producer as the default partition and two consumer warpgroups as the workers, registers moved
    # from the producer to the consumers
    assert "ttg.warp_specialize" in ttgir and "requestedRegisters = array<i32: 240, 240>" in ttgir
    assert "setmaxnreg.dec.sync.aligned.u32 \t24" in ptx and "setmaxnreg.inc.sync.aligned.u32 \t240" in ptx
    # S(j) and PV(j-1) issued asynchronously, S(j) waited with the PV still in flight
    assert ttgir.count("isAsync = true") >= 6
    assert "pendings = 1" in ttgir
    assert "async_tma_copy_global_to_local" in ttgir and "async_tma_copy_local_to_global" in ttgir
    # the producer loads Q (two halves), K, V and, gated, the key blocks' gate sums
    assert ttgir.count("async_tma_copy_global_to_local") == 4 + gated
    # ping-pong: the consumers take turns through two more mbarriers (17 waits and arrivals without them)
    assert ptx.count("mbarrier.try_wait") >= 25 and ptx.count("mbarrier.arrive") >= 25


def _sass(cubin: bytes) -> str:
    """The SASS of a (base64) cubin, from Triton's bundled nvdisasm."""
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(nvdisasm):
        pytest.skip("Triton ships no nvdisasm here")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(base64.b64decode(cubin))
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("D,gated,varlen,half", [v for v in VARIANTS if not v[2]])
def test_dense_variants_do_not_spill(D, gated, varlen, half):
    """No local-memory traffic in the dense variants. With the first consumer as Gluon's default partition,
    ptxas spilled a register of the kernel's prologue there once the half last block was in (35 local
    loads, D=64 and 128; the packed variants still have up to two)."""
    sass = _sass(_compile_sm90(D, gated, varlen, half)["cubin"])
    assert "LDL" not in sass and "STL" not in sass


def _sass_events(cubin: bytes) -> list[str]:
    """The SASS of a cubin as a list of events: 'W1' / 'W0' for the warpgroup MMA waits (one group / none
    left in flight), 'X' for an exp2."""
    sass = _sass(cubin)
    events = []
    for line in sass.splitlines():
        if "WARPGROUP.DEPBAR.LE gsb0" in line:
            events.append("W" + line.split(",")[-1].strip(" ;")[-1])
        elif "MUFU.EX2" in line:
            events.append("X")
    return events


@pytest.mark.parametrize("D,gated,varlen,half", VARIANTS)
def test_softmax_runs_while_the_pv_product_is_in_flight(D, gated, varlen, half):
    """In every step the exponentials of a thread's scores sit between the wait for S(j) (one group left:
    PV(j-1)) and the wait for PV(j) in the SASS: 64 per full key block, 32 in the one half-block step of
    each consumer (a warpgroup's last block when its rows precede the block's middle). ptxas otherwise
    hoists the second wait above them (the kernel's shared-memory store of the row sums prevents it;
    without it this fails)."""
    events = _sass_events(_compile_sm90(D, gated, varlen, half)["cubin"].encode())
    counts = []
    for i in [i for i, e in enumerate(events) if e == "W1"]:
        n_exp = 0
        for e in events[i + 1:]:
            if e == "W0":
                break
            n_exp += e == "X"
        counts.append(n_exp)
    assert len(counts) >= 4, "no step waits for S with the PV product in flight"
    short = [n for n in counts if n < 64]
    assert len(short) <= (2 if half else 0) and all(n >= 32 for n in short), f"exp2 between the waits: {counts}"


@pytest.mark.parametrize("dtype,shape,block", [(torch.bfloat16, [2, 300, 512], [1, 64, 128]),
                                               (torch.float16, [1, 77, 128], [1, 128, 64]),
                                               (torch.float32, [8, 1040], [1, 128])])
def test_descriptors_equal_tritons_checked_ones(dtype, shape, block):
    """The launch's TMA descriptors, built without TensorDescriptor's checks, equal the checked ones of
    TensorDescriptor.from_tensor field by field."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    x = torch.zeros(math.prod(shape), dtype=dtype)
    fast = parallel_hopper._desc(x, shape, block)
    checked = TensorDescriptor.from_tensor(x.view(shape), block, parallel_hopper._smem_layout(tuple(block), dtype))
    assert_same_descriptor(fast, checked)


@pytest.mark.parametrize("lens,HQ,n_prog,group", [((3000, 17, 5000, 1, 2048, 4000, 2318), 16, 132, 8),
                                                   ((1, 127, 128, 129, 0, 300), 4, 5, 3), ((5,), 2, 132, 8)])
def test_varlen_schedule_runs_every_chunk_once_balanced(lens, HQ, n_prog, group):
    """A packed batch's schedule and chunk table: the chunk table lists each sequence's BM-row chunks
    (sequence start, length, first row), every (chunk, head) tile runs exactly once, each program's tiles
    in the grouped order (groups of heads, costliest chunks first), and the programs' work within 10% of
    the mean where there are many tiles per program."""
    BM = BN = 128
    starts = [sum(lens[:i]) for i in range(len(lens))]
    want = [(b, n, t0) for b, n in zip(starts, lens) for t0 in range(0, n, BM)]
    n_prog = min(n_prog, len(want) * HQ)
    sched, tiles = parallel_hopper._varlen_tiles(lens, HQ, BM, BN, n_prog, group, "cpu")
    assert [tuple(t) for t in tiles.view(-1, 3).tolist()] == want
    sched = sched.tolist()
    bounds, ids = sched[:n_prog + 1], sched[n_prog + 1:]
    assert bounds[0] == n_prog + 1 and bounds[-1] == len(sched) and bounds == sorted(bounds)
    assert sorted(ids) == list(range(len(want) * HQ))
    cost = [-(-min(t0 + BM, n) // BN) + 1 for _, n, t0 in want]

    def rank(i):  # position of tile i in the grouped sequence
        i_c, hq = divmod(i, HQ)
        return (hq // group, -cost[i_c], -i_c, hq)

    loads = []
    for p in range(n_prog):
        tiles_p = sched[bounds[p]:bounds[p + 1]]
        assert [rank(i) for i in tiles_p] == sorted(rank(i) for i in tiles_p)
        loads.append(sum(cost[i // HQ] for i in tiles_p))
    if len(ids) >= 8 * n_prog:
        assert max(loads) <= 1.1 * sum(loads) / n_prog


# ----------------------------------------------------------------------------------------------
# GPU (sm_90): outputs against the reference
# ----------------------------------------------------------------------------------------------

_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
gpu = pytest.mark.skipif(not _SM90, reason="needs an sm_90 GPU")

# (B, TQ, TK, HQ, H, D): T not a block multiple, GQA, continuing a cache (TQ < TK, tile offsets not
# block aligned), one query, more query tiles than key blocks
SHAPES = [
    (2, 300, 300, 4, 2, 128),
    (1, 1000, 1000, 2, 2, 64),
    (2, 77, 333, 8, 2, 128),
    (1, 1, 129, 2, 1, 64),
    (3, 256, 256, 2, 2, 128),
    (1, 130, 1170, 4, 4, 64),
]


def _inputs(B, TQ, TK, HQ, H, D, dtype, gate_shift=3.0):
    q = torch.randn(B, TQ, HQ, D, device="cuda").to(dtype)
    k = torch.randn(B, TK, H, D, device="cuda").to(dtype)
    v = torch.randn(B, TK, H, D, device="cuda").to(dtype)
    gc = torch.cumsum(F.logsigmoid(torch.randn(B, TK, HQ, device="cuda") + gate_shift), 1)
    return q, k, v, gc


@gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("half", [True, False])
def test_matches_reference(shape, dtype, gated, half, monkeypatch):
    """Against the fp64 reference, with and without the half last block (the kernel's HALF: up to
    _HALF_MAX_TK keys)."""
    monkeypatch.setattr(parallel_hopper, "_HALF_MAX_TK", 10**9 if half else 0)
    B, TQ, TK, HQ, H, D = shape
    q, k, v, gc = _inputs(B, TQ, TK, HQ, H, D, dtype)
    assert parallel_hopper.supported(q, k, None)
    gc = gc if gated else None
    o, lse = parallel.parallel_attn(q, k, v, gc=gc, return_lse=True)
    ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(),
                                         gc=gc.double() if gated else None, return_lse=True)
    assert rel_err(o, ref_o) < RTOL[dtype]
    assert rel_err(lse, ref_lse) < 1e-5


@gpu
@pytest.mark.parametrize("case", ["forgotten", "near_one", "large_scores"])
def test_extreme_gates_and_scores(case):
    B, T, HQ, H, D = 2, 400, 4, 2, 128
    q, k, v, _ = _inputs(B, T, T, HQ, H, D, torch.bfloat16)
    g = torch.zeros(B, T, HQ, device="cuda")
    if case == "forgotten":  # history forgotten to exp(-1e4) at a few positions, inside tiles too
        g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 3)
        g[:, [5, 131, 200, 399]] = -1e4
    elif case == "near_one":
        g = -1e-6 * torch.rand(B, T, HQ, device="cuda")
    else:  # |q.k| in the hundreds
        q, k = q * 6, k * 6
        g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 3)
    o, lse = parallel.parallel_attn(q, k, v, g, return_lse=True)
    ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(), g.double(), return_lse=True)
    assert rel_err(o, ref_o) < RTOL[torch.bfloat16]
    # fp32 running sums reach 4e4 in the forgotten case: their own rounding (2^-24 relative, ~2e-3 in
    # base 2 at that size) bounds the scores' accuracy, for this kernel and the tl one alike
    assert rel_err(lse, ref_lse) < (1e-3 if case == "forgotten" else 1e-5)


@gpu
@pytest.mark.parametrize("programs", [1, 3, 7])
@pytest.mark.parametrize("blocks", [(128, 128, 2, 2), (128, 128, 3, 1), (128, 128, 2, 1)])
@pytest.mark.parametrize("gated", [True, False])
def test_persistent_programs_walk_many_tiles(programs, blocks, gated):
    """Few programs for many tiles of different lengths (causal tiles, TQ < TK): the rings' positions and
    the query buffers' phases carry from tile to tile; every output element is written (NaN-poisoned)."""
    B, TQ, TK, HQ, H, D = 2, 333, 600, 4, 2, 128
    q, k, v, gc = _inputs(B, TQ, TK, HQ, H, D, torch.bfloat16)
    gc = gc if gated else None
    gct = parallel._gate_rows(gc, 1, None)[0]
    o = torch.full_like(q, float("nan"))
    lse = torch.full((B, TQ, HQ), float("nan"), device="cuda")
    parallel_hopper.parallel_attn_fwd_hopper(q, k, v, gct, D ** -0.5, o, lse, blocks=blocks, programs=programs)
    ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(),
                                         gc=gc.double() if gated else None, return_lse=True)
    assert rel_err(o, ref_o) < RTOL[torch.bfloat16]
    assert rel_err(lse, ref_lse) < 1e-5


@gpu
@pytest.mark.parametrize("gated", [True, False])
def test_prepared_launch_replays_read_the_current_values(gated):
    """A dense call at addresses seen before replays its prepared launch (no new plan) and reads the values
    that are there now: new inputs written in place, the outputs NaN-poisoned before each call."""
    B, T, HQ, H, D = 2, 300, 4, 2, 128
    q, k, v, gc = _inputs(B, T, T, HQ, H, D, torch.bfloat16)
    gc = gc if gated else None
    gct = parallel._gate_rows(gc, 1, None)[0]
    o = torch.empty_like(q)
    lse = torch.empty(B, T, HQ, device="cuda")
    plans = None
    for call in range(3):
        if call:
            for x, fresh in zip((q, k, v), _inputs(B, T, T, HQ, H, D, torch.bfloat16)):
                x.copy_(fresh)
            if gated:
                gc.copy_(_inputs(B, T, T, HQ, H, D, torch.bfloat16, gate_shift=1.0)[3])
                gct.copy_(parallel._gate_rows(gc, 1, None)[0])
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
        parallel_hopper.parallel_attn_fwd_hopper(q, k, v, gct, D ** -0.5, o, lse)
        if call == 0:
            plans = dict(parallel_hopper._LAUNCH._plans)
        else:
            assert parallel_hopper._LAUNCH._plans == plans, "a repeat at the same addresses must replay, not plan anew"
        ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(),
                                             gc=gc.double() if gated else None, return_lse=True)
        assert rel_err(o, ref_o) < RTOL[torch.bfloat16]
        assert rel_err(lse, ref_lse) < 1e-5


@gpu
def test_schedule_survives_in_a_captured_graph(monkeypatch):
    """A CUDA graph captured after a warm-up replays correctly after its shape's schedule left the cache
    (the graph keeps reading the tensor it captured); a shape first met inside a capture is refused."""
    monkeypatch.setattr(parallel_hopper, "_SCHEDULES_MAX", 4)
    q, k, v, gc = _inputs(2, 300, 300, 4, 2, 128, torch.bfloat16)
    o = parallel.parallel_attn(q, k, v, gc=gc)  # warm-up: compiles, caches the schedule
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph = parallel.parallel_attn(q, k, v, gc=gc)
    for n in range(8):  # other shapes push this one out of the cache
        parallel_hopper._schedule_cached(100 + n, 100 + n, 4, 128, 128, 1, 8, q.device)
    # small tensors like the schedule (49 int32 here) would take its memory had it been freed
    filler = [torch.full((n,), 7, dtype=torch.int32, device="cuda") for n in range(16, 400, 3)]
    o_graph.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_graph, o)
    del filler
    q2, k2, v2, gc2 = _inputs(1, 257, 257, 4, 2, 128, torch.bfloat16)
    with pytest.raises(RuntimeError, match="inside CUDA-graph capture"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            parallel.parallel_attn(q2, k2, v2, gc=gc2)


@gpu
def test_takes_the_call_and_matches_the_tl_kernel(monkeypatch):
    """The dispatch sends supported calls here (spied), and the tl kernel agrees with it."""
    q, k, v, gc = _inputs(2, 515, 515, 4, 2, 128, torch.bfloat16)
    calls = []
    real = parallel_hopper.parallel_attn_fwd_hopper
    monkeypatch.setattr(parallel_hopper, "parallel_attn_fwd_hopper",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    o = parallel.parallel_attn(q, k, v, gc=gc)
    assert calls == [1]
    monkeypatch.setattr(parallel, "_HOPPER", False)
    o_tl = parallel.parallel_attn(q, k, v, gc=gc)
    assert calls == [1]
    assert rel_err(o, o_tl) < RTOL[torch.bfloat16]


# packed lengths: a length-1 sequence, lengths around the 128-row tile, an empty sequence, sequences of
# several tiles (unmasked key blocks, tiles whose second warpgroup lies past the end)
VARLEN = [(1, 127, 128, 129, 0, 300, 64, 65), (1000, 17, 2053), (5,)]


@gpu
@pytest.mark.parametrize("lens", VARLEN)
@pytest.mark.parametrize("D,HQ,H", [(128, 4, 2), (64, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gated", [True, False])
def test_packed_batches_match_the_reference(lens, D, HQ, H, dtype, gated, monkeypatch):
    """Packed sequences through the Gluon forward (spied): o and lse against the fp64 reference per
    packed batch, nothing leaking across sequence boundaries, every row written (NaN-poisoned). fp16
    batches take the half last block at any length, bf16 ones never (_HALF_MAX_TK)."""
    monkeypatch.setattr(parallel_hopper, "_HALF_MAX_TK", 10**9 if dtype == torch.float16 else 0)
    T = sum(lens)
    q, k, v, _ = _inputs(1, T, T, HQ, H, D, dtype)
    g = F.logsigmoid(torch.randn(1, T, HQ, device="cuda") + 3) if gated else None
    cu = cu_seqlens_of(lens, "cuda")
    calls = []
    real = parallel_hopper.parallel_attn_fwd_hopper
    monkeypatch.setattr(parallel_hopper, "parallel_attn_fwd_hopper",
                        lambda *a, **kw: calls.append(kw.get("cu_seqlens")) or real(*a, **kw))
    o, lse = parallel.parallel_attn(q, k, v, g, cu_seqlens=cu, return_lse=True)
    assert len(calls) == 1 and calls[0] is cu
    ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(), g.double() if gated else None,
                                         cu_seqlens=cu.cpu(), return_lse=True)
    assert rel_err(o, ref_o) < RTOL[dtype]
    assert rel_err(lse, ref_lse) < 1e-5


@gpu
@pytest.mark.parametrize("programs", [1, 3])
@pytest.mark.parametrize("gated", [True, False])
def test_packed_batches_on_few_programs(programs, gated):
    """Few programs walk many packed tiles of different lengths (ring positions and query buffers carried
    across sequences); a second call takes the launch fast path and gives the same result."""
    lens = (300, 1, 129, 511, 64)
    T, HQ, H, D = sum(lens), 4, 2, 128
    q, k, v, gc = _inputs(1, T, T, HQ, H, D, torch.bfloat16)
    cu = cu_seqlens_of(lens, "cuda")
    g = F.logsigmoid(torch.randn(1, T, HQ, device="cuda") + 3) if gated else None
    gc = kernels_gate_scan(g, cu) if gated else None
    gct = parallel._gate_rows(gc, 1, None)[0]
    outs = []
    for _ in range(2):
        o = torch.full_like(q, float("nan"))
        lse = torch.full((1, T, HQ), float("nan"), device="cuda")
        hits = parallel_hopper._LAUNCH.hits
        parallel_hopper.parallel_attn_fwd_hopper(q, k, v, gct, D ** -0.5, o, lse, programs=programs, cu_seqlens=cu)
        outs.append((o, lse, parallel_hopper._LAUNCH.hits - hits))
    ref_o, ref_lse = naive.parallel_attn(q.double(), k.double(), v.double(), g.double() if gated else None,
                                         cu_seqlens=cu.cpu(), return_lse=True)
    assert rel_err(outs[0][0], ref_o) < RTOL[torch.bfloat16]
    assert rel_err(outs[0][1], ref_lse) < 1e-5
    assert outs[1][2] == 1  # the repeat skipped Triton's dispatch
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_unsupported_calls_stay_on_the_tl_kernel():
    q = torch.zeros(1, 8, 2, 100)
    k = torch.zeros(1, 8, 2, 100)
    assert not parallel_hopper.supported(q, k, None)  # CPU, fp32, D=100
    if torch.cuda.is_available():
        qc = torch.zeros(1, 8, 2, 128, device="cuda", dtype=torch.bfloat16)
        cu = torch.tensor([0, 8], device="cuda")
        assert parallel_hopper.supported(qc, qc, cu) == _SM90  # packed
        q2 = torch.zeros(2, 8, 2, 128, device="cuda", dtype=torch.bfloat16)
        assert not parallel_hopper.supported(q2, q2, cu)  # packed needs B = 1
        assert not parallel_hopper.supported(qc[:, :4], qc, cu)  # and Tq = Tk
        assert not parallel_hopper.supported(qc[:, :, :, :100], qc[:, :, :, :100], None)
        k64 = torch.zeros(1, 8192, 2, 64, device="cuda", dtype=torch.bfloat16)
        assert parallel_hopper.supported(k64[:, -8:], k64, None) == _SM90  # D=64, any length
        k96 = torch.zeros(1, 64, 2, 96, device="cuda", dtype=torch.bfloat16)
        assert not parallel_hopper.supported(k96, k96, None)  # D=96: the tl kernel
