"""Model forward: cache paths equal one full forward; save/load round trip; independent oracle."""

from __future__ import annotations

import pytest
import torch

from factory_model import make_checkpoint
from gatedgen.loading import load_model, save_model
from oracle_fox import FoxOracle


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("fox"))


VARIANTS = [
    {},
    {"num_kv_heads": None, "qk_norm": False, "use_output_gate": False},
    {"tie_word_embeddings": True, "qkv_bias": True, "num_heads": 8, "num_kv_heads": 2},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_prefill_then_decode_equals_full_forward(tmp_path, overrides):
    model = load_model(make_checkpoint(tmp_path, seed=3, **overrides), backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (2, 37))
    full = model(ids)
    cache = model.new_cache(2, 64)
    pieces = [model(ids[:, :11], cache)]
    for t in range(11, 37):
        pieces.append(model(ids[:, t : t + 1], cache))
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-4
    # chunked prefill continuing the cache, and multi-token decode steps
    cache.reset()
    pieces = [model(ids[:, :5], cache), model(ids[:, 5:25], cache, mode="prefill"),
              model(ids[:, 25:28], cache, mode="decode"), model(ids[:, 28:], cache)]
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-4


def test_ragged_batch_decode(ckpt):
    """Sequences of different lengths in one cache decode like each one alone."""
    model = load_model(ckpt, backend="reference")
    a, b = torch.randint(0, 300, (1, 9)), torch.randint(0, 300, (1, 14))
    cache = model.new_cache(2, 32)
    cache_a, cache_b = model.new_cache(1, 32), model.new_cache(1, 32)
    model(a, cache_a), model(b, cache_b)
    # fill the batch cache one sequence at a time through single-sequence views
    for row, seq in ((0, a), (1, b)):
        for t in range(seq.shape[1]):
            sub = cache.row(row)
            model(seq[:, t : t + 1], sub)
            cache.lengths[row] = sub.lengths[0]
    nxt = torch.randint(0, 300, (2, 1))
    both = model(nxt, cache)
    alone_a, alone_b = model(nxt[:1], cache_a), model(nxt[1:], cache_b)
    assert (both[0] - alone_a[0]).abs().max() <= 1e-4
    assert (both[1] - alone_b[0]).abs().max() <= 1e-4


def test_save_load_round_trip_identical(ckpt, tmp_path):
    model = load_model(ckpt, backend="reference")
    save_model(model, tmp_path / "copy")
    again = load_model(tmp_path / "copy", backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (1, 20))
    assert torch.equal(model(ids), again(ids))


def test_matches_independent_fla_forward(ckpt):
    model = load_model(ckpt, backend="reference")
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12)).tolist()[0]
    ref = FoxOracle(ckpt).logits(ids)
    out = model(torch.tensor([ids]))[0].double()
    assert (out - ref).abs().max() <= 1e-4


def test_old_forget_gate_name_is_read(tmp_path):
    """fla checkpoints before 2025-04 called the forget gate g_proj."""
    from safetensors.torch import load_file, save_file

    root = make_checkpoint(tmp_path, use_output_gate=False)
    state = load_file(str(root / "model.safetensors"))
    ids = torch.randint(0, 300, (1, 10))
    before = load_model(root, backend="reference")(ids)
    renamed = {k.replace("attn.f_proj", "attn.g_proj"): v for k, v in state.items()}
    save_file(renamed, str(root / "model.safetensors"))
    assert torch.equal(load_model(root, backend="reference")(ids), before)


def test_bfloat16_weights_close(ckpt):
    ids = torch.randint(0, 300, (1, 16))
    ref = load_model(ckpt, backend="reference")(ids)
    out = load_model(ckpt, dtype="bfloat16", backend="reference")(ids)
    assert ((out - ref).norm() / ref.norm()) < 3e-2


def test_sharded_save_round_trip(ckpt, tmp_path):
    model = load_model(ckpt, backend="reference")
    save_model(model, tmp_path / "sharded", max_shard_bytes=40_000)
    files = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(files) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 9))
    assert torch.equal(model(ids), load_model(tmp_path / "sharded", backend="reference")(ids))
    save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert load_model(tmp_path / "bf16", dtype="bfloat16").output_weight.dtype == torch.bfloat16


@pytest.mark.parametrize("overrides", [{}, {"use_forget_gate": False, "rope_theta": 10000.0}], ids=["fox", "rope"])
def test_packed_prefill_equals_separate_prefills(tmp_path, overrides):
    """Several prompts in one varlen pass: same logits and the same cache rows as one by one."""
    model = load_model(make_checkpoint(tmp_path, seed=4, **overrides), backend="reference")
    prompts = [torch.randint(0, 300, (n,)).tolist() for n in (7, 1, 19)]
    packed = model.new_cache(4, 32)
    logits = model.prefill_packed([prompts[0], prompts[2]], packed, rows=[3, 1])  # rows in any order
    logits_b = model.prefill_packed([prompts[1]], packed, rows=[0])
    assert packed.lengths == [1, 19, 0, 7] and packed.seqlens.tolist() == [1, 19, 0, 7]
    for row, ids, got in ((3, prompts[0], logits[0]), (1, prompts[2], logits[1]), (0, prompts[1], logits_b[0])):
        alone = model.new_cache(1, 32)
        want = model(torch.tensor([ids]), alone, last_only=True)[0, -1]
        assert (got - want).abs().max() <= 1e-4
        n = len(ids)
        assert torch.allclose(packed.k[:, row, :n], alone.k[:, 0, :n], atol=1e-5)
        if alone.gc is not None:
            assert torch.allclose(packed.gc[:, row, :n], alone.gc[:, 0, :n], atol=1e-4)
    # then all rows decode together, as each would alone
    nxt = torch.randint(0, 300, (4, 1))
    packed.lengths[2] = 0  # the unused row decodes a dummy token from an empty cache
    out = model(nxt, packed)
    alone = model.new_cache(1, 32)
    model(torch.tensor([prompts[2]]), alone)
    assert (out[1] - model(nxt[1:2], alone)[0]).abs().max() <= 1e-4
