"""Reference forget gate fused with the KV-cache append (plain PyTorch, any device).

    g_t = logsigmoid(f_t)                     f: raw forget-gate logits [B, Tn, HQ] (any dtype)
    gc[b, L + t] = gc[b, L - 1] + sum_{s <= t} g_s     (0 before the first token; fp32)
    k_cache[b, L + t] = k[b, t],  v_cache[b, L + t] = v[b, t]

with L = cache_seqlens[b] (lengths before the append; not modified). Same contract as
``kernels.attn.naive.update_cache`` except that the gate arrives as logits: the Triton version does
the logsigmoid, the running sum and the append in one pass. f is None for an ungated cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attn import naive as attn_naive


def append_kv(
    k_cache: torch.Tensor,  # [B, Tmax, H, D]
    v_cache: torch.Tensor,  # [B, Tmax, H, D]
    gc_cache: torch.Tensor | None,  # [B, Tmax, HQ] fp32
    k: torch.Tensor,  # [B, Tn, H, D]
    v: torch.Tensor,  # [B, Tn, H, D]
    f: torch.Tensor | None,  # [B, Tn, HQ] forget-gate logits
    cache_seqlens: torch.Tensor,  # int32 [B]
) -> None:
    g = F.logsigmoid(f.float()) if f is not None else None
    attn_naive.update_cache(k_cache, v_cache, gc_cache, k, v, g, cache_seqlens)
