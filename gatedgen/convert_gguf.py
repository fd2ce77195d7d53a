"""``gatedgen convert GGUF_FILE OUT_DIR``: a llama.cpp GGUF file -> a directory gatedgen reads.

Writes a Hugging Face-style Llama directory (config.json, model.safetensors with HF key names,
tokenizer.json, tokenizer_config.json with the chat template, generation_config.json), so the
result also loads in transformers. Tensors are dequantized on CPU by the ``gguf`` package
(``pip install gatedgen[gguf]``).

llama.cpp's converter permutes the rows of Q and K of ``llama`` models so that RoPE rotates
adjacent pairs (GPT-J layout); HF and gatedgen rotate halves, so the permutation is undone here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from gatedgen.errors import GatedgenError
from gatedgen.gguf_tokenizer import build_tokenizer, tokenizer_config

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GatedgenError("converting GGUF needs the gguf package: pip install 'gatedgen[gguf]'") from None
    if not path.is_file():
        raise GatedgenError(f"{path}: file not found")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError and others for files that are not GGUF
        raise GatedgenError(f"{path}: not a readable GGUF file ({e.__class__.__name__}: {e})") from None


def read_metadata(reader) -> dict[str, Any]:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # a value type this gguf version cannot decode: not one we need
            continue
    return meta


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def unpermute_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K permutation: within each head, rows (pair i, element j) -> (j, i)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _config(meta: dict[str, Any], arch: str, tied: bool) -> dict[str, Any]:
    def get(key: str, default: Any = None, *, required: bool = False) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None and required:
            raise GatedgenError(f"GGUF: missing metadata {arch}.{key}")
        return value

    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    head_dim = int(get("attention.key_length", hidden // heads))
    if get("rope.dimension_count", head_dim) != head_dim:
        raise GatedgenError("GGUF: partial RoPE (rope.dimension_count < head dim) is not supported")
    scaling_type = get("rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise GatedgenError(f"GGUF: rope scaling type {scaling_type!r} is not supported (linear only)")
    eps32 = np.float32(get("attention.layer_norm_rms_epsilon", 1e-5))
    eps = float(np.format_float_positional(eps32, unique=True))  # 1e-05, not 9.99999974e-06
    tokens = meta.get("tokenizer.ggml.tokens") or []
    cfg: dict[str, Any] = {
        "model_type": arch,
        "architectures": [ARCHITECTURES[arch]],
        "vocab_size": int(get("vocab_size", len(tokens)) or len(tokens)),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        if scaling_type == "linear" else None,
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
    }
    if arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    return cfg


def read_tensors(reader, cfg: dict[str, Any], arch: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise GatedgenError("GGUF: llama3-style rope_freqs factors are not supported yet")
            raise GatedgenError(f"GGUF: unexpected tensor {t.name}")
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        if w.numel() == int(np.prod(t.shape)):  # GGUF lists dims innermost first
            w = w.reshape([int(n) for n in reversed(t.shape.tolist())])
        if arch == "llama" and ".self_attn.q_proj." in name:
            w = unpermute_rope_rows(w, cfg["num_attention_heads"])
        elif arch == "llama" and ".self_attn.k_proj." in name:
            w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
        out[name] = w.to(dtype).contiguous()
    return out


def convert(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Convert; returns the output directory."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise GatedgenError(f"unknown dtype {dtype!r} ({', '.join(DTYPES)})")
    reader = _reader(gguf_path)
    meta = read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GatedgenError(f"GGUF: architecture {arch!r} is not supported ({', '.join(ARCHITECTURES)})")
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    cfg = _config(meta, arch, tied)
    cfg["torch_dtype"] = dtype
    tokenizer = build_tokenizer(meta)
    tensors = read_tensors(reader, cfg, arch, DTYPES[dtype])

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(out_dir / "tokenizer.json"))
    files = {
        "config.json": cfg,
        "tokenizer_config.json": tokenizer_config(meta, cfg["max_position_embeddings"]),
        "generation_config.json": {
            k: meta[f"tokenizer.ggml.{g}"]
            for k, g in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                         ("pad_token_id", "padding_token_id"))
            if f"tokenizer.ggml.{g}" in meta
        },
    }
    for name, data in files.items():
        (out_dir / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir
