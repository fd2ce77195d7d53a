"""Linear maps of decode steps on the Triton skinny GEMM (kernels/gemm): at one token per sequence a
linear map is a read of its weight, which cuBLAS does at a fraction of HBM bandwidth for M = 1..32.

    use_skinny_linears(model)   # every nn.Linear now calls kernels.linear

``kernels.linear`` takes the Triton kernel for CUDA inputs of at most 32 rows without autograd and
F.linear (cuBLAS) otherwise, so prefill is unchanged. The fused projections (engine._FusedLinear) and
the LM head (CausalLM._run) call ``kernels.linear`` themselves; a fused MLP (model.MLP.glu) calls
``kernels.linear_swiglu``: the skinny GEMM with a SwiGLU epilogue at decode (gate/up and silu * up
in one kernel), cuBLAS then the SwiGLU kernel at prefill. GATEDGEN_NO_SKINNY=1 puts every one of
them back on F.linear (the Decoder then also leaves the modules alone).

At batch-1 decode the RMSNorms before those GEMMs run inside them (``kernels.rms_norm_linear``: the norm in the skinny
GEMM): the LM head's final norm (CausalLM.logits) and, once engine.fuse_projections has made
a block an engine.FusedBlock, its two norms. GATEDGEN_NO_NORM_FOLD=1 keeps the old path (the RMSNorm
kernel, then the GEMM) at decode too; GATEDGEN_NO_SKINNY=1 implies it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import kernels


class SkinnyLinear(nn.Linear):
    """nn.Linear whose forward goes through ``kernels.linear`` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


def use_skinny_linears(model: nn.Module) -> nn.Module:
    """Turn every plain nn.Linear of ``model`` into a SkinnyLinear in place (the module's class changes;
    its parameters, hooks and state-dict keys stay). Idempotent."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = SkinnyLinear
    return model
