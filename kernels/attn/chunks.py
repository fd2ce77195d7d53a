"""Which tile of which packed sequence a program owns: the (sequence, tile) pairs that the parallel
attention kernels and the gate scan read for packed (cu_seqlens) batches, and the sequences' lengths on
the host (the Gluon forward's tile schedule)."""

from __future__ import annotations

import torch
import triton

# device -> (cu_seqlens, its version, lengths) of the last packed call
_LENGTHS: dict[torch.device, tuple[torch.Tensor, int | None, list[int]]] = {}
# (tile size, device) -> (cu_seqlens, its version, chunk indices) of the last packed call
_CHUNKS: dict[tuple, tuple[torch.Tensor, int | None, torch.Tensor]] = {}


def _kept(cache: dict, key, cu_seqlens: torch.Tensor, build):
    """``build()`` for this cu_seqlens, kept in ``cache[key]`` for the same tensor object and version
    (inference-mode tensors have no version counter)."""
    version = None if cu_seqlens.is_inference() else cu_seqlens._version
    hit = cache.get(key)
    if hit is not None and hit[0] is cu_seqlens and hit[1] == version:
        return hit[2]
    value = build()
    cache[key] = (cu_seqlens, version, value)
    return value


def sequence_lengths(cu_seqlens: torch.Tensor) -> list[int]:
    """The packed sequences' lengths as a host list.

    Reading them synchronises with the device, so the last result is kept for the same cu_seqlens
    tensor object (as fla's ``tensor_cache`` does): the layers of one packed pass share one read.
    Modifying cu_seqlens in place invalidates the entry, except for inference-mode tensors, which have
    no version counter: build a new cu_seqlens per batch of prompts.
    """
    return _kept(_LENGTHS, cu_seqlens.device, cu_seqlens, lambda: (cu_seqlens[1:] - cu_seqlens[:-1]).tolist())


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk: int) -> torch.Tensor:
    """[NT, 2] int32 pairs (sequence index, tile index within the sequence) for packed sequences, kept
    for the same cu_seqlens object like ``sequence_lengths``."""

    def build():
        lens = sequence_lengths(cu_seqlens)
        pairs = [(n, t) for n, length in enumerate(lens) for t in range(triton.cdiv(length, chunk))]
        if not pairs:
            return torch.zeros(0, 2, dtype=torch.int32, device=cu_seqlens.device)
        return torch.tensor(pairs, dtype=torch.int32, device=cu_seqlens.device)

    return _kept(_CHUNKS, (chunk, cu_seqlens.device), cu_seqlens, build)
