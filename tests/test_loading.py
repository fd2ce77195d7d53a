"""Loader errors are one clear GatedgenError line; no pickle is ever read."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from factory_model import make_checkpoint
from gatedgen.errors import GatedgenError
from gatedgen.loading import load_model


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "m")


def _fails(path, match, **kwargs):
    with pytest.raises(GatedgenError, match=match) as info:
        load_model(path, backend="reference", **kwargs)
    assert "\n" not in str(info.value)


def test_missing_directory(tmp_path):
    _fails(tmp_path / "nope", "no such model directory")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    _fails(ckpt, "config.json: file not found")


def test_invalid_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    _fails(ckpt, "invalid JSON")


def test_unknown_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "mamba9"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _fails(ckpt, "unsupported model_type 'mamba9'")


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", -64, "hidden_size"),
    ("num_heads", 3, "multiple of num_heads"),
    ("num_kv_heads", 3, "multiple of num_kv_heads"),
    ("norm_eps", "small", "norm_eps"),
    ("qk_norm", "yes", "qk_norm"),
])
def test_invalid_config_values(ckpt, field, value, match):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg[field] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _fails(ckpt, match)


def test_unknown_config_keys_ignored(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["some_future_flag"] = {"x": 1}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    load_model(ckpt, backend="reference")


def test_no_weights_and_pickle_only(ckpt):
    (ckpt / "model.safetensors").unlink()
    _fails(ckpt, "no model.safetensors")
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    _fails(ckpt, "safetensors only")


def test_truncated_file(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    _fails(ckpt, "corrupt or truncated")


def test_garbage_header(ckpt):
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 40) + b"{this is not a json header at all....}" + b"\0" * 64)
    _fails(ckpt, "corrupt or truncated")


def test_header_lies_about_sizes(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 4 for s in header[name]["shape"]]  # claims 4x the bytes it has
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    _fails(ckpt, "corrupt or truncated")


def _rewrite(ckpt, fn):
    state = load_file(str(ckpt / "model.safetensors"))
    save_file(fn(dict(state)), str(ckpt / "model.safetensors"))


def test_missing_tensor(ckpt):
    _rewrite(ckpt, lambda s: {k: v for k, v in s.items() if "layers.1.mlp.up_proj" not in k})
    _fails(ckpt, "missing tensors: model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor(ckpt):
    _rewrite(ckpt, lambda s: {**s, "model.layers.0.attn.extra.weight": torch.zeros(3)})
    _fails(ckpt, "unexpected tensors: model.layers.0.attn.extra.weight")


def test_wrong_shape(ckpt):
    _rewrite(ckpt, lambda s: {**s, "model.norm.weight": torch.ones(65)})
    _fails(ckpt, r"model.norm.weight has shape \[65\], expected \[64\]")


def test_wrong_dtype(ckpt):
    _rewrite(ckpt, lambda s: {**s, "model.norm.weight": torch.ones(64, dtype=torch.int32)})
    _fails(ckpt, "dtype torch.int32")


def test_nan_weights_found_with_check(ckpt):
    bad = torch.ones(64)
    bad[7] = float("nan")
    _rewrite(ckpt, lambda s: {**s, "model.norm.weight": bad})
    load_model(ckpt, backend="reference")  # not checked by default
    _fails(ckpt, "model.norm.weight holds NaN", check=True)


def test_sharded_checkpoint(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(ckpt / file))
    (ckpt / "model.safetensors").unlink()
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    ids = torch.randint(0, 300, (1, 8))
    model = load_model(ckpt, backend="reference")
    assert model(ids).isfinite().all()
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    _fails(ckpt, "model-00002-of-00002.safetensors: file not found")
