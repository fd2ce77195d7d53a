"""Shared test helpers: fp64 oracles, NaN-poisoned buffers, tolerances per dtype."""

from __future__ import annotations

import os

import pytest
import torch

# Relative-error bounds ||out - ref|| / ||ref|| per dtype of the inputs.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
interpret = os.environ.get("TRITON_INTERPRET") == "1"


def triton_device() -> str:
    """The device a Triton kernel test module runs on: "cuda" on a GPU, "cpu" under TRITON_INTERPRET=1
    (small shapes). Skips the calling module without either, or without triton; call it at module level
    before importing a kernel module."""
    cuda = torch.cuda.is_available() and not interpret
    if not (interpret or cuda):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
    pytest.importorskip("triton")
    return "cuda" if cuda else "cpu"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert not torch.isnan(out).any(), "output has NaN (unwritten or invalid elements)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def cu_seqlens_of(lens, device="cpu") -> torch.Tensor:
    """int32 [N + 1] boundaries of packed sequences of these lengths."""
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def assert_same_descriptor(fast, checked) -> None:
    """Two tensor descriptors agree field by field (type, base, shape, strides, block, padding, layout)."""
    assert type(fast) is type(checked)
    assert fast.base.data_ptr() == checked.base.data_ptr() and fast.base.dtype == checked.base.dtype
    for field in ("shape", "strides", "block_shape"):
        assert list(getattr(fast, field)) == list(getattr(checked, field)), field
    assert fast.padding == checked.padding
    assert getattr(fast, "layout", None) == getattr(checked, "layout", None)


def poisoned(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A new buffer filled with NaN so that any element a kernel fails to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def direct_attention(q, k, v, g=None, scale=None, offset=None):
    """fp64 O(T^3)-memory oracle: s_ij = scale q_i.k_j + sum_{l=j+1..i} g_l, written term by term.

    q [B, Tq, HQ, D]; k, v [B, Tk, H, D]; g [B, Tk, HQ] raw gates over all Tk positions.
    Queries sit at absolute positions offset .. offset + Tq - 1 (default: the last Tq of Tk).
    """
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    offset = Tk - Tq if offset is None else offset
    q, k, v = q.double(), k.double(), v.double()
    kh = k.repeat_interleave(HQ // H, dim=2)
    vh = v.repeat_interleave(HQ // H, dim=2)
    s = scale * torch.einsum("bihd,bjhd->bhij", q, kh)  # [B, HQ, Tq, Tk]
    i_pos = torch.arange(offset, offset + Tq)
    j_pos = torch.arange(Tk)
    l_pos = torch.arange(Tk)
    if g is not None:
        # indicator[i, j, l] = 1 when j < l <= i: the gates between key j and query i
        ind = (l_pos[None, None, :] > j_pos[None, :, None]) & (l_pos[None, None, :] <= i_pos[:, None, None])
        s = s + torch.einsum("ijl,blh->bhij", ind.double(), g.double())
    s = s.masked_fill(j_pos[None, :] > i_pos[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhij,bjhd->bihd", p, vh)


def nan_buffers_fixture(monkeypatch):
    """torch.empty / empty_like return NaN-filled tensors: any element a kernel skips shows up.
    A test module opts in with ``nan_buffers = pytest.fixture(autouse=True)(nan_buffers_fixture)``."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty_like(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


def decode_logits_on_off(monkeypatch, env: str, batch: int, dtype):
    """(model, [logits with env=1, logits with env=0]): the 135M random model's eager decode step after a
    9-token prefill, once with the switch ``env`` set (the path it turns off) and once without (CUDA)."""
    from gatedgen.bench.generate import PRESETS, random_model
    from gatedgen.engine import Decoder

    model = random_model(PRESETS["135m"], "cuda", dtype)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, 9), device="cuda")
    logits = []
    for off in ("1", "0"):
        monkeypatch.setenv(env, off)
        cache = model.new_cache(batch, 16)
        Decoder(model, cache, use_graphs=False)
        with torch.inference_mode():
            model(ids, cache, mode="prefill")
            logits.append(model(ids[:, :1], cache, mode="decode"))
    return model, logits


def spy_shapes(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` (a module's function) so that each call records its first argument's shape;
    returns the list the calls fill."""
    calls, real = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls
