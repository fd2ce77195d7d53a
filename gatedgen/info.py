"""``gatedgen info -m DIR``: what a model directory holds, read without loading the weights."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from gatedgen import formats
from gatedgen.errors import GatedgenError
from gatedgen.json_tokenizer import JSONEscapedTokenizer, load_tokenizer
from gatedgen.loading import _weight_files, load_config

_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _tensor_shapes(model_dir: Path) -> tuple[dict[str, list[int]], set[str]]:
    shapes: dict[str, list[int]] = {}
    dtypes: set[str] = set()
    for path, names in _weight_files(model_dir).items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in names if names is not None else f.keys():
                    sl = f.get_slice(name)
                    shapes[name] = list(sl.get_shape())
                    dtypes.add(_ST_DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        except Exception as e:  # corrupt header: report, do not crash
            reason = e.__class__.__name__
            raise GatedgenError(f"{path.name}: cannot read safetensors header ({reason})") from None
    return shapes, dtypes


def _tokenizer_kind(model_dir: Path, tok) -> str:
    try:
        raw = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    model = (raw.get("model") or {}).get("type", "unknown")
    text = json.dumps(raw.get("pre_tokenizer")) + json.dumps(raw.get("decoder"))
    kind = f"{model} (byte-level)" if '"ByteLevel"' in text else (
        f"{model} (byte fallback)" if '"ByteFallback"' in text else model)
    if isinstance(tok, JSONEscapedTokenizer):
        kind += ", over JSON-escaped text"
    return kind


def describe(model_dir: str | Path) -> list[tuple[str, str]]:
    """(label, value) rows describing the checkpoint."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GatedgenError(f"{model_dir}: no such model directory")
    cfg = load_config(model_dir)
    shapes, dtypes = _tensor_shapes(model_dir)
    fmt = formats.format_for(cfg.model_type)
    # count what the model holds: the format's renames, a fused MLP split, a tied head dropped
    tied_head = "lm_head.weight" if cfg.tie_word_embeddings else None
    counted = [s for name, s in shapes.items() if name != tied_head and not name.endswith("inv_freq")]
    n_params = sum(_numel(s) for s in counted)
    rows = [
        ("architecture", f"{cfg.model_type} ({fmt.__name__.rsplit('.', 1)[-1]} format)"),
        ("gated", "yes (forget gate)" if cfg.gated else "no (plain softmax attention)"),
        ("layers", f"{cfg.num_hidden_layers} x hidden {cfg.hidden_size}, heads {cfg.num_heads} q / "
                   f"{cfg.num_kv_heads} kv x {cfg.head_dim}, MLP {cfg.intermediate_size}"),
        ("parameters", f"{n_params:,} ({n_params / 1e6:.1f}M)"),
        ("dtype", ", ".join(sorted(dtypes)) or "unknown"),
        ("context length", str(cfg.max_position_embeddings) if cfg.max_position_embeddings
         else "not fixed (no positional encoding)"),
        ("positions", _positions(cfg)),
        ("extras", _extras(cfg)),
    ]
    try:
        tok = load_tokenizer(model_dir)
    except GatedgenError as e:
        rows.append(("tokenizer", f"unavailable ({e})"))
        return rows

    def name(i):
        return f"{tok.id_to_token(i)!r} ({i})" if i is not None else "none"

    rows += [
        ("tokenizer", f"{_tokenizer_kind(model_dir, tok)}, vocab {tok.vocab_size:,}"),
        ("BOS", name(tok.bos_token_id)),
        ("EOS", ", ".join(name(i) for i in tok.eos_token_ids) or "none"),
        ("chat template", "from tokenizer_config.json" if tok.chat_template else "none (built-in fallback)"),
    ]
    return rows


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _positions(cfg) -> str:
    if cfg.rope_theta is None:
        return "none"
    kind = (cfg.rope_scaling or {}).get("rope_type", (cfg.rope_scaling or {}).get("type"))
    scaling = f", {kind} scaling x{cfg.rope_scaling['factor']:g}" if kind else ""
    return f"RoPE theta {cfg.rope_theta:g}{scaling}"


def _extras(cfg) -> str:
    parts = [name for flag, name in (
        (cfg.qk_norm, "QK-norm"), (cfg.use_k_shift, "key shift"), (cfg.use_v_shift, "value shift"),
        (cfg.use_output_norm, "output norm"), (cfg.use_output_gate, f"output gate ({cfg.output_gate_act})"),
        (cfg.qkv_bias, "qkv bias"), (cfg.tie_word_embeddings, "tied embeddings"),
    ) if flag]
    return ", ".join(parts) or "none"
