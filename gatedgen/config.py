"""Model configuration: one dataclass for every architecture gatedgen runs.

Checkpoint formats (fla's ``forgetting_transformer``, Llama, ...) map their ``config.json`` onto
this dataclass in ``gatedgen.formats``; the model code reads only this.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from gatedgen.errors import GatedgenError


@dataclass
class ModelConfig:
    model_type: str  # the checkpoint's model_type, kept for saving and `gatedgen info`
    vocab_size: int  # rows of the embedding / lm_head
    hidden_size: int  # width C of the residual stream
    num_hidden_layers: int  # number of blocks
    num_heads: int  # query heads HQ
    num_kv_heads: int  # key/value heads H (GQA when H < HQ)
    head_dim: int  # D per head
    intermediate_size: int  # width of the SwiGLU MLP
    use_forget_gate: bool = True  # FoX: per-head forget gate f_proj -> logsigmoid (False: plain softmax)
    qkv_bias: bool = False  # biases on q/k/v projections
    qk_norm: bool = False  # per-head RMSNorm of q and k before attention
    qk_norm_eps: float = 1e-5  # eps of that norm (fla's GroupNorm default)
    qk_norm_shared: bool = False  # q/k norm weights [D] shared by all heads (else [HQ*D] / [H*D])
    use_output_gate: bool = False  # o * act(g_proj(x)) before o_proj
    output_gate_act: str = "sigmoid"  # act of the output gate: "sigmoid" or "silu"
    use_output_norm: bool = False  # per-head RMSNorm o_norm of the attention output before the gate (FoX Pro)
    use_k_shift: bool = False  # FoX Pro: k_t = a_t k~_{t-1} + (1 - a_t) k~_t, a_t = sigmoid(w . x_t)
    use_v_shift: bool = False  # the same data-dependent shift for values
    norm_eps: float = 1e-6  # eps of the block and final RMSNorms
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    rope_theta: float | None = None  # RoPE base; None = no positional encoding (FoX)
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear" | "llama3", "factor": ..., ...}
    max_position_embeddings: int | None = None  # trained context; None = unbounded (FoX)
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    torch_dtype: str | None = None  # dtype the checkpoint was saved in, if it says

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "num_kv_heads",
                    "head_dim", "intermediate_size"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise GatedgenError(f"config.json: {name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise GatedgenError(
                f"config.json: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim > 256:
            raise GatedgenError(f"config.json: head_dim {self.head_dim} > 256 is not supported")
        for name in ("norm_eps", "qk_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise GatedgenError(f"config.json: {name} must be a positive number, got {value!r}")
        if self.rope_theta is not None and not (self.rope_theta > 0):
            raise GatedgenError(f"config.json: rope_theta must be positive, got {self.rope_theta!r}")
        if self.output_gate_act not in ("sigmoid", "silu"):
            raise GatedgenError(f"config.json: output gate act {self.output_gate_act!r} (sigmoid, silu)")
        if self.rope_scaling is not None:
            validate_rope_scaling(self.rope_scaling)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def gated(self) -> bool:
        return self.use_forget_gate

    def common_hf_fields(self) -> dict[str, Any]:
        """The config.json fields every format writes the same way (the formats' config_to_hf)."""
        eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else (self.eos_token_id or None)
        return {
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": self.torch_dtype,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ROPE_SCALING_TYPES = ("linear", "llama3")


def validate_rope_scaling(scaling: Any) -> None:
    """``rope_scaling`` as HF configs write it: linear (positions / factor) or llama3 (per-band)."""
    if not isinstance(scaling, dict):
        raise GatedgenError(f"config.json: rope_scaling must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING_TYPES:
        raise GatedgenError(
            f"config.json: rope_scaling type {kind!r} is not supported (gatedgen reads: "
            f"{', '.join(ROPE_SCALING_TYPES)})"
        )
    keys = ["factor"]
    if kind == "llama3":
        keys += ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
    for key in keys:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise GatedgenError(f"config.json: rope_scaling {key} must be a positive number, got {value!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise GatedgenError("config.json: rope_scaling high_freq_factor must exceed low_freq_factor")


def read_int(d: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
    """A config value that must be an int (or absent/None when not required); null means absent."""
    value = d.get(key)
    value = default if value is None else value
    if value is None:
        if required:
            raise GatedgenError(f"config.json: missing required field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatedgenError(f"config.json: {key} must be an integer, got {value!r}")
    return value


def require_positive(**fields: int) -> None:
    """One config error naming every field given (hidden size and head count: they divide each other)
    unless all are positive."""
    if any(v <= 0 for v in fields.values()):
        named = " and ".join(f"{k} ({v})" for k, v in fields.items())
        raise GatedgenError(f"config.json: {named} must be positive")


def read_float(d: dict[str, Any], key: str, default: Any = None) -> Any:
    value = d.get(key)
    value = default if value is None else value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GatedgenError(f"config.json: {key} must be a number, got {value!r}")
    return float(value)


def read_bool(d: dict[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise GatedgenError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def read_ids(d: dict[str, Any], key: str) -> list[int]:
    """eos_token_id may be an int, a list of ints, or absent."""
    value = d.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise GatedgenError(f"config.json: {key} must be an integer or a list of integers, got {value!r}")
    return list(values)
