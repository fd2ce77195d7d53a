"""The official FoX release format (Pro and LLaMA variants) against an independent float64 oracle.

fp32 model vs fp64 oracle: relative error ||out - ref|| / ||ref|| per position below TOL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import rel_err
from factory_tokenizer import make_bytelevel_tokenizer
from oracle_fox_official import Decoder, OfficialFoxOracle
from safetensors.torch import save_file

from gatedgen.errors import GatedgenError
from gatedgen.loading import load_model, save_model

TOL = 5e-5
PRO = {"qk_norm": True, "qk_norm_share_param_across_head": True, "use_k_shift": True, "use_v_shift": True,
       "use_output_gate": True, "use_output_norm": True, "fgate_type": "full"}
VARIANTS = {
    "pro": PRO,
    "pro-rope-nofgate": {**PRO, "use_rope": True, "rope_base": 10000.0, "fgate_type": "none"},
    "pro-pernorm-kshift": {**PRO, "qk_norm_share_param_across_head": False, "use_v_shift": False},
    "llama": {"fgate_type": "full"},
    "llama-rope-silu-gate": {"use_rope": True, "rope_base": 10000.0, "use_output_gate": True,
                             "ogate_act": "silu"},
}


def official_checkpoint(root: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random tiny checkpoint written with the release's own config fields and key names."""
    make_bytelevel_tokenizer(root)
    vocab = json.loads((root / "tokenizer.json").read_text())
    V = len(vocab["model"]["vocab"]) + len(vocab.get("added_tokens", []))
    c: dict[str, Any] = {"model_type": "forgetting_transformer-project_fox", "vocab_size": V,
                         "hidden_size": 64,
                         "num_hidden_layers": 2, "num_heads": 4, "num_kv_heads": None, "hidden_ratio": 2,
                         "intermediate_size": None, "hidden_act": "swish", "window_size": None,
                         "max_position_embeddings": 2048, "norm_eps": 1e-6, "tie_word_embeddings": False,
                         "use_rope": False, "rope_base": 500000.0, "use_output_gate": False,
                         "ogate_act": "sigmoid",
                         "fgate_type": "full", "use_output_norm": False, "qk_norm": False,
                         "qk_norm_share_param_across_head": False, "use_k_shift": False, "use_v_shift": False,
                         "bos_token_id": 1, "eos_token_id": 2, "fuse_norm": True, "fuse_cross_entropy": True}
    c.update(overrides)
    C, H, L = c["hidden_size"], c["num_heads"], c["num_hidden_layers"]
    D, M = C // H, 256 * ((int(C * c["hidden_ratio"] * 2 / 3) + 255) // 256)  # head dim, MLP width
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2, base=0.0):
        return base + torch.randn(*shape, generator=g) * std

    w = {"model.embeddings.weight": rnd(V, C, std=1.0), "model.norm.weight": rnd(C, base=1.0),
         "lm_head.weight": rnd(V, C)}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "attn_norm.weight"] = rnd(C, base=1.0)
        w[p + "mlp_norm.weight"] = rnd(C, base=1.0)
        w[p + "attn.q_proj.weight"] = rnd(C, C)
        w[p + "attn.o_proj.weight"] = rnd(C, C)
        for x in "kv":
            if c[f"use_{x}_shift"]:
                w[p + f"attn.{x}_proj.linear.weight"] = rnd(C, C)
                w[p + f"attn.{x}_proj.shift_proj.weight"] = rnd(H, C, std=1.0)
            else:
                w[p + f"attn.{x}_proj.weight"] = rnd(C, C)
        if c["fgate_type"] == "full":
            w[p + "attn.fgate_proj.weight"] = rnd(H, C)
            w[p + "attn.fgate_proj.bias"] = torch.linspace(-2.0, 6.0, H)
        if c["use_output_gate"]:
            w[p + "attn.ogate_proj.weight"] = rnd(C, C)
        if c["use_output_norm"]:
            w[p + "attn.output_norm.weight"] = rnd(C, base=1.0)
        if c["qk_norm"]:
            n = D if c["qk_norm_share_param_across_head"] else C
            w[p + "attn.q_norm.weight"] = rnd(n, base=1.0)
            w[p + "attn.k_norm.weight"] = rnd(n, base=1.0)
        w[p + "mlp.gate_proj.weight"] = rnd(2 * M, C)
        w[p + "mlp.down_proj.weight"] = rnd(C, M)
    (root / "config.json").write_text(json.dumps(c, indent=1))
    save_file({k: v.contiguous() for k, v in w.items()}, str(root / "model.safetensors"))
    return root


