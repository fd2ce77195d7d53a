"""Property-based fuzzing of what users hand gatedgen: config.json values and safetensors headers
end in a ModelConfig / tensors or a GatedgenError, never another exception. (The streaming
detokenizer's invariant is fuzzed in test_tokenizer.py.)"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatedgen import formats
from gatedgen.config import ModelConfig
from gatedgen.errors import GatedgenError
from gatedgen.loading import read_safetensors

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
MODEL_TYPES = [t for m in formats._FORMATS for t in m.MODEL_TYPES]
KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "num_kv_heads", "num_attention_heads",
        "num_key_value_heads", "hidden_ratio", "intermediate_size", "head_dim", "qk_norm", "qkv_bias",
        "use_output_gate", "norm_eps", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
        "eos_token_id", "bos_token_id", "torch_dtype", "window_size", "hidden_act", "rope_theta",
        "use_k_shift", "use_v_shift", "use_forget_gate", "n_layer", "n_head", "d_model"]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("heads", [0, -4])
def test_config_from_hf_rejects_non_positive_heads(model_type, heads):
    """Found by the fuzz test below in a fresh clone (no example database): num_heads 0 divided by zero."""
    d = {"model_type": model_type, "hidden_size": 64, "num_heads": heads, "num_attention_heads": heads,
         "n_head": heads}
    with pytest.raises(GatedgenError, match="must be positive|must be"):
        formats.config_from_hf(d)


@settings(max_examples=400, deadline=None)
@given(model_type=st.sampled_from(MODEL_TYPES) | json_values,
       fields=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=10),
       extra=st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_config_from_hf_never_crashes(model_type, fields, extra):
    d = {**extra, **fields, "model_type": model_type}
    try:
        cfg = formats.config_from_hf(d)
    except GatedgenError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, ModelConfig)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_config_that_is_not_an_object(value):
    try:
        formats.config_from_hf(value)
    except GatedgenError:
        pass


tensor_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "XX"]) | json_values,
    "shape": st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(min_value=-4, max_value=2**40), min_size=0, max_size=3) | json_values,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=6), tensor_entry | json_values, max_size=3),
       data=st.binary(max_size=64), lie=st.integers(min_value=-8, max_value=2**63 - 1) | st.none())
def test_random_safetensors_headers(tmp_path, header, data, lie):
    raw = json.dumps(header).encode()
    length = len(raw) if lie is None else lie
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<q", length) + raw + data)
    try:
        read_safetensors(path)
    except GatedgenError as e:
        assert "\n" not in str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200))
def test_random_safetensors_bytes(tmp_path, blob):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    try:
        read_safetensors(path)
    except GatedgenError:
        pass
