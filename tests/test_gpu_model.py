"""GPU (skipped without CUDA): the CUDA model at real head shapes against the CPU reference.

SmolLM2-135M's attention shapes (9 query heads over 3 key/value heads: a group of 3, D = 64) with
and without the forget gate / RoPE, in fp32 and bf16: prefill logits and decode steps on CUDA
(Triton kernels, fused ops) agree with the fp32 CPU reference path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda, rel_err
from gatedgen.attention import get_backend
from gatedgen.config import ModelConfig
from gatedgen.model import CausalLM
from kernels.attn import naive

TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}


def _config(gated: bool) -> ModelConfig:
    return ModelConfig(model_type="forgetting_transformer" if gated else "llama", vocab_size=512,
                       hidden_size=576, num_hidden_layers=3, num_heads=9, num_kv_heads=3, head_dim=64,
                       intermediate_size=1536, use_forget_gate=gated, tie_word_embeddings=True,
                       rope_theta=None if gated else 100000.0, norm_eps=1e-5)


def _pair(gated: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    ref = CausalLM(_config(gated), get_backend("reference")).eval().requires_grad_(False)
    for name, p in ref.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith("f_proj.bias"):
            p.copy_(torch.linspace(0.0, 5.0, p.numel()))
        else:
            p.normal_(0, 0.05)
    gpu = CausalLM(_config(gated), get_backend("auto")).eval().requires_grad_(False)
    gpu.load_state_dict(ref.state_dict())
    return ref, gpu.to("cuda", dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gated", [True, False], ids=["fox", "llama"])
def test_cuda_model_matches_cpu_reference(gated, dtype):
    ref, gpu = _pair(gated, dtype)
    ids = torch.randint(0, 512, (1, 45))
    want = ref(ids)
    got = gpu(ids.cuda()).cpu()
    assert rel_err(got, want) < TOL[dtype], "full forward"
    c_ref, c_gpu = ref.new_cache(1, 64), gpu.new_cache(1, 64)
    steps_ref = [ref(ids[:, :37], c_ref, last_only=True)]
    steps_gpu = [gpu(ids[:, :37].cuda(), c_gpu, last_only=True).cpu()]
    for t in range(37, 45):
        steps_ref.append(ref(ids[:, t : t + 1], c_ref))
        steps_gpu.append(gpu(ids[:, t : t + 1].cuda(), c_gpu).cpu())
    for i, (a, b) in enumerate(zip(steps_gpu, steps_ref)):
        assert rel_err(a, b) < TOL[dtype], f"step {i}"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gated", [True, False], ids=["g", "nog"])
def test_kernels_group_of_three(gated, dtype):
    from kernels.attn import decoding, parallel

    B, T, HQ, H, D = 2, 77, 9, 3, 64
    q = torch.randn(B, T, HQ, D, device="cuda", dtype=dtype)
    k = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
    v = torch.randn(B, T, H, D, device="cuda", dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, HQ, device="cuda") + 3) if gated else None
    ref = naive.parallel_attn(q.float(), k.float(), v.float(), g)
    assert rel_err(parallel.parallel_attn(q, k, v, g), ref) < TOL[dtype], "parallel"
    gc = torch.cumsum(g, 1) if gated else None
    lens = torch.tensor([T, 40], dtype=torch.int32, device="cuda")
    out = decoding.decode_attn(q[:, -1:], k, v, gc, cache_seqlens=lens)
    want = naive.decode_attn(q[:, -1:].float(), k.float(), v.float(), gc, cache_seqlens=lens)
    assert rel_err(out, want) < TOL[dtype], "decode"