@pytest.fixture(scope="module", params=list(VARIANTS))
def ckpt(request, tmp_path_factory):
    return official_checkpoint(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


def test_prefill_matches_oracle(ckpt):
    model = load_model(ckpt, backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = OfficialFoxOracle(ckpt).logits(ids)
    out = model(torch.tensor([ids]))[0].double()
    assert max(rel_err(o, r) for o, r in zip(out, ref)) <= TOL


def test_decode_with_shift_state_matches_recurrent_oracle(ckpt):
    """Prefill a prompt, then decode token by token from the cache; the oracle steps one token at a time."""
    model = load_model(ckpt, backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (14,), generator=torch.Generator().manual_seed(2)).tolist()
    dec = Decoder(OfficialFoxOracle(ckpt))
    ref = torch.stack([dec.step(t) for t in ids])
    cache = model.new_cache(1, 32)
    pieces = [model(torch.tensor([ids[:5]]), cache)]
    pieces += [model(torch.tensor([[t]]), cache) for t in ids[5:]]
    out = torch.cat(pieces, 1)[0].double()
    assert max(rel_err(o, r) for o, r in zip(out, ref)) <= TOL


def test_cache_paths_truncate_and_ragged_batch(ckpt):
    model = load_model(ckpt, backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = model.new_cache(2, 40)
    # chunked prefill continuing the cache, multi-token decode, single-token decode
    pieces = [model(ids[:, :6], cache), model(ids[:, 6:20], cache, mode="prefill"),
              model(ids[:, 20:23], cache, mode="decode"), model(ids[:, 23:], cache)]
    assert rel_err(torch.cat(pieces, 1), full) <= TOL
    # truncate keeps the shift state exact: the pre-mix values are stored per position
    cache.truncate(9)
    again = [model(ids[:, 9:17], cache, mode="prefill"), model(ids[:, 17:18], cache)]
    assert rel_err(torch.cat(again, 1), full[:, 9:18]) <= TOL
    # ragged batch: row 0 holds 9 tokens, row 1 holds 13; one decode step serves both
    ragged = model.new_cache(2, 40)
    for row, n in ((0, 9), (1, 13)):
        sub = ragged.row(row)
        model(ids[row : row + 1, :n], sub)
        ragged.lengths[row] = sub.lengths[0]
    nxt = torch.stack([ids[0, 9:10], ids[1, 13:14]])
    both = model(nxt, ragged)
    assert rel_err(both[0, 0], full[0, 9]) <= TOL
    assert rel_err(both[1, 0], full[1, 13]) <= TOL


def test_save_load_round_trip(ckpt, tmp_path):
    model = load_model(ckpt, backend="reference")
    save_model(model, tmp_path / "copy")
    again = load_model(tmp_path / "copy", backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    assert torch.equal(model(ids), again(ids))


@pytest.mark.parametrize("fgate", ["bias_only", "fixed"])
def test_unsupported_fgate_types_are_clear_errors(tmp_path, fgate):
    root = official_checkpoint(tmp_path)
    cfg = json.loads((root / "config.json").read_text())
    cfg["fgate_type"] = fgate
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GatedgenError, match=f"fgate_type '{fgate}'"):
        load_model(root)
