"""A preallocated KV cache: keys, values and running-sum log gates for every layer."""

from __future__ import annotations

import copy

import torch

import kernels
from gatedgen.attention import MAX_DECODE_TOKENS, LayerCache, Packed, Step
from gatedgen.config import ModelConfig
from gatedgen.errors import GatedgenError


class KVCache:
    """Keys/values [L, B, Tmax, H, D], gate running sums [L, B, Tmax, HQ] fp32, lengths [B].

    Models with a key/value shift (FoX Pro) also keep the pre-mix k~ / v~ of every cached position
    (``k_pre`` / ``v_pre`` [L, B, Tmax, H, D]): the next token mixes in k~ of the last one, and
    storing them per position (not just the last) keeps ``truncate`` exact at the cost of doubling
    the cache of those models.

    ``lengths`` mirrors ``seqlens`` on the host so that deciding what a pass does never needs a
    device synchronisation.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str):
        L, B, H, HQ, D = cfg.num_hidden_layers, batch_size, cfg.num_kv_heads, cfg.num_heads, cfg.head_dim
        self.max_len = max_len
        self.k = torch.zeros(L, B, max_len, H, D, dtype=dtype, device=device)
        self.v = torch.zeros(L, B, max_len, H, D, dtype=dtype, device=device)
        self.gc = torch.zeros(L, B, max_len, HQ, dtype=torch.float32, device=device) if cfg.gated else None
        shape = (L, B, max_len, H, D)
        self.k_pre = torch.zeros(shape, dtype=dtype, device=device) if cfg.use_k_shift else None
        self.v_pre = torch.zeros(shape, dtype=dtype, device=device) if cfg.use_v_shift else None
        self.seqlens = torch.zeros(B, dtype=torch.int32, device=device)
        self.lengths = [0] * B

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.k[i], self.v[i], self.gc[i] if self.gc is not None else None)

    def reset(self) -> None:
        self.seqlens.zero_()
        self.lengths = [0] * self.batch_size

    def truncate(self, length: int) -> None:
        """Forget everything after the first ``length`` tokens (all sequences)."""
        self.seqlens.clamp_(max=length)
        self.lengths = [min(n, length) for n in self.lengths]

    def begin(self, num_new: int, mode: str = "auto") -> Step:
        """Plan a pass that appends ``num_new`` tokens to every sequence."""
        if max(self.lengths) + num_new > self.max_len:
            raise GatedgenError(
                f"context full: {max(self.lengths)} cached + {num_new} new tokens > {self.max_len}"
            )
        uniform = len(set(self.lengths)) == 1
        if mode == "auto":
            mode = "decode" if (num_new <= MAX_DECODE_TOKENS and self.lengths[0] > 0) or not uniform else "prefill"
        if mode == "prefill" and not uniform:
            raise GatedgenError("prefill continuing a cache needs equal lengths in the batch")
        if mode == "decode" and num_new > MAX_DECODE_TOKENS:
            raise GatedgenError(f"a decode step takes at most {MAX_DECODE_TOKENS} tokens per sequence")
        offsets = torch.arange(num_new, device=self.seqlens.device)
        return Step(
            decode=mode == "decode",
            start=self.lengths[0],
            seqlens=self.seqlens,
            seqlens_after=self.seqlens + num_new,
            positions=self.seqlens.long()[:, None] + offsets[None, :],
        )

    def begin_packed(self, rows: list[int], lens: list[int]) -> Step:
        """Plan one pass that prefills prompt i (lens[i] tokens) into the empty row rows[i]."""
        if self.k_pre is not None or self.v_pre is not None:
            raise GatedgenError("packed prefill does not support the key/value shift (FoX Pro)")
        if any(self.lengths[r] for r in rows) or len(set(rows)) != len(rows) or min(lens) < 1:
            raise GatedgenError("packed prefill needs distinct empty rows and non-empty prompts")
        if max(lens) > self.max_len:
            raise GatedgenError(f"context full: a {max(lens)}-token prompt > {self.max_len}")
        dev = self.seqlens.device
        n = torch.tensor(lens, device=dev)
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=dev)
        cu[1:] = torch.cumsum(n, 0)
        pos = torch.cat([torch.arange(m, device=dev) for m in lens])
        after = self.seqlens.clone()
        after[torch.tensor(rows, device=dev)] = n.to(torch.int32)
        lengths_after = list(self.lengths)
        for r, m in zip(rows, lens):
            lengths_after[r] = m
        packed = Packed(cu_seqlens=cu, rows=torch.tensor(rows, device=dev).repeat_interleave(n), pos=pos,
                        starts=cu[:-1].long().repeat_interleave(n))
        return Step(decode=False, start=0, seqlens=self.seqlens, seqlens_after=after, positions=pos[None],
                    packed=packed, lengths_after=lengths_after)

    def commit(self, step: Step, num_new: int) -> None:
        """Advance the lengths after every layer has appended its keys and values."""
        self.seqlens.copy_(step.seqlens_after)
        if step.lengths_after is not None:
            self.lengths = list(step.lengths_after)
        else:
            self.lengths = [n + num_new for n in self.lengths]

    def row(self, b: int) -> KVCache:
        """A batch-1 view of sequence ``b`` sharing this cache's storage (prefill one prompt of a
        batch). Its device length is a view too; copy its host length back with ``lengths[b] = ...``."""
        view = copy.copy(self)
        for name, t in vars(self).items():
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == self.batch_size:
                setattr(view, name, t[:, b : b + 1])  # [L, B, ...] per-layer tensors
        view.seqlens = self.seqlens[b : b + 1]
        view.lengths = [self.lengths[b]]
        return view

    def rebase_gates(self) -> None:
        """Shift the running sums so the newest is 0 (exact; keeps fp32 fine over long contexts)."""
        if self.gc is None:
            return
        for i in range(self.gc.shape[0]):
            kernels.rebase_gate_cache(self.gc[i], self.seqlens)
