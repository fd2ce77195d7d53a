"""Launch a ``@triton.jit`` kernel with less host work per call than ``kernel[grid](...)``.

Why: small decode steps are bound by the host when they are not replayed from a CUDA graph. On the
H100 machine (2026-11-24) an eager ``decode_attn`` at 1 x 4096 cost 68 us of host time per call, of
which Triton's dispatch (binding and specialising ~30 arguments, the cache key, the globals check) was
about a third, against 13 us of kernel time.

How: Triton compiles one kernel per *specialisation* of the arguments: each tensor's dtype and whether
its address is 16-byte aligned, each integer's value class (1, a multiple of 16, its width), the
constexprs and the launch options. ``LaunchCache`` keys on a superset of that: tensors by (dtype,
aligned), tensor descriptors (``tl`` and Gluon) by dtype, block shape, padding, rank and, for Gluon, the
shared layout (what Triton specialises them on; the launcher builds the TMA descriptor from the object at
every launch), integers
by their exact value, floats by type, constexprs and options by value, plus the
current device. The first launch of a key goes through Triton's own dispatch (which compiles if it
must and returns the compiled kernel); later launches of the key call that compiled kernel's launcher
directly, with the same argument list Triton would pass. Two calls with equal keys are specialised
identically by Triton, so they run the same binary either way.

Not used under the CPU interpreter (``TRITON_INTERPRET=1``): there every call goes through
``kernel[grid]``. Arguments of other types also take Triton's path.

``descriptor`` builds either kind of tensor descriptor of a contiguous tensor without the dataclass's
per-call checks (the other host cost of a TMA launch).
"""

from __future__ import annotations

import math
import os

import torch
from triton import knobs
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
from triton.tools.tensor_descriptor import TensorDescriptor as TlTensorDescriptor
from triton.runtime.driver import driver

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_MAX_KEYS = 4096  # per kernel; a full cache is emptied (a key is a shape / stride / constexpr combination)


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, GluonTensorDescriptor):  # specialised by block type and layout (base: 16-byte aligned)
        return (GluonTensorDescriptor, a.base.dtype, tuple(a.block_shape), a.layout, a.padding, len(a.shape))
    if isinstance(a, TlTensorDescriptor):  # specialised by dtype and block shape
        return (TlTensorDescriptor, a.base.dtype, tuple(a.block_shape), a.padding, len(a.shape))
    if isinstance(a, bool):  # tagged: True == 1 as dict keys, but Triton types a bool i1 and an int i32
        return (bool, a)
    if a is None or isinstance(a, (int, str)):
        return a
    if isinstance(a, float):
        return float
    raise TypeError  # anything else: Triton's own dispatch


def descriptor(cls, x: torch.Tensor, shape: list[int], block: list[int], layout=None):
    """A tensor descriptor (``cls``: the ``tl`` or the Gluon TensorDescriptor; ``layout``: the Gluon one's
    shared layout) of the contiguous tensor x seen as ``shape``, with ``block`` blocks and zero padding.
    Built without the dataclass's ``__post_init__`` checks, which cost about as much host time as the
    launch's own encoding of the descriptor: the callers let through only what those checks accept
    (16-byte aligned base and strides, positive sizes, power-of-two blocks), and tests compare the result
    with ``from_tensor``'s field by field."""
    d = object.__new__(cls)
    d.base, d.shape, d.block_shape, d.padding = x, shape, block, "zero"
    d.strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    if layout is not None:
        d.layout = layout
    return d


class LaunchCache:
    """``LaunchCache(kernel)(grid, *args, **constexprs_and_options)`` launches like
    ``kernel[grid](*args, **constexprs_and_options)``; args are the kernel's leading non-constexpr
    parameters, in order, and every later parameter is given by keyword or has a default."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.hits = 0  # launches that skipped Triton's dispatch (tests check the fast path runs)
        self._compiled: dict[tuple, tuple] = {}

    def __call__(self, grid, *args, **meta):
        if _INTERPRET:
            return self.kernel[grid](*args, **meta)
        try:
            key = (torch.cuda.current_device(), tuple(map(_arg_key, args)), tuple(meta.items()))
            hit = self._compiled.get(key)
        except TypeError:  # an argument type the key does not cover, or an unhashable value
            return self.kernel[grid](*args, **meta)
        if hit is None:
            compiled = self.kernel[grid](*args, **meta)
            if len(self._compiled) >= _MAX_KEYS:
                self._compiled.clear()
            # the parameters after the positional ones (constexprs, defaults), as Triton binds them
            params = self.kernel.params[len(args):]
            tail = tuple(meta[p.name] if p.name in meta else p.default for p in params)
            self._compiled[key] = (compiled, tail)
            return compiled
        compiled, tail = hit
        self.hits += 1
        stream = driver.active.get_current_stream(key[0])
        grid = tuple(grid) + (1,) * (3 - len(grid))
        all_args = args + tail
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        metadata = compiled.launch_metadata(grid, stream, *all_args) if enter is not None else None
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, metadata,
                     enter, leave, *all_args)
        return compiled
