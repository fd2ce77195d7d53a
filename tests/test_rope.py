"""RoPE: the fused Triton kernel (kernels/rope) against the fp64 reference, the reference against HF's
rotate-half formula, and the model computing its angles once per pass.

Kernel tests run on CUDA, or on CPU under TRITON_INTERPRET=1 at small shapes (skipped otherwise).
Outputs are fresh NaN-filled buffers (torch.empty patched), inputs fresh random draws, q and k views
of one fused projection, angles from positions that differ per row.
"""

from __future__ import annotations

import pytest
import torch

from conftest import interpret, needs_cuda, rel_err, spy_shapes
from gatedgen.attention import get_backend
from gatedgen.config import ModelConfig
from gatedgen.model import CausalLM, rope_cos_sin, rope_inv_freq, rope_tables
from kernels.rope import naive

TRITON = interpret or torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not TRITON, reason="Triton kernels need CUDA or TRITON_INTERPRET=1")
if TRITON:
    from kernels.rope import rope as rope_triton

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]
# one rounding of the output in the dtype on top of fp32 arithmetic
TOL = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty returns NaN-filled tensors: any output element the kernel skips shows up."""
    empty = torch.empty

    def nan(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan)


def _fused_qk(B, T, HQ, H, D, dtype):
    """q [B, T, HQ, D] and k [B, T, H, D] as strided views of one [B, T, N] q/k/v/f projection."""
    sizes = [HQ * D, H * D, H * D, HQ]
    out = torch.randn(B, T, sum(sizes), device=DEVICE).to(dtype)
    parts = out.split(sizes, dim=-1)
    return parts[0].view(B, T, HQ, D), parts[1].view(B, T, H, D)


def _angles(B, T, D, scaling=None, shared=False, max_pos=40000):
    """cos, sin [B or 1, T, D/2] of positions start_b .. start_b + T - 1, a random start per row."""
    starts = torch.randint(0, max_pos, (1 if shared else B,))
    positions = (starts[:, None] + torch.arange(T)[None]).to(DEVICE)
    inv_freq = rope_inv_freq(D, 10000.0, scaling, DEVICE)
    return rope_cos_sin(positions, inv_freq)


def _check(q, k, cos, sin, dtype):
    q_ref, k_ref = naive.apply_rope(q.double(), k.double(), cos.double(), sin.double())
    q_out, k_out = rope_triton.apply_rope(q, k, cos, sin)
    for out, ref, x in ((q_out, q_ref, q), (k_out, k_ref, k)):
        assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
        assert rel_err(out, ref) < TOL[dtype]
        # the rotation is not the identity here: an unrotated copy would fail the check above
        assert rel_err(x, ref) > 10 * TOL[dtype]


# --- the kernel ----------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,HQ,H,D", [
    (2, 7, 9, 3, 64),  # SmolLM2's heads, odd T
    (1, 1, 4, 2, 100),  # a decode step, D not a power of two
    (3, 5, 2, 2, 16),
    (2, 3, 8, 1, 128),
] + ([(4, 2048, 9, 3, 64), (32, 1, 9, 3, 64), (1, 333, 32, 8, 128)] if DEVICE == "cuda" else []))
def test_kernel_matches_reference(B, T, HQ, H, D, dtype, nan_empty):
    q, k = _fused_qk(B, T, HQ, H, D, dtype)
    cos, sin = _angles(B, T, D, scaling=LLAMA3)
    _check(q, k, cos, sin, dtype)


@needs_triton
def test_kernel_shared_angles_and_contiguous_inputs(nan_empty):
    """One angle row [1, T, D/2] broadcast over the batch (a pass without a cache); contiguous q, k."""
    q = torch.randn(3, 6, 4, 32, device=DEVICE)
    k = torch.randn(3, 6, 2, 32, device=DEVICE)
    cos, sin = _angles(3, 6, 32, shared=True)
    _check(q, k, cos, sin, torch.float32)


@needs_triton
def test_kernel_transposed_and_sliced_views(nan_empty):
    """Any batch/token/head strides: a [B, H, T, D] tensor transposed, and every other token."""
    q = torch.randn(2, 4, 9, 24, device=DEVICE).transpose(1, 2)  # [2, 9, 4, 24], head stride 9 * 24
    k = torch.randn(2, 18, 2, 24, device=DEVICE)[:, ::2]  # [2, 9, 2, 24], token stride 2 * 48
    cos, sin = _angles(2, 9, 24)
    _check(q, k, cos, sin, torch.float32)


@needs_triton
def test_kernel_leaves_inputs_and_handles_empty():
    q, k = _fused_qk(2, 3, 2, 1, 16, torch.float32)
    q0, k0 = q.clone(), k.clone()
    cos, sin = _angles(2, 3, 16)
    rope_triton.apply_rope(q, k, cos, sin)
    assert torch.equal(q, q0) and torch.equal(k, k0)  # out of place
    qe, ke = torch.randn(2, 0, 2, 16, device=DEVICE), torch.randn(2, 0, 1, 16, device=DEVICE)
    ce = torch.zeros(2, 0, 8, device=DEVICE)
    q_out, k_out = rope_triton.apply_rope(qe, ke, ce, ce)
    assert q_out.shape == qe.shape and k_out.shape == ke.shape


@needs_triton
def test_kernel_rejects_bad_arguments():
    q, k = torch.randn(1, 3, 2, 16, device=DEVICE), torch.randn(1, 3, 1, 16, device=DEVICE)
    cos, sin = _angles(1, 3, 16)
    with pytest.raises(ValueError, match="even head dim"):
        rope_triton.apply_rope(q[..., :15], k[..., :15], cos[..., :7], sin[..., :7])
    with pytest.raises(ValueError, match="cos"):
        rope_triton.apply_rope(q, k, cos[:, :2], sin[:, :2])
    with pytest.raises(ValueError, match="fp32"):
        rope_triton.apply_rope(q, k, cos.double(), sin.double())
    with pytest.raises(ValueError, match="alike"):
        rope_triton.apply_rope(q, k[:, :2], cos, sin)


# --- the reference ---------------------------------------------------------------------------------


def test_reference_is_hf_rotate_half():
    """naive.apply_rope is HF Llama's x * cos + rotate_half(x) * sin with cos = cat(c, c), bit for bit
    in fp32 (the formula gatedgen's model used before the fused kernel)."""
    q, k = torch.randn(2, 5, 4, 32), torch.randn(2, 5, 2, 32)
    cos, sin = rope_cos_sin(torch.tensor([[3, 4, 5, 6, 7], [900, 901, 902, 903, 904]]),
                            rope_inv_freq(32, 500000.0, None))

    def hf(x):
        c, s = torch.cat([cos, cos], -1)[:, :, None], torch.cat([sin, sin], -1)[:, :, None]
        x1, x2 = x.chunk(2, dim=-1)
        return x * c + torch.cat([-x2, x1], dim=-1) * s

    q_out, k_out = naive.apply_rope(q, k, cos, sin)
    assert torch.equal(q_out, hf(q)) and torch.equal(k_out, hf(k))
    # a rotation: norms kept per head
    assert torch.allclose(q_out.norm(dim=-1), q.norm(dim=-1), rtol=1e-5)


# --- the model: angles once per pass ---------------------------------------------------------------


def _llama(layers=3, scaling=None, seed=0, backend="reference", head_dim=8) -> CausalLM:
    cfg = ModelConfig(model_type="llama", vocab_size=97, hidden_size=48, num_hidden_layers=layers, num_heads=6,
                      num_kv_heads=2, head_dim=head_dim, intermediate_size=64, use_forget_gate=False,
                      rope_theta=10000.0, rope_scaling=scaling)
    torch.manual_seed(seed)
    return CausalLM(cfg, get_backend(backend)).eval().requires_grad_(False)


def test_angles_computed_once_per_pass(monkeypatch):
    import gatedgen.model as model_mod

    calls = spy_shapes(monkeypatch, model_mod, "rope_cos_sin")
    model = _llama(layers=3, scaling={"rope_type": "linear", "factor": 4.0})
    ids = torch.randint(0, 97, (2, 9))
    cache = model.new_cache(2, 16)
    model(ids[:, :7], cache)  # prefill: 3 layers, one table
    model(ids[:, 7:8], cache)  # decode step
    assert calls == [(2, 7), (2, 1)]
    calls.clear()
    full = model(ids)  # no cache: positions 0 .. 8 from the model's table
    model(ids[:, :5])  # a shorter pass slices the same table
    assert calls in ([], [(1, 9)])  # (the table may exist already from an earlier test: same config)
    # inverse frequencies: one tensor per model config and device, shared by all layers and passes
    t1 = rope_tables(model.cfg, torch.device("cpu"))
    assert t1 is rope_tables(model.cfg, torch.device("cpu"))
    assert torch.equal(t1.inv_freq, rope_inv_freq(8, 10000.0, {"rope_type": "linear", "factor": 4.0}))
    # and the cached paths give the full forward's logits
    cache.reset()
    steps = [model(ids[:, :4], cache)] + [model(ids[:, t : t + 1], cache) for t in range(4, 9)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4


def test_model_rope_matches_per_token_rotation(monkeypatch):
    """The model's RoPE (once-per-pass angles, dispatched kernel) against rotating each token by its own
    angles computed from scratch: llama3 scaling, ragged rows (one row prefilled further)."""
    model = _llama(layers=1, scaling=LLAMA3)
    attn = model.model.layers[0].attn
    seen = {}
    orig = attn.backend.attend

    def spy(q, k, v, g, cache, step, **kw):
        seen["q"], seen["k"] = q, k
        return orig(q, k, v, g, cache, step, **kw)

    monkeypatch.setattr(attn.backend, "attend", spy)
    x = torch.randn(2, 3, 48)
    cache = model.new_cache(2, 16)
    cache.seqlens.copy_(torch.tensor([5, 11], dtype=torch.int32))
    cache.lengths = [5, 11]
    attn(x, cache, 0, cache.begin(3, "decode"))
    q = attn.q_proj(x).view(2, 3, 6, 8).double()
    inv = rope_inv_freq(8, 10000.0, LLAMA3).double()
    for b, start in enumerate((5, 11)):
        for t in range(3):
            ang = (start + t) * inv
            c, s = ang.cos(), ang.sin()
            x1, x2 = q[b, t, :, :4], q[b, t, :, 4:]
            want = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
            assert (seen["q"][b, t].double() - want).abs().max() < 1e-5


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_dispatch_and_model(dtype):
    """CUDA: kernels.apply_rope runs the Triton kernel without grad and the reference under autograd;
    the fused model equals the reference-backend model."""
    import kernels
    from kernels import dispatch

    q, k = _fused_qk(2, 5, 9, 3, 64, dtype)
    cos, sin = _angles(2, 5, 64)
    assert dispatch._fused_impl("rope", "rope", "apply_rope", q) is rope_triton.apply_rope
    qg = q.detach().clone().requires_grad_()
    assert dispatch._fused_impl("rope", "rope", "apply_rope", qg) is naive.apply_rope
    q_out, _ = kernels.apply_rope(qg, k, cos, sin)
    q_out.float().sum().backward()
    assert qg.grad is not None
    ref = _llama(layers=2, scaling=LLAMA3, head_dim=64)
    gpu = _llama(layers=2, scaling=LLAMA3, head_dim=64, backend="auto")
    gpu.load_state_dict(ref.state_dict())
    gpu = gpu.to("cuda", dtype)
    ids = torch.randint(0, 97, (2, 13))
    tol = 2e-3 if dtype == torch.float32 else 3e-2  # as tests/test_gpu_model.py
    assert rel_err(gpu(ids.cuda()).cpu(), ref(ids)) < tol
    c_ref, c_gpu = ref.new_cache(2, 32), gpu.new_cache(2, 32)
    a, b = ref(ids[:, :9], c_ref), gpu(ids[:, :9].cuda(), c_gpu).cpu()
    assert rel_err(b, a) < tol
    for t in range(9, 13):
        a, b = ref(ids[:, t : t + 1], c_ref), gpu(ids[:, t : t + 1].cuda(), c_gpu).cpu()
        assert rel_err(b, a) < tol
