"""CUDA-graph decoding: one captured graph per (batch-size bucket, sampling settings) replays a whole
decode step -- every layer's kernels and the sampler -- with one launch.

    decoder = GraphDecoder(model, cache, sampler)     # warm-up + capture (start-up, outside timing)
    next_ids = decoder.step(ids)                      # ids [B] int64 on the device -> next ids [B]

What makes the step capturable:
* the model's decode pass allocates nothing that depends on lengths and never reads a length on
  the host: ``cache.begin(1, "decode")`` computes positions and the new lengths from the device
  tensor ``cache.seqlens`` (replayed, they follow it as it grows) and ``commit`` advances
  ``cache.seqlens`` in place (a captured copy); the decode kernels cut their KV slices from the
  lengths on the device;
* the sampler has no host synchronisation and its random generator is registered with the graph;
* the host mirror ``cache.lengths`` is advanced here, outside the graph, after each replay (and the
  capture's own update of it is undone), as are the capacity checks that ``begin`` did on the host.

Warm-up runs (Triton compilation, cuBLAS handles) and capture touch the cache past the current
lengths only (those entries are dead until overwritten) and are undone on the host and device
lengths, the sampler's ``seen`` mask and its generator state.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

import kernels
from gatedgen.cache import KVCache
from gatedgen.errors import GatedgenError
from gatedgen.linears import use_skinny_linears
from gatedgen.model import Block, CausalLM, RMSNorm
from gatedgen.sampling import Sampler, SamplingParams

# Batch sizes that get their own graph; a batch runs in the smallest bucket that holds it.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs on CUDA devices unless GATEDGEN_NO_GRAPH=1 (or ``--no-graph``) turns them off."""
    return device.type == "cuda" and os.environ.get("GATEDGEN_NO_GRAPH", "0") != "1"


def batch_bucket(n: int) -> int:
    for b in BATCH_BUCKETS:
        if b >= n:
            return b
    return n


class _FusedLinear(nn.Module):
    """Several linear maps of the same input as one GEMM: ``parts(x)`` returns each one's output
    (views of one [..., sum N] result, computed once per input tensor)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([lin.weight.detach() for lin in linears]), requires_grad=False)
        if any(lin.bias is not None for lin in linears):
            self.bias = nn.Parameter(torch.cat([
                lin.bias.detach() if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                for lin in linears]), requires_grad=False)
        else:
            self.bias = None
        self.sizes = [lin.out_features for lin in linears]
        self._x: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x is not self._x:
            self._keep(x, kernels.linear(x, self.weight, self.bias))
        return self._parts

    def normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm) -> torch.Tensor:
        """h = x + residual (x without one); computes the maps of norm(h) -- one kernel at decode, the
        norm inside the GEMM -- and keeps them under h: ``parts(h)`` then returns them."""
        y, h = kernels.rms_norm_linear(x, norm.weight, norm.eps, self.weight, self.bias, residual)
        self._keep(h, y)
        return h

    def _keep(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._x, self._parts = x, y.split(self.sizes, dim=-1)


class _FusedPart(nn.Module):
    def __init__(self, fused: _FusedLinear, index: int):
        super().__init__()
        self.index = index
        object.__setattr__(self, "fused", fused)  # owned by the parent module, not registered twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.parts(x)[self.index]


# Linear maps of one block that read the same input: fused into one GEMM each.
_FUSE_GROUPS = {
    "attn": ("q_proj", "k_proj", "v_proj", "f_proj", "g_proj", "k_shift_proj", "v_shift_proj"),
    "mlp": ("gate_proj", "up_proj"),
}


class FusedBlock(Block):
    """A Block whose two RMSNorms run inside the GEMMs that read their outputs (kernels.rms_norm_linear:
    at batch-1 decode one kernel each, the norm inside the skinny GEMM; otherwise the norm kernel then
    cuBLAS, as in Block). Same function as Block:
        h = x + residual;  q, k, v, f, ... = W_attn RMSNorm(h)       (attn.fused_in.normed)
        a = Attn(...)                                                (its projections return those maps)
        h' = a + h;  u = SwiGLU(W_gate/up RMSNorm(h'))               (one rms_norm_linear)
        returns (W_down u, h')
    Attention is handed h, the key under which ``normed`` kept its projections: every read of its input
    goes through the fused projections (``_fold_norms`` checks that), so h itself is never projected."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cache, layer: int, step
                ) -> tuple[torch.Tensor, torch.Tensor]:
        attn, mlp = self.attn, self.mlp
        h = attn.fused_in.normed(x, residual, self.attn_norm)
        a = attn(h, cache, layer, step)
        u, h = kernels.rms_norm_linear(a, self.mlp_norm.weight, self.mlp_norm.eps, mlp.fused_in.weight,
                                       mlp.fused_in.bias, h, mlp.intermediate_size)
        return mlp.down_proj(u), h


