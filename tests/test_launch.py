"""kernels.launch.LaunchCache: repeated launches skip Triton's dispatch and still run the binary Triton
would pick (pointer alignment, integer values, constexprs and options all change the key).

CPU: the key function, and the interpreter path (every call through ``kernel[grid]``).
GPU: results of a small kernel against torch across every kind of key change, the fast path taken on
repeats, and a CUDA-graph capture through the fast path.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_descriptor, interpret, needs_cuda
from kernels.launch import LaunchCache, _arg_key, descriptor

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
needs_triton = pytest.mark.skipif(
    not (interpret or torch.cuda.is_available()), reason="Triton kernels need CUDA or TRITON_INTERPRET=1"
)


@triton.jit
def _scaled_copy(x, y, n, stride, a, BLOCK: tl.constexpr, ADD_ONE: tl.constexpr):
    # y[i] = a * x[i * stride] (+ 1), i < n
    o_i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_i = o_i < n
    b_x = tl.load(x + o_i * stride, mask=m_i, other=0.0).to(tl.float32)
    b_y = a * b_x
    if ADD_ONE:
        b_y += 1.0
    tl.store(y + o_i, b_y.to(y.dtype.element_ty), mask=m_i)


def _launch(cache, x, n, stride, a, BLOCK=64, ADD_ONE=False, dtype=torch.float32):
    y = torch.full((n,), float("nan"), dtype=dtype, device=x.device)
    cache((triton.cdiv(n, BLOCK),), x, y, n, stride, a, BLOCK=BLOCK, ADD_ONE=ADD_ONE, num_warps=4)
    want = a * x[: n * stride : stride].float() + (1.0 if ADD_ONE else 0.0)
    torch.testing.assert_close(y.float(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)
    return y


def test_arg_key_covers_what_triton_specialises():
    t = torch.zeros(8)
    assert _arg_key(t) == (torch.float32, True)
    assert _arg_key(t[1:]) == (torch.float32, False)  # 4 bytes in: not 16-byte aligned
    assert _arg_key(t[4:]) == (torch.float32, True)
    assert _arg_key(t.to(torch.bfloat16)) == (torch.bfloat16, True)
    for value in (None, 0, 1, 16, 17, 2**40, "x"):
        assert _arg_key(value) == value
    # True == 1 and False == 0 in Python, but Triton compiles a bool argument as i1: distinct keys
    assert _arg_key(True) != _arg_key(1) and _arg_key(False) != _arg_key(0)
    assert _arg_key(0.5) is float and _arg_key(2.0) is float  # floats are not specialised on value
    with pytest.raises(TypeError):
        _arg_key(object())


def test_arg_key_of_gluon_descriptors_is_what_triton_specialises():
    """Triton specialises a Gluon tensor descriptor on its dtype, block shape and layout only (the shape
    and strides are launch values): equal keys for other shapes, distinct ones for another block, dtype
    or layout, and the key agrees with Triton's own specialisation."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def desc(shape, block, dtype=torch.bfloat16, swizzle=None):
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)
        if swizzle is not None:
            layout = gl.NVMMASharedLayout(swizzle_byte_width=swizzle, element_bitwidth=16, rank=len(block))
        return TensorDescriptor.from_tensor(torch.zeros(shape, dtype=dtype), block, layout)

    def spec(d):
        return native_specialize_impl(BaseBackend, d, False, True, True)

    base = desc([2, 64, 256], [1, 64, 128])
    same = desc([3, 100, 512], [1, 64, 128])
    assert _arg_key(base) == _arg_key(same) and spec(base) == spec(same)
    for other in (desc([2, 64, 256], [1, 32, 128]), desc([2, 64, 256], [1, 64, 128], torch.float16),
                  desc([2, 64, 256], [1, 64, 128], swizzle=64)):
        assert _arg_key(other) != _arg_key(base) and spec(other) != spec(base)


