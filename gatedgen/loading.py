"""Load and save checkpoints: config.json + safetensors (single or sharded). Never pickle.

Every problem a user can cause (missing files, corrupt or truncated safetensors, wrong names,
shapes or dtypes, NaN weights) becomes one GatedgenError line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gatedgen import formats
from gatedgen.attention import get_backend
from gatedgen.config import ModelConfig
from gatedgen.errors import GatedgenError
from gatedgen.model import CausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatedgenError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GatedgenError(f"{path}: cannot read ({e.__class__.__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GatedgenError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise GatedgenError(f"{path}: expected a JSON object")
    return data


def load_config(model_dir: Path) -> ModelConfig:
    return formats.config_from_hf(read_json(model_dir / "config.json"))


def resolve_dtype(name: str, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if name != "auto":
        if name not in DTYPES:
            raise GatedgenError(f"unknown dtype {name!r} (auto, {', '.join(DTYPES)})")
        return DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    # on an accelerator: the dtype the checkpoint was saved in (small models stored in float32 can be
    # fragile in bfloat16), bfloat16 when it does not say
    return DTYPES.get(cfg.torch_dtype or "", torch.bfloat16)


def _weight_files(model_dir: Path) -> dict[Path, list[str] | None]:
    """Map each safetensors file to the tensor names the index says it holds (None: no index)."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise GatedgenError(f"{index}: no weight_map")
        files: dict[Path, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(model_dir / str(file), []).append(name)
        return files
    if single.exists():
        return {single: None}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")) or any(model_dir.glob("*.pth")):
        raise GatedgenError(f"{model_dir}: only pickle weights (.bin/.pt) found; gatedgen reads safetensors only")
    raise GatedgenError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_safetensors(path: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one file (or the listed ones), with corrupt files reported in one line."""
    if not path.exists():
        raise GatedgenError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            available = set(f.keys())
            wanted = names if names is not None else sorted(available)
            missing = [n for n in wanted if n not in available]
            if missing:
                raise GatedgenError(f"{path.name}: the index lists tensors the file lacks: {_few(missing)}")
            return {name: f.get_tensor(name) for name in wanted}
    except GatedgenError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers and sizes
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise GatedgenError(f"{path.name}: corrupt or truncated safetensors file ({reason})") from None


def _few(names: list[str] | set[str], n: int = 4) -> str:
    names = sorted(names)
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str) -> None:
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    if missing:
        raise GatedgenError(f"{source}: missing tensors: {_few(missing)}")
    if unexpected:
        raise GatedgenError(f"{source}: unexpected tensors: {_few(unexpected)}")
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape:
            raise GatedgenError(f"{source}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise GatedgenError(f"{source}: tensor {name} has dtype {t.dtype}, expected a float type")


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise GatedgenError(f"{source}: tensor {name} holds NaN or Inf values")


def load_model(
    model_dir: str | Path,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    backend: str = "auto",
    check: bool = False,
) -> CausalLM:
    """Build the model of ``model_dir`` with its weights, strictly checked."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GatedgenError(f"{model_dir}: no such model directory")
    cfg = load_config(model_dir)
    fmt = formats.format_for(cfg.model_type)
    device = torch.device(device)
    target = resolve_dtype(dtype, cfg, device)

    tensors: dict[str, torch.Tensor] = {}
    for path, names in _weight_files(model_dir).items():
        tensors.update(read_safetensors(path, names))
    source = model_dir.name or str(model_dir)
    tensors = fmt.sanitize(tensors, cfg)
    with torch.device("meta"):
        model = CausalLM(cfg, get_backend(backend))
    check_tensors(tensors, {k: v.shape for k, v in model.state_dict().items()}, source)
    if check:
        check_finite(tensors, source)
    state = {name: t.to(device=device, dtype=target) for name, t in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def save_model(model: CausalLM, out_dir: str | Path, *, dtype: torch.dtype | None = None,
               max_shard_bytes: int | None = None) -> None:
    """Write config.json + model.safetensors in the model's own format.

    ``dtype`` converts the weights on the way out; ``max_shard_bytes`` splits them into
    ``model-0000i-of-0000n.safetensors`` files with a ``model.safetensors.index.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to(dtype or t.dtype).contiguous().cpu() for name, t in model.state_dict().items()}
    cfg = model.cfg
    hf = formats.format_for(cfg.model_type).config_to_hf(cfg)
    hf["torch_dtype"] = str(dtype or model.output_weight.dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
