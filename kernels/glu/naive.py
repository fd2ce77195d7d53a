"""Reference SwiGLU: silu(gate) * up in fp32, rounded once to gate's dtype.

gate, up: [..., I] (any strides). Returns [..., I] contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)
