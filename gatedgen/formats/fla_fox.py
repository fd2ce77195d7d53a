"""fla's ``forgetting_transformer`` format (fla/models/forgetting_transformer).

Its tensor names are gatedgen's canonical names, so ``sanitize`` only handles checkpoints written
before fla renamed the forget gate (2025-04): there ``attn.g_proj`` [num_heads, hidden] was the
forget gate and is now ``attn.f_proj``.
"""

from __future__ import annotations

from typing import Any

import torch

from gatedgen.config import ModelConfig, read_bool, read_float, read_ids, read_int, require_positive
from gatedgen.errors import GatedgenError

MODEL_TYPES = ("forgetting_transformer",)


def mlp_width(hidden_size: int, hidden_ratio: int | float | None, intermediate_size: int | None) -> int:
    """fla's GatedMLP rule: a multiple of 256 near 2/3 * hidden * ratio, unless given."""
    if intermediate_size is not None:
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    width = int(hidden_size * ratio * 2 / 3)
    return 256 * ((width + 255) // 256)


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    hidden = read_int(d, "hidden_size", 2048)
    heads = read_int(d, "num_heads", 32)
    require_positive(hidden_size=hidden, num_heads=heads)
    if hidden % heads != 0:
        raise GatedgenError(f"config.json: hidden_size ({hidden}) must be a multiple of num_heads ({heads})")
    if d.get("window_size") is not None:
        raise GatedgenError("config.json: window_size (sliding-window FoX) is not supported")
    act = d.get("hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise GatedgenError(f"config.json: hidden_act {act!r} is not supported (swish only)")
    return ModelConfig(
        model_type="forgetting_transformer",
        vocab_size=read_int(d, "vocab_size", 32000),
        hidden_size=hidden,
        num_hidden_layers=read_int(d, "num_hidden_layers", 24),
        num_heads=heads,
        num_kv_heads=read_int(d, "num_kv_heads") or heads,
        head_dim=hidden // heads,
        intermediate_size=mlp_width(hidden, read_float(d, "hidden_ratio", 4), read_int(d, "intermediate_size")),
        use_forget_gate=True,
        qkv_bias=read_bool(d, "qkv_bias", False),
        qk_norm=read_bool(d, "qk_norm", False),
        qk_norm_eps=1e-5,
        use_output_gate=read_bool(d, "use_output_gate", False),
        norm_eps=read_float(d, "norm_eps", 1e-6),
        tie_word_embeddings=read_bool(d, "tie_word_embeddings", False),
        max_position_embeddings=read_int(d, "max_position_embeddings"),
        bos_token_id=read_int(d, "bos_token_id"),
        eos_token_id=read_ids(d, "eos_token_id"),
        torch_dtype=d.get("torch_dtype") if isinstance(d.get("torch_dtype"), str) else None,
    )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "model_type": "forgetting_transformer",
        "architectures": ["ForgettingTransformerForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_heads": cfg.num_heads,
        "num_kv_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "swish",
        "qkv_bias": cfg.qkv_bias,
        "qk_norm": cfg.qk_norm,
        "window_size": None,
        "use_output_gate": cfg.use_output_gate,
        "norm_eps": cfg.norm_eps,
        **cfg.common_hf_fields(),
    }


def sanitize(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for name in list(out):
        if name.endswith(".attn.g_proj.weight"):
            prefix = name[: -len("g_proj.weight")]
            old_forget_gate = (
                prefix + "f_proj.weight" not in out
                and out[name].shape[0] == cfg.num_heads
                and prefix + "g_proj.bias" in out
            )
            if old_forget_gate:
                out[prefix + "f_proj.weight"] = out.pop(name)
                out[prefix + "f_proj.bias"] = out.pop(prefix + "g_proj.bias")
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
