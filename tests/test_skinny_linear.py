"""Skinny GEMM (kernels/gemm/skinny.py) against an fp64 F.linear, the dispatch, and the model wiring.

CPU: the kernel under TRITON_INTERPRET=1 on small odd shapes (both paths, split-K, bias, strided and
3-D x) into NaN-poisoned outputs; use_skinny_linears keeps the model's function and parameters.
GPU (skipped without CUDA): the model's real shapes at M = 1..32 in bf16/fp16/fp32, the dispatch's
choice, CUDA-graph capture and replay (split-K counters reset between launches), and a decode step
with and without the skinny linears. The SwiGLU epilogue (linear_swiglu: gate/up rows of one weight ->
silu(gate) * up) on the same paths, and the model's MLP taking it once its gate/up are fused.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from conftest import decode_logits_on_off, interpret, needs_cuda, poisoned, rel_err, spy_shapes
from gatedgen.linears import SkinnyLinear, use_skinny_linears

triton_ok = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)
if interpret or torch.cuda.is_available():
    from kernels.gemm import skinny
    from kernels.gemm.skinny import Config

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
# fp32 accumulation, one rounding of the output in the dtype (relative to ||y||)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}

# (N, K) of the 135M-class model (q/k/v/f fused, o_proj, gate/up fused, down, LM head) and the default one
MODEL_SHAPES = [(969, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576),
                (768, 256), (256, 256), (1536, 256), (256, 768), (4096, 256)]


def _inputs(M, N, K, dtype, bias, lead=None):
    x = torch.randn(*(lead or (M,)), K, device=DEVICE).to(dtype)
    w = (torch.randn(N, K, device=DEVICE) / K**0.5).to(dtype)
    b = torch.randn(N, device=DEVICE).to(dtype) if bias else None
    return x, w, b


def _reference(x, w, b):
    return F.linear(x.double(), w.double(), b.double() if b is not None else None)


def _check(x, w, b, cfg=None):
    """The kernel (default or given config) into a NaN-filled output equals the fp64 reference."""
    N = w.shape[0]
    cfg = cfg or skinny.config(x.numel() // x.shape[-1], N, x.shape[-1], x.element_size(), skinny.num_sms(x.device))
    out = poisoned(*x.shape[:-1], N, dtype=x.dtype, device=DEVICE)
    y = skinny.run(x, w, b, cfg, out=out)
    assert y is out and y.shape == (*x.shape[:-1], N) and y.dtype == x.dtype
    assert rel_err(y, _reference(x, w, b)) < TOL[x.dtype], cfg
    assert int(skinny._locks(x.device).abs().sum()) == 0, "split-K counters not reset"
    return y


# --- the kernel on small shapes (interpreter or GPU) ------------------------------------------------------------


@triton_ok
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3, 16])
@pytest.mark.parametrize("N,K", [(37, 100), (64, 64), (5, 16)])
@pytest.mark.parametrize("bias", [False, True])
def test_default_config(M, N, K, dtype, bias):
    x, w, b = _inputs(M, N, K, dtype, bias)
    y = _check(x, w, b)
    assert torch.equal(skinny.linear(x, w, b), y)  # the public entry point takes the same config


CONFIGS = {  # every code path: FMA / dot, split-K (K split into unequal parts), slabs past N, tiles past K
    "fma": (4, 32, 1, False, 1, 1),  # Config(BN, BK, SPLIT_K, USE_DOT, num_warps, num_stages)
    "fma-split3": (8, 16, 3, False, 1, 1),
    "fma-bn1-split2": (1, 64, 2, False, 1, 1),
    "dot": (16, 32, 1, True, 4, 2),
    "dot-split4": (16, 16, 4, True, 4, 2),
    "dot-bn32-split2": (32, 64, 2, True, 4, 2),
}


@triton_ok
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("M", [1, 3, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_configs(name, M, bias):
    cfg = Config(*CONFIGS[name])
    if M > 1 and not cfg.USE_DOT:
        pytest.skip("the FMA path takes one row")
    x, w, b = _inputs(M, 37, 100, torch.float32, bias)
    _check(x, w, b, cfg)


@triton_ok
@pytest.mark.parametrize("cfg", ["fma-split3", "dot-split4"])
def test_split_k_bf16_deterministic(cfg):
    x, w, b = _inputs(1 if cfg.startswith("fma") else 5, 37, 100, torch.bfloat16, True)
    y = _check(x, w, b, Config(*CONFIGS[cfg]))
    assert torch.equal(skinny.run(x, w, b, Config(*CONFIGS[cfg])), y)  # partials summed in a fixed order


@triton_ok
@pytest.mark.parametrize("M", [1, 3])
def test_strided_and_3d_x(M):
    """x as the model hands it over: [B, 1, K] (the last position of [B, T, K]) and a transposed view."""
    x_full, w, b = _inputs(M, 37, 100, torch.float32, True, lead=(M, 7))
    last = x_full[:, -1:]  # [B, 1, K], row stride 7 K
    assert M == 1 or not last.is_contiguous()
    _check(last, w, b)
    xt = torch.randn(100, M, device=DEVICE).t()  # [M, K] with stride 1 along M: copied to rows
    _check(xt, w, b)


@triton_ok
def test_rejects_bad_inputs():
    x, w, _ = _inputs(2, 8, 16, torch.float32, False)
    cfg = Config(*CONFIGS["dot"])
    with pytest.raises(ValueError):
        skinny.run(x, w.double(), None, cfg)  # dtypes differ
    with pytest.raises(ValueError):
        skinny.run(x, w[:, :8], None, cfg)  # K differs
    with pytest.raises(ValueError):
        skinny.run(x, w, torch.zeros(7, device=DEVICE), cfg)  # bias length
    with pytest.raises(ValueError):
        skinny.run(x, w, None, Config(*CONFIGS["fma"]))  # the FMA path takes one row
    with pytest.raises(ValueError):
        skinny.run(torch.randn(skinny.MAX_ROWS + 1, 16, device=DEVICE), w, None, cfg)


@triton_ok
def test_empty():
    _, w, b = _inputs(1, 8, 16, torch.float32, True)
    assert skinny.linear(torch.randn(0, 16, device=DEVICE), w, b).shape == (0, 8)


def test_config_rule():
    """Two programs per SM wanted: M = 1 grows slabs up to 16 rows, splits K only below one wave;
    K tiles pad K by at most 12.5% when one can."""
    from kernels.gemm.skinny import config
    from kernels.utils import cdiv

    for N, K in MODEL_SHAPES:
        for M in (1, 2, 8, 32):
            cfg = config(M, N, K, 2, 132)
            assert cfg.USE_DOT == (M > 1) and cfg.BN <= 64 and cdiv(K, cfg.BK) * cfg.BK * 8 <= K * 9
            programs = cdiv(N, cfg.BN) * cdiv(K, cdiv(cdiv(K, cfg.BK), cfg.SPLIT_K) * cfg.BK)
            assert programs >= 132 or N * K < 576 * 576, (M, N, K, cfg)  # the 135M maps fill a wave
    assert config(1, 576, 1536, 2, 132).BK == 512
    assert config(1, 256, 256, 2, 132).SPLIT_K == 1
    assert config(2, 576, 576, 2, 132).SPLIT_K > 1


# --- the SwiGLU epilogue (linear_swiglu) ----------------------------------------------------------------------


def _swiglu_reference(x, w, b):
    gate, up = F.linear(x.double(), w.double(), b.double() if b is not None else None).chunk(2, dim=-1)
    return F.silu(gate) * up


def _check_swiglu(x, w, b, cfg=None):
    """The GLU kernel (default or given config) into a NaN-filled [..., I] output equals the fp64 reference."""
    inter, K = w.shape[0] // 2, x.shape[-1]
    cfg = cfg or skinny.config(x.numel() // K, inter, K, x.element_size(), skinny.num_sms(x.device))
    out = poisoned(*x.shape[:-1], inter, dtype=x.dtype, device=DEVICE)
    y = skinny.run(x, w, b, cfg, out=out, glu=True)
    assert y is out and y.dtype == x.dtype
    assert rel_err(y, _swiglu_reference(x, w, b)) < TOL[x.dtype], cfg
    assert int(skinny._locks(x.device).abs().sum()) == 0, "split-K counters not reset"
    return y


@triton_ok
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_configs(name, M, bias):
    """Every path (FMA / dot, split-K into unequal parts, slabs past I, tiles past K) at I = 19, K = 100."""
    cfg = Config(*CONFIGS[name])
    if M > 1 and not cfg.USE_DOT:
        pytest.skip("the FMA path takes one row")
    x, w, b = _inputs(M, 2 * 19, 100, torch.float32, bias)
    _check_swiglu(x, w, b, cfg)


@triton_ok
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 5])
def test_swiglu_default_config(M, dtype):
    x, w, _ = _inputs(M, 2 * 37, 48, dtype, False, lead=(M, 1))  # [B, 1, K] as at decode
    y = _check_swiglu(x, w, None)
    assert y.shape == (M, 1, 37)
    assert torch.equal(skinny.linear_swiglu(x, w, 37), y)  # the public entry point takes the same config
    # the gate half alone through the plain kernel: the epilogue reads gate rows 0..I-1, up rows I..2I-1
    gate, up = skinny.linear(x, w).float().chunk(2, dim=-1)
    assert rel_err(y, F.silu(gate) * up) < 2 * TOL[dtype]


@triton_ok
def test_swiglu_split_k_bf16_deterministic():
    x, w, b = _inputs(5, 2 * 37, 100, torch.bfloat16, True)
    cfg = Config(*CONFIGS["dot-split4"])
    y = _check_swiglu(x, w, b, cfg)
    assert torch.equal(skinny.run(x, w, b, cfg, glu=True), y)


@triton_ok
def test_swiglu_rejects_bad_inputs():
    x, w, _ = _inputs(1, 8, 16, torch.float32, False)
    with pytest.raises(ValueError):
        skinny.linear_swiglu(x, w, 3)  # 8 rows are not 2 x 3
    with pytest.raises(ValueError):
        skinny.run(x, w[:7], None, Config(*CONFIGS["fma"]), glu=True)  # odd row count
    with pytest.raises(ValueError):
        skinny.linear_swiglu(x, w, 4, torch.zeros(4, device=DEVICE))  # bias covers gate and up: 2 I


def test_swiglu_reference_and_dispatch_cpu():
    from kernels.gemm import naive

    x, w, b = torch.randn(3, 1, 20), torch.randn(14, 20), torch.randn(14)
    ref = naive.linear_swiglu(x, w, 7, b)
    assert ref.shape == (3, 1, 7) and rel_err(ref, _swiglu_reference(x, w, b)) < 1e-5
    assert torch.equal(kernels.linear_swiglu(x, w, 7, b), ref)
    with pytest.raises(ValueError):
        kernels.linear_swiglu(x, w, 6)


def test_fused_mlp_calls_linear_swiglu(monkeypatch):
    """After fuse_projections every MLP computes its norm, gate/up and SwiGLU through one rms_norm_linear
    call of the fused gate/up weight with ``inter`` (the SwiGLU epilogue; same function as before), never
    through the parts; every attention input and the LM head take one without."""
    from gatedgen.bench.generate import PRESETS, random_model
    from gatedgen.engine import fuse_projections
    from gatedgen.model import MLP

    model = random_model(PRESETS["tiny"], "cpu", torch.float32)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 5))
    with torch.inference_mode():
        ref = model(ids)
    fuse_projections(model)
    calls = []
    real = kernels.rms_norm_linear

    def spy(x, norm_weight, eps, weight, bias=None, residual=None, inter=None):
        calls.append((weight.shape, inter))
        return real(x, norm_weight, eps, weight, bias, residual, inter)

    monkeypatch.setattr(kernels, "rms_norm_linear", spy)
    monkeypatch.setattr(kernels, "swiglu", lambda *a: pytest.fail("unfused SwiGLU after fuse_projections"))
    monkeypatch.setattr(kernels, "linear_swiglu", lambda *a: pytest.fail("MLP norm not folded"))
    with torch.inference_mode():
        out = model(ids)
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    cfg, inter = model.cfg, model.cfg.intermediate_size
    attn_rows = cfg.q_dim + 2 * cfg.kv_dim + cfg.num_heads  # q, k, v, f
    per_block = [((attn_rows, cfg.hidden_size), None), ((2 * inter, cfg.hidden_size), inter)]
    assert calls == per_block * len(mlps) + [((cfg.vocab_size, cfg.hidden_size), None)]
    assert rel_err(out, ref) < 1e-5


# --- the dispatch and the model wiring (CPU) ------------------------------------------------------------------


def test_dispatch_cpu_is_f_linear():
    x, w, b = torch.randn(3, 1, 20), torch.randn(7, 20), torch.randn(7)
    assert torch.equal(kernels.linear(x, w, b), F.linear(x, w, b))


def test_use_skinny_linears_keeps_the_model():
    from gatedgen.bench.generate import PRESETS, random_model
    from gatedgen.engine import fuse_projections

    model = random_model(PRESETS["tiny"], "cpu", torch.float32)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 5))
    with torch.inference_mode():
        ref = model(ids)
    fuse_projections(model)
    keys = list(model.state_dict())
    assert use_skinny_linears(use_skinny_linears(model)) is model  # idempotent
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is SkinnyLinear for m in linears)
    assert list(model.state_dict()) == keys  # same parameters under the same names
    with torch.inference_mode():
        out = model(ids)
    assert rel_err(out, ref) < 1e-5


def test_skinny_linear_module_keeps_autograd():
    lin = nn.Linear(12, 5)
    use_skinny_linears(nn.Sequential(lin))
    x = torch.randn(2, 12, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


# --- GPU: real shapes, dispatch, CUDA graphs, decode step --------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("N,K", MODEL_SHAPES)
@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
def test_model_shapes_bf16(N, K, M):
    x, w, b = _inputs(M, N, K, torch.bfloat16, N == 969)  # the gated q/k/v/f projection may carry a bias
    cfg = skinny.config(M, N, K, 2, skinny.num_sms(x.device))
    _check(x, w, b, cfg)
    ref = F.linear(x, w, b)  # cuBLAS in the dtype: within a rounding of ours
    assert rel_err(skinny.linear(x, w, b), ref.double()) < 2 * TOL[torch.bfloat16]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("N,K", [(969, 576), (576, 1536), (49152, 576)])
@pytest.mark.parametrize("M", [1, 5, 32])
def test_model_shapes_other_dtypes(N, K, M, dtype):
    x, w, b = _inputs(M, N, K, dtype, True)
    _check(x, w, b, skinny.config(M, N, K, x.element_size(), skinny.num_sms(x.device)))


@needs_cuda
def test_dispatch_cuda(monkeypatch):
    calls = spy_shapes(monkeypatch, skinny, "linear")
    w = torch.randn(64, 96, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        kernels.linear(torch.randn(1, 1, 96, device="cuda", dtype=torch.bfloat16), w)
        kernels.linear(torch.randn(32, 96, device="cuda", dtype=torch.bfloat16), w)
        kernels.linear(torch.randn(33, 96, device="cuda", dtype=torch.bfloat16), w)  # prefill: cuBLAS
        monkeypatch.setenv("GATEDGEN_NO_SKINNY", "1")
        kernels.linear(torch.randn(1, 96, device="cuda", dtype=torch.bfloat16), w)
    wg = torch.randn(64, 96, device="cuda", requires_grad=True)
    monkeypatch.delenv("GATEDGEN_NO_SKINNY")
    kernels.linear(torch.randn(1, 96, device="cuda"), wg)  # autograd: cuBLAS
    assert calls == [(1, 1, 96), (32, 96)]


@needs_cuda
@pytest.mark.parametrize("M,N,K", [(1, 64, 1536), (4, 576, 1536), (32, 576, 576)])
def test_cuda_graph_replay(M, N, K):
    """Captured (split-K shapes: counters must be back at 0 after every launch), replayed on new inputs."""
    x, w, b = _inputs(M, N, K, torch.bfloat16, True)
    assert skinny.config(M, N, K, 2, skinny.num_sms(x.device)).SPLIT_K > 1
    _check_graph_replay(x, lambda: skinny.linear(x, w, b), lambda: _reference(x, w, b))


def _check_graph_replay(x, call, reference):
    """call() captured three times in one CUDA graph (compiled outside the capture), replayed five times
    on new x: every captured output equals reference() and the split-K counters are back at 0."""
    out = [call()]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(3):
            out = [call()] + out[:2]
    for _ in range(5):
        x.copy_(torch.randn_like(x))
        graph.replay()
        ref = reference()
        for y in out:
            assert rel_err(y, ref) < TOL[torch.bfloat16]
    assert int(skinny._locks(x.device).abs().sum()) == 0


@needs_cuda
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])  # bf16: 30 layers of
def test_decode_step_with_and_without_skinny(monkeypatch, batch, dtype, tol):  # roundings, ~1.4e-2 on CPU
    model, logits = decode_logits_on_off(monkeypatch, "GATEDGEN_NO_SKINNY", batch, dtype)
    assert any(type(m) is SkinnyLinear for m in model.modules())
    assert rel_err(logits[1], logits[0].double()) < tol


@needs_cuda
@pytest.mark.parametrize("I,K", [(1536, 576), (768, 256)])  # the 135M and default models' gate/up
@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
def test_swiglu_model_shapes_bf16(I, K, M):
    x, w, _ = _inputs(M, 2 * I, K, torch.bfloat16, False)
    _check_swiglu(x, w, None)
    gate, up = F.linear(x, w).chunk(2, dim=-1)  # cuBLAS + the SwiGLU kernel (prefill's path): within roundings
    assert rel_err(skinny.linear_swiglu(x, w, I), F.silu(gate.double()) * up.double()) < 3 * TOL[torch.bfloat16]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M", [1, 5, 32])
def test_swiglu_other_dtypes(M, dtype):
    x, w, b = _inputs(M, 2 * 1536, 576, dtype, True)
    _check_swiglu(x, w, b)


@needs_cuda
def test_swiglu_dispatch_cuda(monkeypatch):
    calls = spy_shapes(monkeypatch, skinny, "linear_swiglu")
    w = torch.randn(128, 96, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        ys = [kernels.linear_swiglu(torch.randn(m, 96, device="cuda", dtype=torch.bfloat16), w, 64)
              for m in (1, 32, 33)]  # 33 rows (prefill): cuBLAS + SwiGLU kernel
        monkeypatch.setenv("GATEDGEN_NO_SKINNY", "1")
        kernels.linear_swiglu(torch.randn(1, 96, device="cuda", dtype=torch.bfloat16), w, 64)
    assert calls == [(1, 96), (32, 96)] and [y.shape[-1] for y in ys] == [64] * 3


@needs_cuda
@pytest.mark.parametrize("M", [1, 4, 32])
def test_swiglu_cuda_graph_replay(M):
    """The 135M gate/up (split-K above M = 1) captured three times and replayed on new inputs."""
    x, w, _ = _inputs(M, 2 * 1536, 576, torch.bfloat16, False)
    _check_graph_replay(x, lambda: skinny.linear_swiglu(x, w, 1536), lambda: _swiglu_reference(x, w, None))