def _fold_norms(block: Block) -> None:
    """Make ``block`` a FusedBlock (class swap, same parameters) when its attention input is read by the
    fused projections only and its MLP's gate/up are fused; otherwise leave it a Block."""
    attn = block.attn
    inputs = [getattr(attn, n) for n in _FUSE_GROUPS["attn"] if hasattr(attn, n)]
    fused = "fused_in" in attn._modules and "fused_in" in block.mlp._modules
    if type(block) is Block and fused and all(isinstance(m, _FusedPart) for m in inputs):
        block.__class__ = FusedBlock


def fuse_projections(model: CausalLM) -> CausalLM:
    """Replace q/k/v/f(/g/shift) and gate/up projections of every block by one GEMM per group (in
    place, weights moved not copied; idempotent), and fold each block's RMSNorms into those GEMMs
    (FusedBlock). Same function: each output is a column block of the fused product (outputs agree up
    to the GEMM's summation order)."""
    if getattr(model, "_projections_fused", False):
        return model
    for block in model.model.layers:
        for group, names in _FUSE_GROUPS.items():
            owner = getattr(block, group)
            present = [n for n in names if isinstance(getattr(owner, n, None), nn.Linear)]
            if len(present) < 2:
                continue
            fused = _FusedLinear([getattr(owner, n) for n in present])
            owner.fused_in = fused
            for i, n in enumerate(present):
                setattr(owner, n, _FusedPart(fused, i))
        _fold_norms(block)
    model._projections_fused = True
    return model


def _params_key(p: SamplingParams) -> tuple:
    return (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty)


