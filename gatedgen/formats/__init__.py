"""Checkpoint formats: each maps a ``config.json`` onto :class:`ModelConfig` and renames a
checkpoint's tensors onto gatedgen's canonical names (fla's ``forgetting_transformer`` names).

A format module provides:
    MODEL_TYPES: tuple of config.json ``model_type`` values it reads
    config_from_hf(d: dict) -> ModelConfig
    config_to_hf(cfg: ModelConfig) -> dict           (for saving)
    sanitize(tensors: dict[str, Tensor], cfg) -> dict[str, Tensor]
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from gatedgen.config import ModelConfig
from gatedgen.errors import GatedgenError
from gatedgen.formats import fla_fox, fox_official, llama

_FORMATS: list[ModuleType] = [fla_fox, fox_official, llama]


def register(module: ModuleType) -> None:
    _FORMATS.append(module)


def format_for(model_type: Any) -> ModuleType:
    for module in _FORMATS:
        if model_type in module.MODEL_TYPES:
            return module
    known = ", ".join(t for m in _FORMATS for t in m.MODEL_TYPES)
    raise GatedgenError(f"unsupported model_type {model_type!r} (gatedgen reads: {known})")


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    if not isinstance(d, dict):
        raise GatedgenError("config.json must hold a JSON object")
    return format_for(d.get("model_type")).config_from_hf(d)
