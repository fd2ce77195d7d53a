"""The official FoX release (zhixuan-lin/forgetting-transformer), ``forgetting_transformer-project_fox``.

Both variants of the paper: FoX (LLaMA) - plain q/k/v, optional RoPE - and FoX (Pro) - QK-norm
(weights of shape [head_dim] shared across heads in the released checkpoints), key/value shift
(``{k,v}_proj.linear`` + ``{k,v}_proj.shift_proj`` [num_heads, hidden]), output norm and output gate.
Forget gate types ``full`` (data-dependent) and ``none`` (plain softmax attention).

Tensor renames onto gatedgen's canonical (fla) names, done by ``sanitize``:
    attn.fgate_proj            -> attn.f_proj
    attn.ogate_proj            -> attn.g_proj
    attn.output_norm           -> attn.o_norm
    attn.{k,v}_proj.linear     -> attn.{k,v}_proj
    attn.{k,v}_proj.shift_proj -> attn.{k,v}_shift_proj
    mlp.gate_proj [2I, C]      -> mlp.gate_proj (first half) + mlp.up_proj (second half)

The release tokenizes with GPT-2 BPE over JSON-escaped text and prepends BOS 50256
(``gatedgen.json_tokenizer``). Its config.json keeps the HF defaults bos 1 / eos 2, which are
ordinary GPT-2 tokens; with the GPT-2 vocabulary (50257) gatedgen uses 50256 for both instead.
"""

from __future__ import annotations

from typing import Any

import torch

from gatedgen.config import ModelConfig, read_bool, read_float, read_ids, read_int, require_positive
from gatedgen.errors import GatedgenError
from gatedgen.formats.fla_fox import mlp_width

MODEL_TYPES = ("forgetting_transformer-project_fox",)
GPT2_VOCAB, GPT2_EOT = 50257, 50256
FGATE_TYPES = ("full", "none")

_RENAMES = {
    ".attn.fgate_proj.": ".attn.f_proj.",
    ".attn.ogate_proj.": ".attn.g_proj.",
    ".attn.output_norm.": ".attn.o_norm.",
    ".attn.k_proj.linear.": ".attn.k_proj.",
    ".attn.v_proj.linear.": ".attn.v_proj.",
    ".attn.k_proj.shift_proj.": ".attn.k_shift_proj.",
    ".attn.v_proj.shift_proj.": ".attn.v_shift_proj.",
}


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    hidden = read_int(d, "hidden_size", 2048)
    heads = read_int(d, "num_heads", 32)
    require_positive(hidden_size=hidden, num_heads=heads)
    if hidden % heads != 0:
        raise GatedgenError(f"config.json: hidden_size ({hidden}) must be a multiple of num_heads ({heads})")
    kv_heads = read_int(d, "num_kv_heads") or heads
    if kv_heads != heads:
        raise GatedgenError("config.json: num_kv_heads (GQA) is not part of the official FoX release")
    if d.get("window_size") is not None:
        raise GatedgenError("config.json: window_size is not supported")
    act = d.get("hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise GatedgenError(f"config.json: hidden_act {act!r} is not supported (swish only)")
    fgate = d.get("fgate_type", "full")
    if fgate not in FGATE_TYPES:
        raise GatedgenError(f"config.json: fgate_type {fgate!r} is not supported (gatedgen reads: "
                            f"{', '.join(FGATE_TYPES)})")
    use_output_gate = read_bool(d, "use_output_gate", False)
    use_output_norm = read_bool(d, "use_output_norm", False)
    ogate_act = d.get("ogate_act", "sigmoid")
    if use_output_gate and use_output_norm and ogate_act != "sigmoid":
        raise GatedgenError("config.json: an output norm with an output gate needs ogate_act sigmoid")
    vocab = read_int(d, "vocab_size", 32000)
    bos, eos = read_int(d, "bos_token_id"), read_ids(d, "eos_token_id")
    if vocab == GPT2_VOCAB:
        bos, eos = GPT2_EOT, [GPT2_EOT]
    return ModelConfig(
        model_type=MODEL_TYPES[0],
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=read_int(d, "num_hidden_layers", 24),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=mlp_width(hidden, read_float(d, "hidden_ratio", 4),
                                    read_int(d, "intermediate_size")),
        use_forget_gate=fgate == "full",
        qkv_bias=False,
        qk_norm=read_bool(d, "qk_norm", False),
        qk_norm_eps=1e-5,
        qk_norm_shared=read_bool(d, "qk_norm_share_param_across_head", False),
        use_output_gate=use_output_gate,
        output_gate_act=ogate_act if isinstance(ogate_act, str) else repr(ogate_act),
        use_output_norm=use_output_norm,
        use_k_shift=read_bool(d, "use_k_shift", False),
        use_v_shift=read_bool(d, "use_v_shift", False),
        norm_eps=read_float(d, "norm_eps", 1e-6),
        tie_word_embeddings=read_bool(d, "tie_word_embeddings", False),
        rope_theta=read_float(d, "rope_base", 500000.0) if read_bool(d, "use_rope", False) else None,
        max_position_embeddings=read_int(d, "max_position_embeddings"),
        bos_token_id=bos,
        eos_token_id=eos,
        torch_dtype=d.get("torch_dtype") if isinstance(d.get("torch_dtype"), str) else None,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": MODEL_TYPES[0],
        "architectures": ["ForgettingTransformerForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_heads": cfg.num_heads,
        "num_kv_heads": None,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "swish",
        "window_size": None,
        "fgate_type": "full" if cfg.use_forget_gate else "none",
        "use_rope": cfg.rope_theta is not None,
        "rope_base": cfg.rope_theta if cfg.rope_theta is not None else 500000.0,
        "use_output_gate": cfg.use_output_gate,
        "ogate_act": cfg.output_gate_act,
        "use_output_norm": cfg.use_output_norm,
        "qk_norm": cfg.qk_norm,
        "qk_norm_share_param_across_head": cfg.qk_norm_shared,
        "use_k_shift": cfg.use_k_shift,
        "use_v_shift": cfg.use_v_shift,
        "norm_eps": cfg.norm_eps,
        **cfg.common_hf_fields(),
    }


def sanitize(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(".rotary.inv_freq"):  # a RoPE buffer, recomputed
            continue
        for old, new in _RENAMES.items():
            if old in name:
                name = name.replace(old, new)
                break
        out[name] = t
    for name in [n for n in out if n.endswith(".mlp.gate_proj.weight")]:
        up = name.replace(".gate_proj.", ".up_proj.")
        if up not in out and out[name].shape[0] == 2 * cfg.intermediate_size:
            out[name], out[up] = (half.contiguous() for half in out[name].chunk(2, dim=0))
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
