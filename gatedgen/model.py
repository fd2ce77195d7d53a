"""The Forgetting Transformer (FoX) and its ungated relatives, written like the equations.

Block (pre-norm):
    h = x + Attn(RMSNorm(x))
    y = h + MLP(RMSNorm(h)),   MLP(u) = W_down(silu(W_gate u) * W_up u)
Attention with a forget gate (Lin et al., 2025):
    q_t = W_q x_t, k_t = W_k x_t, v_t = W_v x_t          (optional per-head RMSNorm of q, k; RoPE)
    g_t = logsigmoid(w_f . x_t + b_f)                     per query head, fp32
    o_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(D) + sum_{l=j+1..i} g_l) v_j
    y_t = W_o(o_t * sigmoid(W_g x_t))                      (output gate optional)
Without a forget gate (Llama family) g is None and this is plain causal softmax attention.
FoX Pro (official release) adds, per head:
    k~_t = W_k x_t,  a_t = sigmoid(w_a . x_t),  k_t = a_t k~_{t-1} + (1 - a_t) k~_t   (k~_{-1} = 0;
    before the k norm; values likewise), and o_t -> RMSNorm_head(o_t) before the output gate.

Parameter names follow fla's ``forgetting_transformer`` checkpoints (gatedgen's canonical names).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from gatedgen.attention import AttentionBackend, Step, get_backend
from gatedgen.cache import KVCache
from gatedgen.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * w over the last dim, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without residual: the normed x. With one: (norm(x + residual), x + residual), one fused pass."""
        y, h = kernels.rms_norm(x, self.weight, self.eps, residual)  # Triton on CUDA (kernels/norm)
        return y if residual is None else (y, h)


class HeadRMSNorm(nn.Module):
    """RMSNorm of each head's D channels; weight [heads * D] (per channel) or [D] (shared)."""

    def __init__(self, heads: int, head_dim: int, eps: float, shared: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim if shared else heads * head_dim))
        self.heads, self.head_dim, self.eps = heads, head_dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, heads, D]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float().view(-1, self.head_dim)  # [heads or 1, D]
        return (xf * w).to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None, device=None) -> torch.Tensor:
    """Inverse frequencies [D/2] of RoPE, with HF's ``linear`` or ``llama3`` rope_scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).double() / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, a smooth band between
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor,
                               torch.where(wavelen < old_len / high, inv_freq, blended))
    return inv_freq.float()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, D/2] fp32 of the angles positions * inv_freq, positions [B, T] (HF Llama
    convention: both halves of a head rotate by these angles)."""
    angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    return angles.cos(), angles.sin()


