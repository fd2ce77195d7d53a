"""Llama-family checkpoints (llama, mistral, qwen2) against transformers on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import rel_err

from gatedgen.errors import GatedgenError
from gatedgen.loading import load_model

transformers = pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

BASE = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
CASES = {
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama3-scaling-headdim": ("llama", {"head_dim": 24, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}),
    "llama-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "mistral": ("mistral", {"sliding_window": None}),
    "qwen2-bias": ("qwen2", {"num_key_value_heads": 1}),
}


def _hf_checkpoint(root, model_type, overrides):
    cfg = transformers.AutoConfig.for_model(model_type, **{**BASE, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger random weights than the init, so errors show
            p.normal_(0, 0.2 if p.dim() > 1 else 1.0)
    model.save_pretrained(root, safe_serialization=True)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    model_type, overrides = CASES[case]
    hf = _hf_checkpoint(tmp_path, model_type, overrides)
    ours = load_model(tmp_path, backend="reference")
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    assert rel_err(ours(ids), ref) < 1e-4
    cache = ours.new_cache(2, 64)  # prefill then decode through the cache
    out = torch.cat([ours(ids[:, :30], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(30, 40)], 1)
    assert rel_err(out, ref) < 1e-4


def test_unsupported_rope_scaling_is_named(tmp_path):
    _hf_checkpoint(tmp_path, "llama", {})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GatedgenError, match="rope_scaling type 'yarn' is not supported"):
        load_model(tmp_path)


def test_classic_rope_keys_read_like_rope_parameters(tmp_path):
    """Configs saved before transformers v5 write rope_theta + rope_scaling instead of rope_parameters."""
    _hf_checkpoint(tmp_path, *CASES["llama3-scaling-headdim"])
    ids = torch.randint(0, 300, (1, 24))
    before = load_model(tmp_path, backend="reference")(ids)
    cfg = json.loads((tmp_path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in params.items()}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert torch.equal(load_model(tmp_path, backend="reference")(ids), before)