class GraphDecoder:
    """A decode step of ``model`` on ``cache`` followed by ``sampler``, captured as one CUDA graph.

    Static buffers: ``ids`` [B, 1] int64 (the tokens fed) and ``next_ids`` [B] int64 (the tokens
    sampled). Replays append one token per sequence to ``cache`` (ragged lengths are fine).
    """

    def __init__(self, model: CausalLM, cache: KVCache, sampler: Sampler, warmup: int = 2):
        device = cache.seqlens.device
        if device.type != "cuda":
            raise GatedgenError("CUDA graphs need a CUDA device")
        if sampler.batch_size != cache.batch_size:
            raise GatedgenError(f"sampler batch {sampler.batch_size} != cache batch {cache.batch_size}")
        self.model, self.cache, self.sampler = model, cache, sampler
        B = cache.batch_size
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.next_ids = torch.zeros(B, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self._capture(warmup)

    @torch.inference_mode()
    def _step(self) -> None:
        logits = self.model(self.ids, self.cache, mode="decode")[:, -1]  # [B, V] fp32
        self.next_ids.copy_(self.sampler(logits))

    def _capture(self, warmup: int) -> None:
        cache, sampler = self.cache, self.sampler
        if max(cache.lengths) + 1 > cache.max_len:
            raise GatedgenError("context full: no room to capture a decode step")
        lengths, seqlens = list(cache.lengths), cache.seqlens.clone()
        random = not sampler.params.greedy  # greedy never draws: leave the generator alone
        seen, rng = sampler.seen.clone(), sampler.generator.get_state() if random else None

        def undo() -> None:
            cache.lengths = list(lengths)
            cache.seqlens.copy_(seqlens)
            sampler.seen.copy_(seen)

        stream = torch.cuda.Stream(device=self.ids.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._step()
                undo()
        torch.cuda.current_stream().wait_stream(stream)
        if random:
            self.graph.register_generator_state(sampler.generator)
        with torch.cuda.graph(self.graph, stream=stream):
            self._step()
        undo()
        if random:
            sampler.generator.set_state(rng)
        torch.cuda.current_stream().synchronize()

    def step(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``ids`` ([B] or [B, 1] on the device; None: the last sampled tokens) and return the
        next tokens [B] (the static buffer: copy it before the next step if you keep it)."""
        cache = self.cache
        if max(cache.lengths) + 1 > cache.max_len:
            raise GatedgenError(f"context full: {max(cache.lengths)} cached + 1 new token > {cache.max_len}")
        if ids is None:
            self.ids.copy_(self.next_ids[:, None])
        elif ids is not self.next_ids:
            self.ids.copy_(ids.view(-1, 1))
        else:
            self.ids.copy_(self.next_ids[:, None])
        self.graph.replay()
        cache.lengths = [n + 1 for n in cache.lengths]
        return self.next_ids


class TokenCopy:
    """Sampled token ids [B] on their way to the host without waiting for them at once: ``start(ids)``
    enqueues the copy into a pinned buffer in stream order (a later decode step may then overwrite
    ``ids``, the graph's static buffer); ``get()`` waits for that copy only and returns the ids. The
    generation loop starts the next decode step before it waits for the current token, so the GPU
    never idles while the host turns a token into text. On the CPU the copy is the ids themselves."""

    def __init__(self, batch_size: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.buffer = torch.empty(batch_size, dtype=torch.long, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None

    def start(self, ids: torch.Tensor) -> TokenCopy:
        self.buffer.copy_(ids.view(-1), non_blocking=self.cuda)
        if self.cuda:
            self.event.record()
        return self

    def get(self) -> list[int]:
        if self.cuda:
            self.event.synchronize()
        return self.buffer.tolist()


class Decoder:
    """Decode steps for one cache: graph replays on CUDA (one graph per sampling setting, kept), the
    eager model + sampler elsewhere or when graphs are off. ``sampler(params)`` gives the sampler the
    steps use (reset it and prime it per generation; sample the first token with it)."""

    def __init__(self, model: CausalLM, cache: KVCache, use_graphs: bool | None = None):
        self.model, self.cache = model, cache
        device = cache.seqlens.device
        self.use_graphs = graphs_enabled(device) if use_graphs is None else (use_graphs and device.type == "cuda")
        if device.type == "cuda" and os.environ.get("GATEDGEN_NO_FUSE", "0") != "1":
            fuse_projections(model)
        if device.type == "cuda" and os.environ.get("GATEDGEN_NO_SKINNY", "0") != "1":
            use_skinny_linears(model)  # decode-step GEMMs on the Triton skinny GEMM (kernels/gemm)
        self._samplers: dict[tuple, Sampler] = {}
        self._graphs: dict[tuple, GraphDecoder] = {}

    def sampler(self, params: SamplingParams) -> Sampler:
        key = _params_key(params)
        s = self._samplers.get(key)
        if s is None:
            s = Sampler(params, self.model.cfg.vocab_size, self.cache.batch_size, self.cache.seqlens.device)
            self._samplers[key] = s
        s.params = params
        s.reset()
        if params.seed is not None:
            s.generator.manual_seed(params.seed)
        return s

    def capture(self, params: SamplingParams) -> None:
        """Capture the graph for these settings now (start-up), if graphs are on."""
        key = _params_key(params)
        if max(self.cache.lengths) + 1 > self.cache.max_len:
            return  # no room for a step now: captured at the first step that fits
        if self.use_graphs and key not in self._graphs:
            sampler = self._samplers.get(key) or self.sampler(params)
            self._graphs[key] = GraphDecoder(self.model, self.cache, sampler)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """Feed ids [B] (device) and return the next ids [B] (device; valid until the next step)."""
        key = _params_key(params)
        if self.use_graphs:
            self.capture(params)
            return self._graphs[key].step(ids)
        logits = self.model(ids.view(-1, 1), self.cache, mode="decode")[:, -1]
        return self._samplers[key](logits)