def test_arg_key_of_tl_descriptors_is_what_triton_specialises():
    """A ``tl`` tensor descriptor is specialised on its dtype and block shape (shape and strides are launch
    values): equal keys for other shapes, distinct ones for another block or dtype, as Triton's own."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.tools.tensor_descriptor import TensorDescriptor

    def desc(shape, block, dtype=torch.bfloat16):
        return TensorDescriptor.from_tensor(torch.zeros(shape, dtype=dtype), block)

    def spec(d):
        return native_specialize_impl(BaseBackend, d, False, True, True)

    base = desc([64, 256], [32, 64])
    same = desc([100, 512], [32, 64])
    assert _arg_key(base) == _arg_key(same) and spec(base) == spec(same)
    for other in (desc([64, 256], [64, 64]), desc([64, 256], [32, 64], torch.float16)):
        assert _arg_key(other) != _arg_key(base) and spec(other) != spec(base)


@pytest.mark.parametrize("gluon", [False, True])
@pytest.mark.parametrize("dtype,shape,block", [(torch.bfloat16, [600, 512], [64, 128]),
                                               (torch.float16, [1, 77, 128], [1, 128, 64]),
                                               (torch.float32, [8, 1040], [1, 128])])
def test_descriptor_equals_tritons_checked_one(gluon, dtype, shape, block):
    """``descriptor`` (no dataclass checks) equals ``TensorDescriptor.from_tensor``'s checked descriptor
    field by field, for the tl and the Gluon class."""
    import math

    from triton.tools.tensor_descriptor import TensorDescriptor as TlDesc

    x = torch.zeros(math.prod(shape), dtype=dtype)
    if gluon:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GlDesc

        layout = gl.NVMMASharedLayout.get_default_for(block, {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
                                                              torch.float32: gl.float32}[dtype])
        fast, checked = descriptor(GlDesc, x, shape, block, layout), GlDesc.from_tensor(x.view(shape), block, layout)
    else:
        fast, checked = descriptor(TlDesc, x, shape, block), TlDesc.from_tensor(x.view(shape), block)
    assert_same_descriptor(fast, checked)
    assert _arg_key(fast) == _arg_key(checked)


@needs_triton
def test_launch_cache_results_and_fast_path():
    cache = LaunchCache(_scaled_copy)
    x = torch.randn(300, device=DEVICE)
    _launch(cache, x, 100, 1, 0.5)
    _launch(cache, x, 100, 1, -2.0)  # same key (floats by type)
    if interpret:
        assert cache.hits == 0, "the interpreter must always take Triton's path"
    else:
        assert cache.hits == 1
    # every kind of key change, each checked against torch: alignment, integer values (1 and multiples
    # of 16 are specialised by Triton), constexprs, dtypes
    _launch(cache, x[1:], 100, 1, 0.5)
    _launch(cache, x, 96, 1, 0.5)
    _launch(cache, x, 97, 2, 0.5)
    _launch(cache, x, 16, 16, 0.5)
    _launch(cache, x, 100, 1, 0.5, ADD_ONE=True)
    _launch(cache, x, 100, 1, 0.5, BLOCK=32)
    _launch(cache, x.to(torch.bfloat16), 100, 1, 0.5, dtype=torch.bfloat16)
    hits = cache.hits
    _launch(cache, x[1:], 100, 1, 3.0)  # repeats of keys seen above
    _launch(cache, x, 97, 2, 0.25)
    assert cache.hits == (hits if interpret else hits + 2)


@needs_cuda
def test_gpu_launch_cache_under_graph_capture():
    cache = LaunchCache(_scaled_copy)
    x = torch.randn(256, device="cuda")
    y = torch.empty(256, device="cuda")
    for _ in range(2):  # compile, then a fast-path launch before capture
        cache((4,), x, y, 256, 1, 2.0, BLOCK=64, ADD_ONE=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cache((4,), x, y, 256, 1, 2.0, BLOCK=64, ADD_ONE=False)
    x.copy_(torch.randn(256, device="cuda"))
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, 2.0 * x)


@needs_triton
def test_prepare_compiles_without_launching_and_replays_current_values():
    """``prepare`` compiles a new key without launching; ``()`` launches with the values the buffers hold
    then (pointers are kept, not values). The interpreter has no prepared launches."""
    cache = LaunchCache(_scaled_copy)
    x = torch.randn(200, device=DEVICE)
    y = torch.full((200,), float("nan"), device=DEVICE)
    plan = cache.prepare((4,), x, y, 200, 1, 3.0, BLOCK=64, ADD_ONE=True, num_warps=4)
    if interpret:
        assert plan is None
        return
    torch.cuda.synchronize()
    assert torch.isnan(y).all(), "prepare must not launch"
    for _ in range(2):
        plan()
        torch.cuda.synchronize()
        torch.testing.assert_close(y, 3.0 * x + 1.0)
        x.copy_(torch.randn(200, device=DEVICE))
        y.fill_(float("nan"))
    # the same key through the ordinary call agrees (one compiled kernel for both)
    cache((4,), x, y, 200, 1, 3.0, BLOCK=64, ADD_ONE=True, num_warps=4)
    torch.testing.assert_close(y, 3.0 * x + 1.0)
    assert cache.hits == 1


@needs_cuda
def test_gpu_launch_hooks_still_called():
    """With a launch hook listening, fast-path launches go through Triton's launcher (which calls it),
    ``prepare`` declines and a stored prepared launch is not replayed; without one, the C launcher is
    called directly."""
    from triton import knobs

    cache = LaunchCache(_scaled_copy)
    x = torch.randn(64, device="cuda")
    y = torch.empty(64, device="cuda")
    cache((1,), x, y, 64, 1, 1.0, BLOCK=64, ADD_ONE=False)  # compile

    def make():
        return (1,), (x, y, 64, 1, 1.0), dict(BLOCK=64, ADD_ONE=False), None

    assert cache.launch_prepared("plan", make) is not None  # stored while no hook listens
    seen = []

    def hook(metadata):
        seen.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        cache((1,), x, y, 64, 1, 1.0, BLOCK=64, ADD_ONE=False)
        assert cache.prepare((1,), x, y, 64, 1, 1.0, BLOCK=64, ADD_ONE=False) is None
        assert cache.launch_prepared("plan", make) is None  # the stored plan is not replayed past the hook
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert seen == ["_scaled_copy"] * 2
    assert cache.prepare((1,), x, y, 64, 1, 1.0, BLOCK=64, ADD_ONE=False) is not None
