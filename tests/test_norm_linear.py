"""RMSNorm folded into the skinny GEMM (kernels.rms_norm_linear) and the FusedBlock wiring.

CPU: the kernel under TRITON_INTERPRET=1 on small odd shapes (K not a multiple of BK, N odd) on every
path (FMA / dot, split-K, bias, SwiGLU epilogue, with and without a residual) into NaN-poisoned y and h,
against an fp64 reference of the composition rms_norm -> linear; h written exactly. The reference
dispatch and the model: FusedBlock / the LM head equal the unfused model, the RMSNorm modules are never
called once folded, blocks with an unfused projection stay Blocks.
GPU (skipped without CUDA): the 135M shapes at M = 1..32 against the fp64 reference and the two-kernel
path, the dispatch's choice (GATEDGEN_NO_NORM_FOLD / GATEDGEN_NO_SKINNY / rows), CUDA-graph replay, and
a decode step with and without the fold in fp32 and bf16.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import decode_logits_on_off, interpret, needs_cuda, poisoned, rel_err, spy_shapes

import kernels
from kernels.gemm import naive

triton_ok = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)
if interpret or torch.cuda.is_available():
    from kernels.gemm import skinny
    from kernels.gemm.skinny import Config, Norm

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
EPS = 1e-5
# relative to ||y||: fp32 accumulation; bf16: roundings of h, of the normed input and of y (the
# interpreter converts fp32 -> bf16 by truncation: about twice the error of the GPU's rounding)
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.2e-2}

CONFIGS = {  # Config(BN, BK, SPLIT_K, USE_DOT, num_warps, num_stages): every path, tiles past K, slabs past N
    "fma": (4, 32, 1, False, 1, 1),
    "fma-split3": (8, 16, 3, False, 1, 1),
    "dot": (16, 32, 1, True, 4, 2),
    "dot-split4": (16, 16, 4, True, 4, 2),
    "dot-bn32-split2": (32, 64, 2, True, 4, 2),
}


def _inputs(M, N, K, dtype, bias=False, residual=True, lead=None):
    """x, norm weight g, W [N, K], bias, residual; x and the residual of different scales (h's rounding)."""
    shape = (*(lead or (M,)), K)
    x = (3 * torch.randn(shape, device=DEVICE)).to(dtype)
    r = torch.randn(shape, device=DEVICE).to(dtype) if residual else None
    g = (1 + 0.3 * torch.randn(K, device=DEVICE)).to(dtype)
    w = (torch.randn(N, K, device=DEVICE) / K**0.5).to(dtype)
    b = torch.randn(N, device=DEVICE).to(dtype) if bias else None
    return x, g, w, b, r


def _reference(x, g, w, b, r, inter):
    """fp64 composition of the reference norm and linear / linear_swiglu."""
    x, g, w, b, r = (t.double() if t is not None else None for t in (x, g, w, b, r))
    return naive.rms_norm_linear(x, g, EPS, w, b, r, inter)[0]


def _check_h(h, x, r):
    """h is x + r as PyTorch rounds it (exactly, except bf16 under the interpreter, which truncates)."""
    if x.dtype == torch.float32 or not interpret:
        assert torch.equal(h, x + r)
    else:
        assert rel_err(h, (x.double() + r.double())) < 8e-3


def _check(x, g, w, b, r, inter=None, cfg=None):
    """The kernel (default or given config) into NaN-filled y and h equals the fp64 reference; h exact."""
    K = x.shape[-1]
    N = w.shape[0] if inter is None else inter
    cfg = cfg or skinny.config(x.numel() // K, N, K, x.element_size(), skinny.num_sms(x.device))
    y_out = poisoned(*x.shape[:-1], N, dtype=x.dtype, device=DEVICE)
    h = poisoned(*x.shape, dtype=x.dtype, device=DEVICE) if r is not None else None
    y = skinny.run(x, w, b, cfg, out=y_out, glu=inter is not None, norm=Norm(g, EPS, r, h))
    assert y is y_out and y.dtype == x.dtype
    assert rel_err(y, _reference(x, g, w, b, r, inter)) < TOL[x.dtype], cfg
    if r is not None:
        _check_h(h, x, r)
    assert int(skinny._locks(x.device).abs().sum()) == 0, "split-K counters not reset"
    return y, h


# --- the kernel on small shapes (interpreter or GPU) ------------------------------------------------------------


@triton_ok
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("epilogue", ["plain", "bias", "glu-bias"])
def test_configs_fp32(name, M, residual, epilogue):
    """Every path at K = 100 (BK 16/32/64 all leave a partial tile), N = 37 / I = 19."""
    cfg = Config(*CONFIGS[name])
    if M > 1 and not cfg.USE_DOT:
        pytest.skip("the FMA path takes one row")
    glu = epilogue.startswith("glu")
    x, g, w, b, r = _inputs(M, 2 * 19 if glu else 37, 100, torch.float32, "bias" in epilogue, residual)
    _check(x, g, w, b, r, 19 if glu else None, cfg)


@triton_ok
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("glu", [False, True])
def test_default_config(M, dtype, glu):
    """The public entry point at K = 200 (the config rule's blocks) equals run() with the same config."""
    N, K = (2 * 21 if glu else 41), 200
    x, g, w, b, r = _inputs(M, N, K, dtype, True, lead=(M, 1))  # [B, 1, K] as at decode
    y, h = _check(x, g, w, b, r, 21 if glu else None)
    y2, h2 = skinny.rms_norm_linear(x, g, EPS, w, b, r, 21 if glu else None)
    assert torch.equal(y2, y) and torch.equal(h2, h)
    assert h2.data_ptr() not in (x.data_ptr(), r.data_ptr())
    y3, h3 = skinny.rms_norm_linear(x, g, EPS, w, b, None, 21 if glu else None)
    assert h3 is x and rel_err(y3, _reference(x, g, w, b, None, 21 if glu else None)) < TOL[dtype]


@triton_ok
def test_split_k_bf16_deterministic():
    x, g, w, b, r = _inputs(5, 37, 100, torch.bfloat16, True)
    cfg = Config(*CONFIGS["dot-split4"])
    y, h = _check(x, g, w, b, r, cfg=cfg)
    h2 = torch.empty_like(h)
    assert torch.equal(skinny.run(x, w, b, cfg, norm=Norm(g, EPS, r, h2)), y) and torch.equal(h2, h)


@triton_ok
@pytest.mark.parametrize("M", [1, 3])
def test_strided_rows(M):
    """x and the residual as the LM head gets them: the last position [B, 1, K] of [B, T, K] tensors."""
    x, g, w, b, r = _inputs(M, 37, 100, torch.float32, True, lead=(M, 7))
    x, r = x[:, -1:], r[:, -1:]
    assert M == 1 or not x.is_contiguous()
    _check(x, g, w, b, r)


@triton_ok
def test_norm_matters():
    """Scaling x and the residual together leaves y unchanged (the norm is applied), g scales each input."""
    x, g, w, _, r = _inputs(1, 37, 100, torch.float32)
    y, _ = skinny.rms_norm_linear(x, g, 0.0, w, None, r)
    y2, _ = skinny.rms_norm_linear(64 * x, g, 0.0, w, None, 64 * r)
    assert rel_err(y2, y) < 1e-5
    y3, _ = skinny.rms_norm_linear(x, 2 * g, 0.0, w, None, r)
    assert rel_err(y3, 2 * y) < 1e-5


@triton_ok
def test_rejects_bad_inputs():
    x, g, w, _, r = _inputs(2, 8, 16, torch.float32)
    cfg = Config(*CONFIGS["dot"])
    with pytest.raises(ValueError):
        skinny.run(x, w, None, cfg, norm=Norm(g[:8], EPS))  # norm weight length
    with pytest.raises(ValueError):
        skinny.run(x, w, None, cfg, norm=Norm(g, EPS, r[:1], torch.empty_like(x)))  # residual shape
    with pytest.raises(ValueError):
        skinny.run(x, w, None, cfg, norm=Norm(g, EPS, r, None))  # no h buffer
    with pytest.raises(ValueError):
        skinny.run(x, w, None, cfg, norm=Norm(g, EPS, r, r))  # h aliases the residual
    with pytest.raises(ValueError):
        skinny.rms_norm_linear(x, g, EPS, w, None, r, inter=3)  # 8 rows are not 2 x 3


@triton_ok
def test_no_outputs_still_write_h():
    x, g, w, _, r = _inputs(2, 8, 16, torch.float32)
    h = poisoned(*x.shape, device=DEVICE)
    y = skinny.run(x, w[:0], None, Config(*CONFIGS["dot"]), norm=Norm(g, EPS, r, h))
    assert y.shape == (2, 0) and torch.equal(h, x + r)


# --- the reference dispatch and the model (CPU) -----------------------------------------------------------------


@pytest.mark.parametrize("inter", [None, 7])
def test_reference_dispatch_cpu_is_the_composition(inter):
    x, g, w, b, r = (torch.randn(3, 1, 20), torch.randn(20), torch.randn(14, 20), torch.randn(14),
                     torch.randn(3, 1, 20))
    y, h = kernels.rms_norm_linear(x, g, EPS, w, b, r, inter)
    n, h_ref = kernels.rms_norm(x, g, EPS, r)
    y_ref = kernels.linear(n, w, b) if inter is None else kernels.linear_swiglu(n, w, inter, b)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref) and torch.equal(h, x + r)
    assert rel_err(y, _reference(x, g, w, b, r, inter)) < 1e-5
    assert kernels.rms_norm_linear(x, g, EPS, w, b, None, inter)[1] is x


VARIANTS = {  # configs whose attention reads its input through more projections (bias, gate, shifts)
    "tiny": {},
    "pro": {"qkv_bias": True, "qk_norm": True, "use_output_gate": True, "use_output_norm": True,
            "use_k_shift": True, "use_v_shift": True},
    "llama": {"model_type": "llama", "use_forget_gate": False, "rope_theta": 10000.0, "tie_word_embeddings": False},
}


def _tiny(variant, device="cpu", dtype=torch.float32):
    from gatedgen.bench.generate import PRESETS, random_model

    return random_model(dataclasses.replace(PRESETS["tiny"], **VARIANTS[variant]), device, dtype)


def _prefill_and_decode(model, ids):
    cache = model.new_cache(ids.shape[0], 16)
    with torch.inference_mode():
        return model(ids, cache, mode="prefill"), model(ids[:, :1], cache, mode="decode")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_block_equals_block_cpu(variant, monkeypatch):
    """fuse_projections makes every block a FusedBlock; prefill and decode logits stay those of the
    unfused model, and no RMSNorm module runs any more (all three norms folded into GEMMs)."""
    from gatedgen.engine import FusedBlock, fuse_projections
    from gatedgen.model import RMSNorm

    model = _tiny(variant)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 6))
    ref = _prefill_and_decode(model, ids)
    fuse_projections(model)
    assert all(type(b) is FusedBlock for b in model.model.layers)
    monkeypatch.setattr(RMSNorm, "forward", lambda *a: pytest.fail("RMSNorm module called after the fold"))
    out = _prefill_and_decode(model, ids)
    for o, r in zip(out, ref):
        assert rel_err(o, r) < 1e-5


