"""The Llama family: ``llama``, ``mistral``, ``qwen2`` (HF transformers' key names).

Run as gatedgen's model with no forget gate (plain causal softmax attention) plus RoPE, through
the same kernels. Keys are renamed onto the canonical (fla) names:
    model.embed_tokens                 -> model.embeddings
    model.layers.{i}.input_layernorm   -> model.layers.{i}.attn_norm
    model.layers.{i}.self_attn.*       -> model.layers.{i}.attn.*
    model.layers.{i}.post_attention_layernorm -> model.layers.{i}.mlp_norm
RoPE scaling types ``linear`` and ``llama3`` are applied; any other type is a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from gatedgen.config import ModelConfig, read_bool, read_float, read_ids, read_int, require_positive
from gatedgen.errors import GatedgenError

MODEL_TYPES = ("llama", "mistral", "qwen2")

_RENAMES = (
    ("model.embed_tokens.", "model.embeddings."),
    (".input_layernorm.", ".attn_norm."),
    (".post_attention_layernorm.", ".mlp_norm."),
    (".self_attn.", ".attn."),
)


def _rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and rope_scaling, from the classic keys or transformers v5's ``rope_parameters``."""
    params = d.get("rope_parameters")
    if isinstance(params, dict):
        theta = read_float(params, "rope_theta", read_float(d, "rope_theta", 10000.0))
        scaling = params if params.get("rope_type", "default") != "default" else None
    else:
        theta = read_float(d, "rope_theta", 10000.0)
        scaling = d.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return theta, scaling


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    model_type = d.get("model_type")
    hidden = read_int(d, "hidden_size", required=True)
    heads = read_int(d, "num_attention_heads", required=True)
    head_dim = read_int(d, "head_dim")
    require_positive(hidden_size=hidden, num_attention_heads=heads)
    if head_dim is None:
        if hidden % heads != 0:
            raise GatedgenError(f"config.json: hidden_size ({hidden}) is not a multiple of heads ({heads})")
        head_dim = hidden // heads
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise GatedgenError(f"config.json: hidden_act {act!r} is not supported (silu only)")
    if read_bool(d, "mlp_bias", False):
        raise GatedgenError("config.json: mlp_bias is not supported")
    if model_type == "qwen2":
        qkv_bias = True  # Qwen2 always has q/k/v biases and none on o_proj
    elif read_bool(d, "attention_bias", False):
        raise GatedgenError("config.json: attention_bias (also on o_proj) is not supported")
    else:
        qkv_bias = False
    max_pos = read_int(d, "max_position_embeddings")
    window = read_int(d, "sliding_window")
    if window is not None and (model_type == "mistral" or read_bool(d, "use_sliding_window", False)):
        # attention within the window is exact; the context is capped there instead of sliding
        max_pos = window if max_pos is None else min(max_pos, window)
    theta, scaling = _rope(d)
    return ModelConfig(
        model_type=model_type,
        vocab_size=read_int(d, "vocab_size", required=True),
        hidden_size=hidden,
        num_hidden_layers=read_int(d, "num_hidden_layers", required=True),
        num_heads=heads,
        num_kv_heads=read_int(d, "num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=read_int(d, "intermediate_size", required=True),
        use_forget_gate=False,
        qkv_bias=qkv_bias,
        norm_eps=read_float(d, "rms_norm_eps", 1e-6),
        tie_word_embeddings=read_bool(d, "tie_word_embeddings", False),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=max_pos,
        bos_token_id=read_int(d, "bos_token_id"),
        eos_token_id=read_ids(d, "eos_token_id"),
        torch_dtype=d.get("torch_dtype") if isinstance(d.get("torch_dtype"), str) else None,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    out: dict[str, Any] = {
        "model_type": cfg.model_type,
        "architectures": [arch[cfg.model_type]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        **cfg.common_hf_fields(),
    }
    if cfg.model_type != "qwen2":
        out["attention_bias"] = False
        out["mlp_bias"] = False
    return out


def canonical_name(name: str) -> str:
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def sanitize(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {canonical_name(k): v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
