"""The attention backend seam: the model hands q, k, v, g to a backend, which appends k, v and
the gates' running sums to the cache and runs the prefill or decode kernel.

Backends are modules with the kernel signatures of ``kernels.attn.naive``:
    "reference"  plain PyTorch (kernels.attn.naive), any device
    "auto"       Triton on CUDA tensors, reference elsewhere (kernels.dispatch)
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

import kernels
from kernels.attn import naive
from kernels.gate import naive as gate_naive
from gatedgen.errors import GatedgenError

# Up to this many new tokens per sequence go through the decode kernel when the cache is not empty.
MAX_DECODE_TOKENS = 16


@dataclass
class Step:
    """What one forward pass does to the cache; built once per pass, shared by all layers."""

    decode: bool  # decode kernel (ragged lengths allowed) vs parallel prefill kernel
    start: int  # tokens already cached per sequence (uniform batch; prefill path only)
    seqlens: torch.Tensor  # int32 [B] lengths before this pass (device)
    seqlens_after: torch.Tensor  # int32 [B] lengths after this pass (device)
    positions: torch.Tensor  # int64 [B, T] absolute positions of the new tokens (for RoPE)
    packed: Packed | None = None  # several prompts packed in one row (prefill of empty cache rows)
    lengths_after: list[int] | None = None  # host lengths after a packed pass
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # RoPE cos, sin [B, T, D/2] of this pass (model fills)


@dataclass
class Packed:
    """N prompts packed into one [1, total] pass, prompt i going to cache row rows[i] from position 0."""

    cu_seqlens: torch.Tensor  # int32 [N + 1] prompt boundaries in the packed tokens
    rows: torch.Tensor  # int64 [total] cache row of each packed token
    pos: torch.Tensor  # int64 [total] position of each packed token in its row
    starts: torch.Tensor  # int64 [total] packed index of the first token of each token's prompt


@dataclass
class LayerCache:
    k: torch.Tensor  # [B, Tmax, H, D]
    v: torch.Tensor  # [B, Tmax, H, D]
    gc: torch.Tensor | None  # [B, Tmax, HQ] fp32 running sums of log gates (None: ungated model)


class AttentionBackend:
    def __init__(self, ops: ModuleType, name: str):
        self.ops = ops
        self.name = name
        self.gate_ops = kernels if name == "auto" else gate_naive  # append_kv (fused forget gate)

    def attend(
        self,
        q: torch.Tensor,  # [B, T, HQ, D]
        k: torch.Tensor,  # [B, T, H, D]
        v: torch.Tensor,  # [B, T, H, D]
        g: torch.Tensor | None,  # [B, T, HQ] fp32 log forget gates
        cache: LayerCache | None,
        step: Step | None,
        *,
        f: torch.Tensor | None = None,  # [B, T, HQ] forget-gate logits instead of g = logsigmoid(f)
    ) -> torch.Tensor:  # [B, T, HQ, D]
        if cache is None:  # one full forward, nothing kept
            if f is not None:
                g = torch.nn.functional.logsigmoid(f.float())
            return self.ops.parallel_attn(q, k, v, g)
        if step.packed is not None:
            return self._attend_packed(q, k, v, g, f, cache, step.packed)
        if f is not None:  # logsigmoid, running sum and append in one pass (kernels/gate)
            self.gate_ops.append_kv(cache.k, cache.v, cache.gc, k, v, f, step.seqlens)
        else:
            self.ops.update_cache(cache.k, cache.v, cache.gc, k, v, g, step.seqlens)
        if step.decode:
            return self.ops.decode_attn(q, cache.k, cache.v, cache.gc, cache_seqlens=step.seqlens_after)
        if step.start == 0 and (f is None or cache.gc is None):
            return self.ops.parallel_attn(q, k, v, g)
        end = step.start + q.shape[1]  # queries are the last T of `end` cached positions
        if step.start == 0:  # the running sums are in the cache already
            return self.ops.parallel_attn(q, k, v, gc=cache.gc[:, :end])
        gc = cache.gc[:, :end] if cache.gc is not None else None
        return self.ops.parallel_attn(q, cache.k[:, :end], cache.v[:, :end], gc=gc)


    def _attend_packed(self, q, k, v, g, f, cache: LayerCache, p: Packed) -> torch.Tensor:
        """Varlen prefill: scatter each prompt's keys, values and running sums (restarted per prompt)
        into its cache row, and attend within each prompt (cu_seqlens)."""
        if f is not None:
            g = torch.nn.functional.logsigmoid(f.float())
        cache.k[p.rows, p.pos] = k[0]  # [total, H, D]
        cache.v[p.rows, p.pos] = v[0]
        if cache.gc is not None:
            total = torch.cumsum(g[0].double(), dim=0)  # [total, HQ] over all prompts
            before = torch.cat([total.new_zeros(1, total.shape[1]), total])[p.starts]  # sum before the prompt
            cache.gc[p.rows, p.pos] = (total - before).float()
        return self.ops.parallel_attn(q, k, v, g, cu_seqlens=p.cu_seqlens)


def get_backend(name: str = "auto") -> AttentionBackend:
    if name == "reference":
        return AttentionBackend(naive, "reference")
    if name == "auto":
        return AttentionBackend(kernels, "auto")
    raise GatedgenError(f"unknown attention backend {name!r} (auto, reference)")
