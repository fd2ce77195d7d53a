"""Plain-PyTorch reference for gated causal attention (prefill and decode).

These functions define the semantics that the Triton kernels in ``parallel.py`` and ``decoding.py``
share, argument for argument. They run on any device, compute in fp32 (fp64 when given fp64), and
process queries in blocks so that memory stays bounded for long prompts.

Notation (one layout everywhere):
    q       [B, Tq, HQ, D]   queries
    k, v    [B, Tk, H, D]    keys / values; HQ must be a multiple of H (GQA: query head i reads
                             key/value head i // (HQ // H))
    g       [B, T, HQ]       raw per-token log forget gates (fp32, <= 0)
    gc      [B, Tk, HQ]      running sums of the log gates, gc_t = sum_{l <= t} g_l

Score between query position i and key position j <= i:
    s_ij = scale * q_i . k_j + sum_{l = j+1 .. i} g_l = scale * q_i . k_j + gc_i - gc_j
"""

from __future__ import annotations

import torch

# Queries per block in the reference: bounds the [B, HQ, BQ, Tk] score tensor.
_BLOCK_Q = 256


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D [B, T, H, D]")
    B, Tq, HQ, D = q.shape
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
    H = k.shape[2]
    if HQ % H != 0:
        raise ValueError(f"query heads ({HQ}) must be a multiple of key/value heads ({H})")
    if k.shape[1] < Tq:
        raise ValueError(f"more queries ({Tq}) than keys ({k.shape[1]})")
    return HQ, H


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gc: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence batch, queries are the last Tq of Tk positions. Returns (o, lse) in fp32/fp64."""
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = HQ // H
    # [B, Tk, H, D] -> [B, HQ, Tk, D]: each query head sees its key/value head
    # contiguous: CPU matmuls over transposed strided views are ~100x slower
    kf = k.to(acc).repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    vf = v.to(acc).repeat_interleave(group, dim=2).transpose(1, 2).contiguous()
    gcf = gc.to(acc).transpose(1, 2) if gc is not None else None  # [B, HQ, Tk]
    o = torch.empty(B, HQ, Tq, v.shape[-1], dtype=acc, device=q.device)
    lse = torch.empty(B, HQ, Tq, dtype=acc, device=q.device)
    offset = Tk - Tq  # absolute position of query 0
    for i0 in range(0, Tq, _BLOCK_Q):
        i1 = min(i0 + _BLOCK_Q, Tq)
        n_keys = offset + i1  # keys beyond the last query of the block are never visible
        qb = q[:, i0:i1].to(acc).transpose(1, 2)  # [B, HQ, BQ, D]
        s = scale * (qb @ kf[:, :, :n_keys].transpose(-1, -2))  # [B, HQ, BQ, n_keys]
        if gcf is not None:
            s = s + gcf[:, :, offset + i0 : offset + i1, None] - gcf[:, :, None, :n_keys]
        pos_q = torch.arange(offset + i0, offset + i1, device=q.device)
        pos_k = torch.arange(n_keys, device=q.device)
        s = s.masked_fill(pos_k[None, :] > pos_q[:, None], float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        p = torch.exp(s - m)
        denom = p.sum(dim=-1, keepdim=True)
        o[:, :, i0:i1] = (p @ vf[:, :, :n_keys]) / denom
        lse[:, :, i0:i1] = (m + denom.log()).squeeze(-1)
    return o.transpose(1, 2), lse.transpose(1, 2)  # [B, Tq, HQ, D], [B, Tq, HQ]


def parallel_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    *,
    gc: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Gated causal attention for prefill.

    Args:
        q: [B, Tq, HQ, D].
        k, v: [B, Tk, H, D] with Tk >= Tq; the queries are the last Tq of the Tk positions
            (Tq < Tk continues a cache: a chat turn or a chunk of a long prompt).
        g: [B, Tq, HQ] raw log forget gates (fp32, <= 0); needs Tq == Tk. None = ungated.
        scale: defaults to D ** -0.5.
        cu_seqlens: int [N + 1] boundaries of packed sequences (B == 1, Tq == Tk).
        gc: [B, Tk, HQ] running sums of log gates (alternative to g; needed when Tq < Tk).
        return_lse: also return the natural log-sum-exp of each row's scores, [B, Tq, HQ] fp32.

    Returns:
        o [B, Tq, HQ, D] in q's dtype (and lse when asked).
    """
    _check_shapes(q, k, v)
    if g is not None and gc is not None:
        raise ValueError("give either g (raw log gates) or gc (running sums), not both")
    Tq, Tk = q.shape[1], k.shape[1]
    if g is not None and Tq != Tk:
        raise ValueError("raw gates g need Tq == Tk; pass running sums gc to continue a cache")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    if g is not None:
        gc = torch.cumsum(g.to(acc), dim=1)
    if cu_seqlens is None:
        o, lse = _attend(q, k, v, gc, scale)
    else:
        if q.shape[0] != 1 or Tq != Tk:
            raise ValueError("cu_seqlens needs B == 1 and Tq == Tk")
        o_parts, lse_parts = [], []
        bounds = cu_seqlens.tolist()
        for bos, eos in zip(bounds[:-1], bounds[1:]):
            # differences of gc within one sequence are the same as with a fresh running sum
            gc_seq = gc[:, bos:eos] if gc is not None else None
            o_s, lse_s = _attend(q[:, bos:eos], k[:, bos:eos], v[:, bos:eos], gc_seq, scale)
            o_parts.append(o_s)
            lse_parts.append(lse_s)
        o, lse = torch.cat(o_parts, dim=1), torch.cat(lse_parts, dim=1)
    o = o.to(q.dtype)
    return (o, lse.float()) if return_lse else o


