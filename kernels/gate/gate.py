"""Triton forget gate fused with the KV-cache append (same semantics as ``naive.append_kv``).

Program (c, b, h) copies token block c of the Tn new keys/values of KV head h of sequence b to
positions L + c * BT .. (L = cache_seqlens[b], read on the device) and, for its G query heads, turns
the raw gate logits into log gates, g = logsigmoid(f) = min(f, 0) - log(1 + exp(-|f|)), and
continues their running sum from gc[L - 1] (0 for an empty sequence) plus the gates of the tokens
before its block (recomputed from f), so a long prompt is appended by many programs at once. One launch replaces the eager
``logsigmoid``, the fp32 cast and the cache append; k, v and f may be strided views (the pieces of
one fused q/k/v/f projection). No host synchronisation: safe inside a CUDA graph. Tokens that would
land past Tmax are dropped, as in ``kernels.attn.decoding.update_cache``.
"""

from __future__ import annotations

import torch

from kernels.attn.decoding import append_kv as _append


def append_kv(
    k_cache: torch.Tensor,  # [B, Tmax, H, D]
    v_cache: torch.Tensor,  # [B, Tmax, H, D]
    gc_cache: torch.Tensor | None,  # [B, Tmax, HQ] fp32 contiguous
    k: torch.Tensor,  # [B, Tn, H, D]
    v: torch.Tensor,  # [B, Tn, H, D]
    f: torch.Tensor | None,  # [B, Tn, HQ] forget-gate logits
    cache_seqlens: torch.Tensor,  # int32 [B]
) -> None:
    _append(k_cache, v_cache, gc_cache, k, v, f, cache_seqlens, logits=True)
