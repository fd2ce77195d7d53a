"""The inference fast path of the Triton parallel attention (kernels/attn/parallel.py): with nothing
needing a gradient the forward launcher runs without the autograd Function, and gives the autograd
path's outputs bit for bit; packed passes read their sequence lengths once for all layers.

CUDA, or CPU under TRITON_INTERPRET=1 at small shapes (skipped otherwise).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import nan_buffers_fixture, rel_err, triton_device
from kernels.attn import naive

DEVICE = triton_device()  # conftest: skips this module without CUDA or TRITON_INTERPRET=1

from kernels.attn import parallel  # noqa: E402  (after the skip: imports triton)

nan_buffers = pytest.fixture(autouse=True)(nan_buffers_fixture)  # conftest: NaN-filled torch.empty


def _inputs(B, T, HQ, H, D, dtype=torch.float32):
    q = torch.randn(B, T, HQ, D, device=DEVICE).to(dtype)
    k = torch.randn(B, T, H, D, device=DEVICE).to(dtype)
    v = torch.randn(B, T, H, D, device=DEVICE).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, HQ, device=DEVICE) + 3)
    return q, k, v, g


class _NoFunction:
    """Stands in for ParallelAttentionFunction: fails if the fast path goes through autograd."""

    @staticmethod
    def apply(*args):
        raise AssertionError("the autograd Function ran on the inference path")


CASES = {
    "gated": lambda q, k, v, g: dict(g=g),
    "ungated": lambda q, k, v, g: {},
    "continue-cache": lambda q, k, v, g: dict(gc=torch.cumsum(g, 1), q_rows=slice(-5, None)),
    "packed": lambda q, k, v, g: dict(g=g, cu_seqlens=torch.tensor([0, 1, 8, 19], dtype=torch.int32, device=DEVICE)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "plain_tensors"])
def test_fast_path_equals_autograd_path(case, mode, monkeypatch):
    B = 1 if case == "packed" else 2
    q, k, v, g = _inputs(B, 19, 4, 2, 32)
    kw = CASES[case](q, k, v, g)
    rows = kw.pop("q_rows", slice(None))
    q = q[:, rows]
    # autograd path: leaves that need gradients
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o_ref, lse_ref = parallel.parallel_attn(*leaves, return_lse=True, **kw)
    assert o_ref.requires_grad
    want = naive.parallel_attn(q.double(), k.double(), v.double(), return_lse=True,
                               **{n: (t.double() if n in ("g", "gc") else t) for n, t in kw.items()})
    assert rel_err(o_ref, want[0]) < 1e-4  # the path compared against is right
    monkeypatch.setattr(parallel, "ParallelAttentionFunction", _NoFunction)
    if mode == "no_grad":  # inputs that require grad, grad mode off
        with torch.no_grad():
            o, lse = parallel.parallel_attn(*leaves, return_lse=True, **kw)
    elif mode == "inference_mode":
        with torch.inference_mode():
            o, lse = parallel.parallel_attn(q.clone(), k.clone(), v.clone(), return_lse=True, **kw)
    else:  # grad mode on, but nothing requires grad
        o, lse = parallel.parallel_attn(q, k, v, return_lse=True, **kw)
    assert not o.requires_grad
    assert torch.equal(o, o_ref.detach()) and torch.equal(lse, lse_ref)


def test_gradients_still_take_the_autograd_path(monkeypatch):
    q, k, v, g = _inputs(1, 9, 2, 1, 16)
    g = g.requires_grad_()  # only the gates need a gradient
    o = parallel.parallel_attn(q, k, v, g)
    o.sum().backward()
    assert g.grad is not None and torch.isfinite(g.grad).all()
    monkeypatch.setattr(parallel, "ParallelAttentionFunction", _NoFunction)
    with pytest.raises(AssertionError, match="autograd Function ran"):
        parallel.parallel_attn(q, k, v, g)


def test_chunk_indices_read_once_per_cu_seqlens():
    cu = torch.tensor([0, 3, 40, 41], dtype=torch.int32, device=DEVICE)
    first = parallel.prepare_chunk_indices(cu, 16)
    assert first.tolist() == [[0, 0], [1, 0], [1, 1], [1, 2], [2, 0]]
    assert parallel.prepare_chunk_indices(cu, 16) is first  # same tensor: no second read
    assert parallel.prepare_chunk_indices(cu, 32).tolist() == [[0, 0], [1, 0], [1, 1], [2, 0]]
    cu[3] = 60  # modified in place: read again
    assert parallel.prepare_chunk_indices(cu, 16).tolist() == [[0, 0], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1]]
    other = cu.clone()  # an equal but new tensor is read again too
    again = parallel.prepare_chunk_indices(other, 16)
    assert again is not first and again.tolist()[-1] == [2, 1]


def test_blocks_are_one_cached_dict_per_shape_class():
    from kernels.attn.parallel_tuning import _blocks

    assert _blocks("fwd", 64) is _blocks("fwd", 64)
    assert set(_blocks("fwd", 64)) == {"BT", "BS", "num_warps", "num_stages"}