def test_unfused_block_is_not_switched():
    """A block whose attention input has a consumer outside the fused GEMM (here: q_proj put back as a
    plain nn.Linear) or whose MLP is unfused stays a Block."""
    from torch import nn

    from gatedgen.engine import _fold_norms, fuse_projections
    from gatedgen.model import Block

    model = _tiny("tiny")
    _fold_norms(model.model.layers[0])  # nothing fused yet
    assert type(model.model.layers[0]) is Block
    fuse_projections(model)
    block = model.model.layers[1]
    block.__class__ = Block
    block.attn.q_proj = nn.Linear(64, 64)
    _fold_norms(block)
    assert type(block) is Block
    block = model.model.layers[0]
    block.__class__ = Block
    del block.mlp.fused_in
    _fold_norms(block)
    assert type(block) is Block


def test_lm_head_is_the_norm_then_the_linear_cpu():
    model = _tiny("llama")
    x, r = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    with torch.inference_mode():
        n, _ = model.model.norm(x, r)
        assert torch.equal(model.logits(x, r), kernels.linear(n, model.output_weight).float())


# --- GPU: real shapes, dispatch, CUDA graphs, decode step --------------------------------------------------------

SHAPES_135M = [(969, 576, None), (2 * 1536, 576, 1536), (49152, 576, None)]  # q/k/v/f, gate/up, LM head


