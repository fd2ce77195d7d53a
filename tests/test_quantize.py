"""Weight-only int8 (gatedgen/quantize.py): the rounding, the fast CPU op against its plain reference,
and a whole model quantised end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import rel_err
from factory_model import make_checkpoint
from gatedgen import quantize
from gatedgen.errors import GatedgenError
from gatedgen.loading import load_model
from gatedgen.quantize import Int8Linear, quantize_int8, quantize_rows
from gatedgen.runtime import open_session, resolve_quantize


def test_rows_round_to_nearest_within_half_a_step():
    w = torch.randn(37, 100, dtype=torch.float64) * torch.logspace(-3, 1, 37, dtype=torch.float64)[:, None]
    w[5] = 0.0  # an all-zero row
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.shape == w.shape
    err = (q.double() * s.double()[:, None] - w).abs()
    assert (err <= s.double()[:, None] * (0.5 + 1e-5)).all()
    assert (q[torch.arange(37) != 5].abs().amax(1) == 127).all()  # each row uses the whole range
    assert (q[5] == 0).all()


def test_fast_op_is_present():
    """The speed of the CPU default rests on torch's int8 weight kernel; without it every product
    would silently take the slow reference."""
    assert quantize._HAS_INT8_MM


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 100), (3, 100), (2, 5, 64), (1, 200)])  # K % 16 != 0: padded
@pytest.mark.parametrize("bias", [False, True])
def test_forward_matches_dequantized_reference(dtype, shape, bias):
    gen = torch.Generator().manual_seed(hash((str(dtype), shape, bias)) % 2**31)
    K, N = shape[-1], 37
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(N, generator=gen))
    layer = Int8Linear.from_linear(lin)
    x = torch.randn(*shape, generator=gen).to(dtype)
    y = layer(x)
    assert y.shape == (*shape[:-1], N) and y.dtype == dtype and torch.isfinite(y).all()
    # the fast op multiplies bf16 activations by int8 weights and bf16 scales, rounds to bf16
    w = layer.qweight.double() * layer.scale_bf16.double()[:, None]
    ref = x.to(torch.bfloat16).double() @ w.t() + (lin.bias.double() if bias else 0)
    assert rel_err(y, ref) < 1e-2
    # and stays close to the exact float product (the quantisation error itself)
    exact = x.double() @ lin.weight.double().t() + (lin.bias.double() if bias else 0)
    assert rel_err(y, exact) < 3e-2
    assert rel_err(layer.dequantized(x), exact) < 3e-2


def test_quantized_model_keeps_its_predictions(tmp_path):
    ckpt = make_checkpoint(tmp_path)
    exact = load_model(ckpt, dtype="float32")
    quant = quantize_int8(load_model(ckpt, dtype="float32"))
    assert [m for m in quant.modules() if type(m) is nn.Linear] == [quant.lm_head]  # kept: dtype, device
    assert sum(isinstance(m, Int8Linear) for m in quant.modules()) > 10
    ids = torch.randint(0, exact.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = exact(ids), quant(ids)
    assert rel_err(b, a) < 5e-2
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    assert quantize_int8(quant) is quant  # idempotent


def test_lm_head_is_quantized_even_when_tied(tmp_path):
    ckpt = make_checkpoint(tmp_path, tie_word_embeddings=True)
    model = quantize_int8(load_model(ckpt, dtype="float32"))
    assert isinstance(model.lm_head_int8, Int8Linear)
    calls = []
    model.lm_head_int8.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))
    assert calls, "the logits did not go through the int8 head"


def test_session_generates_with_int8(tmp_path):
    ckpt = make_checkpoint(tmp_path)
    session = open_session(str(ckpt), "cpu", "float32", 64, quantize="int8").session
    assert isinstance(session.model.model.layers[0].mlp.down_proj, Int8Linear)
    from gatedgen.generate import GenerationSettings, generate_text
    from gatedgen.sampling import SamplingParams

    text = generate_text(session, "hello", GenerationSettings(max_tokens=8, sampling=SamplingParams(temperature=0)))
    assert isinstance(text, str)


def test_resolve_quantize():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_quantize("auto", cpu) == "int8"
    assert resolve_quantize("auto", cuda) == "none"
    assert resolve_quantize("none", cuda) == "none"
    with pytest.raises(GatedgenError, match="CPU only"):
        resolve_quantize("int8", cuda)
    with pytest.raises(GatedgenError, match="unknown"):
        resolve_quantize("int4", cpu)