def decode_attn(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gc_cache: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of Tq new tokens per sequence against a preallocated cache.

    Args:
        q: [B, Tq, HQ, D], the queries of the newest Tq tokens (causal among themselves).
        k_cache, v_cache: [B, Tmax, H, D]; the new tokens' keys/values are already appended.
        gc_cache: [B, Tmax, HQ] fp32 running sums of log gates (None = ungated).
        cache_seqlens: int [B], valid length of each sequence including the new tokens (>= Tq).
        scale: defaults to D ** -0.5.

    Returns:
        o [B, Tq, HQ, D] in q's dtype.
    """
    if cache_seqlens is None:
        raise ValueError("cache_seqlens is required")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    B, Tq = q.shape[:2]
    out = []
    for b, length in enumerate(cache_seqlens.tolist()):
        if length < Tq or length > k_cache.shape[1]:
            raise ValueError(f"cache_seqlens[{b}] = {length} is outside [{Tq}, {k_cache.shape[1]}]")
        gc = gc_cache[b : b + 1, :length] if gc_cache is not None else None
        o, _ = _attend(q[b : b + 1], k_cache[b : b + 1, :length], v_cache[b : b + 1, :length], gc, scale)
        out.append(o)
    return torch.cat(out, dim=0).to(q.dtype)


def update_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    gc_cache: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    cache_seqlens: torch.Tensor,
) -> None:
    """Append Tn new tokens per sequence to the cache, in place.

    Writes k, v [B, Tn, H, D] at positions cache_seqlens[b] .. cache_seqlens[b] + Tn - 1 and the
    running sums gc_cache[b, L + t] = gc_cache[b, L - 1] + sum_{s <= t} g[b, s] (0 before the first
    token). ``cache_seqlens`` (the lengths before the append) is not modified: the caller advances it.
    """
    Tn = k.shape[1]
    for b, length in enumerate(cache_seqlens.tolist()):
        if length + Tn > k_cache.shape[1]:
            raise ValueError(f"cache full: sequence {b} has {length} + {Tn} > {k_cache.shape[1]} tokens")
        k_cache[b, length : length + Tn] = k[b]
        v_cache[b, length : length + Tn] = v[b]
        if gc_cache is not None:
            if g is None:
                raise ValueError("a gated cache needs gates g")
            base = gc_cache[b, length - 1] if length > 0 else torch.zeros_like(gc_cache[b, 0])
            gc_cache[b, length : length + Tn] = base + torch.cumsum(g[b].float(), dim=0)


def rebase_gate_cache(gc_cache: torch.Tensor, cache_seqlens: torch.Tensor) -> None:
    """Subtract each sequence's newest running sum from all its entries, in place.

    Scores use only differences gc_i - gc_j, so this changes no result; it keeps the recent entries
    (the ones not yet forgotten) near zero where fp32 resolves them finely over very long contexts.
    """
    for b, length in enumerate(cache_seqlens.tolist()):
        if length > 0:
            gc_cache[b, :length] -= gc_cache[b, length - 1].clone()


def gate_scan(
    g: torch.Tensor, cu_seqlens: torch.Tensor | None = None, reverse: bool = False, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Running sums of g [B, T, HQ] along time within each sequence, fp32 [B, T, HQ], accumulated in fp64.

    forward:  out_t = sum_{bos <= l <= t} g_l   (gc from raw log gates)
    reverse:  out_t = sum_{t <= l < eos} g_l    (dg from the gradient of gc)
    Sequences are the B rows, or with ``cu_seqlens`` (B = 1) the packed spans [cu[n], cu[n + 1]), each
    summed on its own (a non-finite value stays in its sequence). ``rows``, when given, is an fp32
    buffer [B * HQ, TKP] (TKP >= T) whose first T columns receive the fp32 sums times log2(e), one row
    per (batch, head): the layout the forward kernel reads key gates from.
    """
    B, T, HQ = g.shape

    def scan(x):  # along dim 1, fp64
        return x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)

    if cu_seqlens is None:
        out = scan(g.double())
    else:
        out = torch.zeros(B, T, HQ, dtype=torch.float64, device=g.device)
        bounds = cu_seqlens.tolist()
        for bos, eos in zip(bounds[:-1], bounds[1:]):
            out[:, bos:eos] = scan(g[:, bos:eos].double())
    out = out.float()
    if rows is not None:  # from the fp32 sums, in fp32 (as the forward kernel scales gc)
        torch.mul(out.transpose(1, 2), 1.4426950408889634, out=rows.view(B, HQ, -1)[..., :T])
    return out
