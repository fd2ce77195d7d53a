"""Before training: does the Triton parallel kernel's backward agree with the reference at the
training shape? Exit 0 if o, dq, dk, dv and dg all agree (bf16 tolerance), 1 otherwise."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from kernels.attn import naive
from kernels.attn import parallel


def main(B: int = 8, T: int = 512, H: int = 6, D: int = 64) -> int:
    torch.manual_seed(0)
    dev = "cuda"
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3).requires_grad_()
    do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
    grads = {}
    for name, fn in (("triton", parallel.parallel_attn), ("reference", naive.parallel_attn)):
        o = fn(q, k, v, g)
        dq, dk, dv, dg = torch.autograd.grad(o, (q, k, v, g), do)
        grads[name] = (o, dq, dk, dv, dg)
    ok = True
    for label, a, b in zip("o dq dk dv dg".split(), grads["triton"], grads["reference"]):
        err = ((a.float() - b.float()).norm() / b.float().norm()).item()
        ok &= err < 2e-2
        print(f"{label}: relative error {err:.2e}")
    print("parallel_attn backward", "agrees" if ok else "DISAGREES", "with the reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
