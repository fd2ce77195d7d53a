"""Tiny random-weight checkpoints in fla's forgetting_transformer format, written to temp dirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from factory_tokenizer import make_bytelevel_tokenizer
from gatedgen.attention import get_backend
from gatedgen.formats import fla_fox
from gatedgen.model import CausalLM


def tiny_hf_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    cfg = {
        "model_type": "forgetting_transformer",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "hidden_ratio": 2,
        "qk_norm": True,
        "use_output_gate": True,
        "norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "fuse_norm": True,  # training-only flags that gatedgen ignores
        "fuse_swiglu": True,
    }
    cfg.update(overrides)
    return cfg


def random_state(hf: dict[str, Any], seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights for the config; forget-gate biases positive so gates sit near 0 (slow forgetting)
    on some heads and strongly negative on others."""
    cfg = fla_fox.config_from_hf(hf)
    model = CausalLM(cfg, get_backend("reference"))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        t = torch.randn(p.shape, generator=gen) * std
        if name.endswith("norm.weight"):
            t = 1.0 + t
        if name.endswith("f_proj.bias"):
            t = torch.linspace(-2.0, 6.0, p.shape[0])
        state[name] = t.contiguous()
    return state


def make_checkpoint(root: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """A directory with config.json, model.safetensors and a small byte-level BPE tokenizer."""
    make_bytelevel_tokenizer(root)
    vocab = json.loads((root / "tokenizer.json").read_text())
    vocab_size = len(vocab["model"]["vocab"]) + len(vocab.get("added_tokens", []))
    hf = tiny_hf_config(vocab_size, **overrides)
    state = {k: v.to(dtype) for k, v in random_state(hf, seed).items()}
    eos = json.loads((root / "tokenizer_config.json").read_text()).get("eos_token")
    hf.setdefault("eos_token_id", next(t["id"] for t in vocab["added_tokens"] if t["content"] == eos))
    (root / "config.json").write_text(json.dumps(hf, indent=2))
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    return root