@needs_cuda
@pytest.mark.parametrize("N,K,inter", SHAPES_135M)
@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
def test_model_shapes_bf16(N, K, inter, M):
    x, g, w, b, r = _inputs(M, N, K, torch.bfloat16, N == 969)
    y, h = _check(x, g, w, b, r, inter)
    # the two kernels it replaces (Triton RMSNorm, then the skinny GEMM): within the roundings
    n, h2 = kernels.rms_norm(x, g, EPS, r)
    y2 = skinny.linear(n, w, b) if inter is None else skinny.linear_swiglu(n, w, inter, b)
    assert torch.equal(h, h2) and rel_err(y, y2.double()) < TOL[torch.bfloat16]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M", [1, 5, 32])
@pytest.mark.parametrize("N,K,inter", SHAPES_135M[:2])
def test_model_shapes_other_dtypes(N, K, inter, M, dtype):
    x, g, w, b, r = _inputs(M, N, K, dtype, True)
    _check(x, g, w, b, r, inter)


@needs_cuda
def test_dispatch_cuda(monkeypatch):
    calls = spy_shapes(monkeypatch, skinny, "rms_norm_linear")
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    w, g = torch.randn(64, 96, **bf), torch.randn(96, **bf)
    with torch.inference_mode():
        for m in (1, 32, 33):  # 32 rows: norm kernel + skinny GEMM; 33 (prefill): norm kernel + cuBLAS
            x = torch.randn(m, 96, **bf)
            y, h = kernels.rms_norm_linear(x, g, EPS, w, None, x.clone())
            assert y.shape == (m, 64) and torch.equal(h, 2 * x)
        for env in ("GATEDGEN_NO_NORM_FOLD", "GATEDGEN_NO_SKINNY"):
            monkeypatch.setenv(env, "1")
            kernels.rms_norm_linear(torch.randn(1, 96, **bf), g, EPS, w)
            monkeypatch.delenv(env)
    assert calls == [(1, 96)]  # the fold is for one row only (kernels/dispatch.py says why)


@needs_cuda
@pytest.mark.parametrize("M", [1, 4, 32])
@pytest.mark.parametrize("N,K,inter", SHAPES_135M[:2])
def test_cuda_graph_replay(N, K, inter, M):
    """Captured three times (split-K above M = 1: counters back at 0 after each), replayed on new inputs."""
    x, g, w, b, r = _inputs(M, N, K, torch.bfloat16, True)
    outs = [skinny.rms_norm_linear(x, g, EPS, w, b, r, inter)]  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(3):
            outs = [skinny.rms_norm_linear(x, g, EPS, w, b, r, inter)] + outs[:2]
    for _ in range(5):
        x.copy_(torch.randn_like(x))
        r.copy_(torch.randn_like(r))
        graph.replay()
        ref = _reference(x, g, w, b, r, inter)
        for y, h in outs:
            assert rel_err(y, ref) < TOL[torch.bfloat16] and torch.equal(h, x + r)
    assert int(skinny._locks(x.device).abs().sum()) == 0


@needs_cuda
@pytest.mark.parametrize("batch", [1])  # the fold is for one row only (kernels/dispatch.py)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])  # bf16: 30 layers of
def test_decode_step_with_and_without_fold(monkeypatch, batch, dtype, tol):  # roundings (as test_skinny_linear)
    """The 135M model's eager decode step (FusedBlocks, skinny GEMMs) with GATEDGEN_NO_NORM_FOLD=1
    (norm kernels + GEMMs) and without (norms folded into the GEMMs); then graph replays of both
    greedy-decode the same tokens in fp32."""
    from gatedgen.engine import FusedBlock

    model, logits = decode_logits_on_off(monkeypatch, "GATEDGEN_NO_NORM_FOLD", batch, dtype)
    assert all(type(b) is FusedBlock for b in model.model.layers)
    assert rel_err(logits[1], logits[0].double()) < tol


@needs_cuda
def test_graph_decode_with_and_without_fold(monkeypatch):
    """Greedy graph-replayed decoding of a 135M model (fp32): the same 24 tokens with and without the fold."""
    from gatedgen.bench.generate import PRESETS, random_model
    from gatedgen.engine import Decoder
    from gatedgen.sampling import SamplingParams

    model = random_model(PRESETS["135m"], "cuda", torch.float32)
    params = SamplingParams(temperature=0)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 7), device="cuda")  # batch 1: where the fold runs
    runs = []
    for off in ("1", "0"):
        monkeypatch.setenv("GATEDGEN_NO_NORM_FOLD", off)
        cache = model.new_cache(1, 48)
        decoder = Decoder(model, cache, use_graphs=True)
        sampler = decoder.sampler(params)
        decoder.capture(params)
        with torch.inference_mode():
            ids = sampler(model(prompt, cache, mode="prefill", last_only=True)[:, -1])
        tokens = [ids.tolist()]
        for _ in range(24):
            ids = decoder.step(ids, params)
            tokens.append(ids.tolist())
        runs.append(tokens)
    assert runs[0] == runs[1]
