"""CUDA-graph prefill: the first pass of a prompt into an empty batch-1 cache, replayed from one
captured graph per prompt-length bucket (time to first token without ~30 layers x ~25 launches
of host work).

    graphs = PrefillGraphs(model, cache)          # batch-1 cache; nothing captured yet
    graphs.capture([128, 2048])                   # start-up, outside timing (or lazily at first use)
    logits = graphs.prefill(ids)                  # cache empty, len(ids) fits a bucket -> [1, V] fp32

A prompt of n tokens runs in the smallest bucket >= n (16, 32, ..., 2048; a cache shorter than a
bucket gets its own length as the bucket), padded with ``PAD_ID`` after its last token. Attention is
causal, so the padding changes nothing at the real positions: their keys, values and gate running
sums (summed from 0 forward) are those of the unpadded pass, and the entries the padding writes past
position n are dead -- after the pass the device ``seqlens`` and host ``lengths`` say n, and the next
pass overwrites them. The logits are those of token n - 1, picked on the device with an index
computed from a static length buffer, so the pass has fixed shapes and no host synchronisation.

What makes the pass capturable: ``cache.begin`` reads only the host lengths (0, a constant of the
capture) and computes positions and new lengths from the device ``seqlens``; the gate + append
kernel reads the lengths on the device; the parallel attention kernel gets host-constant shapes
(start 0, T = bucket). Models with a key/value shift (FoX Pro: ``cache.k_pre``) are not graphed.

Static buffers: one device int64 buffer ``[1 + largest bucket]`` holding the real length n and then
the padded ids (one host-to-device copy from a pinned staging buffer per prefill); every bucket's
graph reads its first 1 + bucket entries. The graphs share one memory pool: the logits a prefill
returns are valid until the next prefill (any bucket).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gatedgen.cache import KVCache
from gatedgen.errors import GatedgenError
from gatedgen.model import CausalLM

PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
PAD_ID = 0  # any valid id: padded positions come after the real ones and nothing real attends to them


def prefill_bucket(n: int, max_len: int, buckets: Iterable[int] = PREFILL_BUCKETS) -> int | None:
    """The padded length of an n-token prefill into an empty cache of ``max_len`` positions: the
    smallest bucket >= n, or ``max_len`` when that bucket would not fit the cache; None when n is
    beyond the largest bucket (or the cache)."""
    buckets = sorted(buckets)
    if n < 1 or n > max_len or n > buckets[-1]:
        return None
    bucket = next(b for b in buckets if b >= n)
    return min(bucket, max_len)


def graphable(model: CausalLM, cache: KVCache) -> bool:
    """Batch 1 and no key/value shift (its pre-mix history is written by eager indexing ops)."""
    return cache.batch_size == 1 and cache.k_pre is None and cache.v_pre is None and not (
        model.cfg.use_k_shift or model.cfg.use_v_shift)


@torch.inference_mode()
def padded_pass(model: CausalLM, cache: KVCache, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """One prefill of ``ids`` [1, bucket] (real tokens first, then padding) into the empty ``cache``;
    ``length`` int64 [1] on the device holds the real length n. Sets the device ``seqlens`` to n and
    returns the logits after token n - 1, [1, V] fp32. The host ``lengths`` are left at the bucket:
    the caller sets them to n (it knows n on the host). This is the pass the graphs capture."""
    if cache.lengths != [0]:
        raise GatedgenError("a padded prefill needs an empty batch-1 cache")
    step = cache.begin(ids.shape[1], "prefill")  # start 0: a constant of the capture
    last = length - 1  # [1] index of the real last token (device)
    logits = model._run(ids, cache, step, last)  # [1, 1, V]; commit set seqlens to the bucket
    cache.seqlens.copy_(length)  # the padded entries past n are dead
    return logits[:, -1]


def padded_prefill(model: CausalLM, cache: KVCache, ids: list[int], bucket: int) -> torch.Tensor:
    """Eager padded prefill (any device, any backend): same cache state and logits as the unpadded
    ``model(ids, cache, mode="prefill", last_only=True)[:, -1]`` up to summation order."""
    n = len(ids)
    if not 1 <= n <= bucket:
        raise GatedgenError(f"{n} tokens do not fit a bucket of {bucket}")
    dev = cache.seqlens.device
    x = torch.tensor([ids + [PAD_ID] * (bucket - n)], dtype=torch.long, device=dev)
    logits = padded_pass(model, cache, x, torch.tensor([n], dtype=torch.long, device=dev))
    cache.lengths = [n]
    return logits


class PrefillGraphs:
    """Graphed first prefills of one model into one batch-1 cache (see the module docstring).

    ``use_graphs=False`` runs the same padded passes on the same static buffers eagerly (any
    device): the host-side logic without capture, for tests on CPU.
    """

    def __init__(self, model: CausalLM, cache: KVCache, buckets: Iterable[int] = PREFILL_BUCKETS,
                 use_graphs: bool = True, warmup: int = 2):
        if not graphable(model, cache):
            raise GatedgenError("graphed prefill needs a batch-1 cache and a model without key/value shift")
        device = cache.seqlens.device
        if use_graphs and device.type != "cuda":
            raise GatedgenError("CUDA graphs need a CUDA device")
        self.model, self.cache, self.use_graphs, self.warmup = model, cache, use_graphs, warmup
        self.buckets = tuple(sorted(buckets))
        size = 1 + min(self.buckets[-1], cache.max_len)
        self._buf = torch.zeros(size, dtype=torch.long, device=device)  # [n, ids..., pads...]
        self._host = torch.zeros(size, dtype=torch.long, pin_memory=device.type == "cuda")
        self._host_np = self._host.numpy()
        self._copied = torch.cuda.Event() if device.type == "cuda" else None  # staging free again
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def bucket_for(self, n: int) -> int | None:
        return prefill_bucket(n, self.cache.max_len, self.buckets)

    def fits(self, n: int) -> bool:
        """A prefill of n tokens can run here (when the cache is empty)."""
        return self.bucket_for(n) is not None

    def _views(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._buf[None, 1 : 1 + bucket], self._buf[:1]  # ids [1, bucket], length [1]

    def capture(self, buckets: Iterable[int]) -> None:
        """Capture these buckets now (start-up, outside timing); the cache must be empty."""
        for b in buckets:
            if self.use_graphs and b not in self._graphs:
                self._capture(b)

    def prepare(self, n: int) -> None:
        """Capture the bucket of an n-token prompt now if it fits and is not captured yet."""
        b = self.bucket_for(n)
        if b is not None:
            self.capture([b])

    def _capture(self, bucket: int) -> None:
        cache = self.cache
        if cache.lengths != [0]:
            raise GatedgenError("prefill graphs are captured on an empty cache")
        if bucket > cache.max_len or bucket + 1 > self._buf.numel():
            raise GatedgenError(f"bucket {bucket} does not fit the cache ({cache.max_len})")
        ids, length = self._views(bucket)
        self._buf[0] = bucket
        self._buf[1:].fill_(PAD_ID)

        def undo() -> None:  # warm-up and capture wrote dead entries of the empty cache
            cache.lengths = [0]
            cache.seqlens.zero_()

        stream = torch.cuda.Stream(device=self._buf.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):  # Triton compilation, cuBLAS workspaces
                padded_pass(self.model, cache, ids, length)
                undo()
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            logits = padded_pass(self.model, cache, ids, length)
        undo()
        torch.cuda.current_stream().synchronize()
        self._graphs[bucket] = (graph, logits)

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Prefill ``ids`` into the empty cache; the logits after the last one, [1, V] fp32 (a static
        buffer when graphed: valid until the next prefill). Captures the bucket on first use."""
        cache, n = self.cache, len(ids)
        bucket = self.bucket_for(n)
        if bucket is None:
            raise GatedgenError(f"a {n}-token prefill fits no bucket (largest {self.buckets[-1]}, "
                                f"cache {cache.max_len})")
        if cache.lengths != [0]:
            raise GatedgenError("graphed prefill needs an empty cache")
        if self.use_graphs:
            self.capture([bucket])  # first use of the bucket (it overwrites the static buffer)
        if self._copied is not None:
            self._copied.synchronize()  # the previous copy out of the staging buffer is done
        host = self._host_np
        host[0] = n
        host[1 : 1 + n] = ids
        host[1 + n : 1 + bucket] = PAD_ID
        self._buf[: 1 + bucket].copy_(self._host[: 1 + bucket], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        if self.use_graphs:
            graph, logits = self._graphs[bucket]
            graph.replay()
        else:
            logits = padded_pass(self.model, cache, *self._views(bucket))
        cache.lengths = [n]
        return logits
