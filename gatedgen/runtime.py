"""What the commands share: finding the model, choosing the device, reading prompts from stdin."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gatedgen.errors import GatedgenError
from gatedgen.generate import Session
from gatedgen.loading import load_model
from gatedgen.json_tokenizer import load_tokenizer
from gatedgen.quantize import QUANTIZATIONS, quantize_int8

# The shipped default model lives next to the package in a source checkout.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_CONTEXT = 4096


def resolve_model_dir(model: str | None) -> Path:
    if model:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise GatedgenError(f"{path}: no such model directory")
        return path
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return DEFAULT_MODEL_DIR
    raise GatedgenError("no model given and no default model in weights/: pass --model DIR")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GatedgenError("--device cuda: no CUDA device is available")
    return torch.device(name)


@dataclass
class Loaded:
    session: Session
    model_dir: Path


def resolve_quantize(name: str, device: torch.device) -> str:
    """``auto``: int8 weights on CPU (same held-out loss, ~2.5x the decode speed: gatedgen/quantize.py),
    exact weights on CUDA, where the Triton kernels read bf16 weights at HBM speed."""
    if name == "auto":
        return "int8" if device.type == "cpu" else "none"
    if name not in QUANTIZATIONS:
        raise GatedgenError(f"unknown quantization {name!r} (auto, {', '.join(QUANTIZATIONS)})")
    if name == "int8" and device.type != "cpu":
        raise GatedgenError("--quantize int8 runs on the CPU only; on CUDA use --quantize none")
    return name


def open_session(model: str | None, device: str, dtype: str, max_context: int | None,
                 check: bool = False, quantize: str = "none") -> Loaded:
    model_dir = resolve_model_dir(model)
    dev = resolve_device(device)
    quant = resolve_quantize(quantize, dev)
    tokenizer = load_tokenizer(model_dir)
    lm = load_model(model_dir, dtype=dtype, device=dev, check=check)
    if quant == "int8":
        quantize_int8(lm)
    if lm.cfg.vocab_size < tokenizer.vocab_size:
        raise GatedgenError(
            f"{model_dir}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{lm.cfg.vocab_size} embeddings"
        )
    context = max_context or lm.cfg.max_position_embeddings or DEFAULT_CONTEXT
    return Loaded(Session(lm, tokenizer, context), model_dir)


def read_stdin() -> tuple[str, bool]:
    """All of stdin as text (undecodable bytes replaced), and whether any byte was replaced."""
    data = sys.stdin.buffer.read()
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") > data.count("\ufffd".encode())
    return text, replaced


def stdin_is_piped() -> bool:
    try:
        return not sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or missing stdin
        return False


def strip_one_newline(text: str) -> str:
    """Piped text loses its final newline, as in shell command substitution."""
    return text[:-1] if text.endswith("\n") else text


def prompt_from_inputs(prompt: str | None) -> str:
    """The prompt from --prompt and/or stdin: '-' reads stdin; piped text comes first."""
    from gatedgen import ui

    parts = []
    if prompt == "-" or (prompt is None or prompt) and stdin_is_piped():
        text, replaced = read_stdin()
        if replaced:
            ui.warn("stdin held bytes that are not UTF-8; they were replaced by U+FFFD")
        if text:
            parts.append(strip_one_newline(text))
    if prompt and prompt != "-":
        parts.append(prompt)
    text = "\n".join(parts)
    if not text.strip():
        raise GatedgenError("empty prompt: give --prompt TEXT or pipe text on stdin")
    return text


def fit_prompt(ids: list[int], max_context: int, max_tokens: int, truncate: str = "none",
               bos_token_id: int | None = None) -> list[int]:
    """The prompt ids that will be fed: unchanged when they fit the context; with ``truncate="left"``
    a too-long prompt keeps its last tokens (and a leading BOS) so that ``max_tokens`` (at most half
    the context) can still be generated; otherwise a too-long prompt is an error."""
    if truncate == "left":
        keep = max_context - max(1, min(max_tokens, max_context // 2))
        if len(ids) > keep:
            head = ids[:1] if bos_token_id is not None and ids and ids[0] == bos_token_id else []
            kept = head + ids[len(ids) - (keep - len(head)):]
            from gatedgen import ui

            ui.warn(f"prompt truncated: kept the last {len(kept)} of {len(ids)} tokens")
            return kept
        return ids
    if truncate != "none":
        raise GatedgenError(f"unknown truncation {truncate!r} (none, left)")
    if len(ids) >= max_context:
        raise GatedgenError(f"prompt has {len(ids)} tokens; the context holds {max_context} "
                            "(--truncate left keeps the last tokens)")
    return ids


def stdin_lines() -> Iterator[str]:
    """Lines of stdin as they arrive (undecodable bytes replaced, with one warning)."""
    from gatedgen import ui

    warned = False
    for raw in sys.stdin.buffer:
        text = raw.decode("utf-8", errors="replace")
        if not warned and text.count("\ufffd") > raw.count("\ufffd".encode()):
            ui.warn("stdin held bytes that are not UTF-8; they were replaced by U+FFFD")
            warned = True
        yield text