class RopeTables:
    """A model's RoPE constants on one device, computed once (not per layer, not per pass): the inverse
    frequencies [D/2] with rope_scaling applied, and cos, sin [1, n, D/2] of positions 0 .. n-1 for
    passes without a cache (grown to the longest pass seen). Kept tensors are made outside inference
    mode, so that a later pass under autograd may save them for backward."""

    def __init__(self, cfg: ModelConfig, device: torch.device):
        with torch.inference_mode(False):
            self.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, device)
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None

    def first(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, T, D/2] of positions 0 .. T-1."""
        if self.prefix is None or self.prefix[0].shape[1] < T:
            with torch.inference_mode(False):
                table = rope_cos_sin(torch.arange(T, device=self.inv_freq.device)[None], self.inv_freq)
            if _capturing(self.inv_freq.device):
                return table
            self.prefix = table
        return self.prefix[0][:, :T], self.prefix[1][:, :T]


_ROPE_TABLES: dict[tuple, RopeTables] = {}


def _capturing(device: torch.device) -> bool:
    # inside a CUDA-graph capture kernels only run at replay: nothing computed there may be kept
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def rope_tables(cfg: ModelConfig, device: torch.device) -> RopeTables:
    key = (cfg.head_dim, cfg.rope_theta, repr(sorted((cfg.rope_scaling or {}).items())), device)
    tables = _ROPE_TABLES.get(key)
    if tables is None:
        tables = RopeTables(cfg, device)
        if not _capturing(device):
            _ROPE_TABLES[key] = tables
    return tables


def pass_cos_sin(cfg: ModelConfig, step: Step | None, T: int, device: torch.device):
    """cos, sin of this pass's positions, computed once per pass and shared by all layers: kept on the
    Step, from its device positions ([B, T, D/2]; a captured decode step recomputes them at each
    replay), or, without a cache, positions 0 .. T-1 of every row ([1, T, D/2], a cached table)."""
    tables = rope_tables(cfg, device)
    if step is None:
        return tables.first(T)
    if step.rope is None:
        step.rope = rope_cos_sin(step.positions, tables.inv_freq)
    return step.rope


def token_shift(
    cur: torch.Tensor,  # [B, T, H, D] pre-mix k~ (or v~) of the new tokens
    logits: torch.Tensor,  # [B, T, H] w_a . x_t
    history: torch.Tensor | None,  # [B, Tmax, H, D] pre-mix values of cached positions (appended here)
    step: Step | None,
) -> torch.Tensor:  # [B, T, H, D]  a_t * cur_{t-1} + (1 - a_t) * cur_t, cur_{-1} = 0
    B = cur.shape[0]
    prev0 = torch.zeros_like(cur[:, :1])  # [B, 1, H, D] the token before the first new one
    if history is not None:
        rows = torch.arange(B, device=cur.device)
        seqlens = step.seqlens.long()
        last = history[rows, (seqlens - 1).clamp(min=0)]  # [B, H, D]
        prev0 = torch.where((seqlens > 0)[:, None, None], last, torch.zeros_like(last))[:, None]
        history[rows[:, None], step.positions] = cur  # ragged: each sequence at its own positions
    prev = torch.cat([prev0, cur[:, :-1]], dim=1)
    a = torch.sigmoid(logits.float())[..., None]  # [B, T, H, 1]
    return (a * prev.float() + (1 - a) * cur.float()).to(cur.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend):
        super().__init__()
        C, D = cfg.hidden_size, cfg.head_dim
        self.cfg, self.backend = cfg, backend
        self.q_proj = nn.Linear(C, cfg.q_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(C, cfg.kv_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(C, cfg.kv_dim, bias=cfg.qkv_bias)
        if cfg.use_forget_gate:
            self.f_proj = nn.Linear(C, cfg.num_heads, bias=True)
        if cfg.use_output_gate:
            self.g_proj = nn.Linear(C, cfg.q_dim, bias=False)
        if cfg.use_k_shift:
            self.k_shift_proj = nn.Linear(C, cfg.num_kv_heads, bias=False)
        if cfg.use_v_shift:
            self.v_shift_proj = nn.Linear(C, cfg.num_kv_heads, bias=False)
        if cfg.use_output_norm:
            self.o_norm = HeadRMSNorm(cfg.num_heads, D, cfg.norm_eps, shared=False)
        if cfg.qk_norm:
            self.q_norm = HeadRMSNorm(cfg.num_heads, D, cfg.qk_norm_eps, cfg.qk_norm_shared)
            self.k_norm = HeadRMSNorm(cfg.num_kv_heads, D, cfg.qk_norm_eps, cfg.qk_norm_shared)
        self.o_proj = nn.Linear(cfg.q_dim, C, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int, step: Step | None) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.num_heads, cfg.head_dim)  # [B, T, HQ, D]
        k = self.k_proj(x).view(B, T, cfg.num_kv_heads, cfg.head_dim)  # [B, T, H, D]
        v = self.v_proj(x).view(B, T, cfg.num_kv_heads, cfg.head_dim)  # [B, T, H, D]
        if cfg.use_k_shift:
            k = token_shift(k, self.k_shift_proj(x), cache.k_pre[layer] if cache is not None else None, step)
        if cfg.use_v_shift:
            v = token_shift(v, self.v_shift_proj(x), cache.v_pre[layer] if cache is not None else None, step)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.rope_theta is not None:  # q, k rotated by their positions' angles, one fused kernel
            cos, sin = pass_cos_sin(cfg, step, T, x.device)  # [B or 1, T, D/2]
            q, k = kernels.apply_rope(q, k, cos, sin)
        f = self.f_proj(x) if cfg.use_forget_gate else None  # [B, T, HQ] logits; g = logsigmoid(f) fp32
        layer_cache = cache.layer(layer) if cache is not None else None
        o = self.backend.attend(q, k, v, None, layer_cache, step, f=f)  # [B, T, HQ, D]
        if cfg.use_output_norm:
            o = self.o_norm(o)
        o = o.reshape(B, T, cfg.q_dim)
        if cfg.use_output_gate:
            gate = self.g_proj(x)
            o = o * (torch.sigmoid(gate) if cfg.output_gate_act == "sigmoid" else F.silu(gate))
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.intermediate_size = cfg.intermediate_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.glu(x))

    def glu(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate_proj x) * up_proj x. After engine.fuse_projections gate/up are the two row blocks of
        one weight (``fused_in``): one op then computes both products and the SwiGLU (at decode the
        skinny GEMM with a SwiGLU epilogue, one kernel; prefill: cuBLAS, then the SwiGLU kernel)."""
        fused = self._modules.get("fused_in")
        if fused is not None:
            return kernels.linear_swiglu(x, fused.weight, self.intermediate_size, fused.bias)
        return kernels.swiglu(self.gate_proj(x), self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg, backend)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cache: KVCache | None, layer: int,
                step: Step | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h = residual + x; h += Attn(norm(h)); returns (MLP(norm(h)), h): the caller adds the MLP
        output into the next norm (residual adds fused into the RMSNorm kernel)."""
        if residual is None:
            h, residual = self.attn_norm(x), x
        else:
            h, residual = self.attn_norm(x, residual)
        h, residual = self.mlp_norm(self.attn(h, cache, layer, step), residual)
        return self.mlp(h), residual


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, backend) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class CausalLM(nn.Module):
    """Token ids -> next-token logits, optionally appending to a KV cache."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend | None = None):
        super().__init__()
        self.cfg = cfg
        self.backend = backend or get_backend("auto")
        self.model = Backbone(cfg, self.backend)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embeddings.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] int64
        cache: KVCache | None = None,
        *,
        mode: str = "auto",  # with a cache: "auto", "prefill" or "decode"
        last_only: bool = False,  # logits of the last position only (prefill of long prompts)
    ) -> torch.Tensor:  # [B, T or 1, V] fp32
        T = input_ids.shape[1]
        step = cache.begin(T, mode) if cache is not None else None
        return self._run(input_ids, cache, step, slice(-1, None) if last_only else slice(None))

    def prefill_packed(self, prompts: list[list[int]], cache: KVCache, rows: list[int]) -> torch.Tensor:
        """Prefill several prompts in one varlen pass, prompt i into the empty cache row rows[i];
        returns the logits after each prompt's last token, [N, V] fp32."""
        step = cache.begin_packed(rows, [len(p) for p in prompts])
        ids = torch.tensor([[t for p in prompts for t in p]], device=cache.seqlens.device)  # [1, total]
        last = step.packed.cu_seqlens[1:].long() - 1  # [N] packed index of each prompt's last token
        return self._run(ids, cache, step, last)[0]

    def _run(self, input_ids: torch.Tensor, cache: KVCache | None, step, keep) -> torch.Tensor:
        """Embed, run the blocks (appending to the cache), then logits at the positions ``keep``."""
        x = self.model.embeddings(input_ids)  # [B, T, C]
        residual = None
        for i, block in enumerate(self.model.layers):
            x, residual = block(x, residual, cache, i, step)
        if cache is not None:
            cache.commit(step, input_ids.shape[1])
        return self.logits(x[:, keep], residual[:, keep])

    def logits(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LM head of the last block's output x and residual: W_out RMSNorm(x + residual), fp32 (at decode
        one kernel, the norm inside the skinny GEMM; elsewhere the norm kernel then the GEMM)."""
        norm = self.model.norm
        y, _ = kernels.rms_norm_linear(x, norm.weight, norm.eps, self.output_weight, residual=residual)
        return y.float()

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(self.cfg, batch_size, max_len, self.output_weight.dtype, self.output_weight.device)
