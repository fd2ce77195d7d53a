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

A fast-path launch calls the compiled kernel's C launcher itself, with the argument list Triton's Python
wrappers would build (tensor descriptors expanded to their TMA maps, shapes and strides by Triton's own
``make_tensordesc_arg``) and no launch metadata while no launch hook listens (Triton 3.6 keeps the hooks
as empty ``HookChain`` objects, which made every launch build a metadata dict). Kernels that need
global or profile scratch memory keep Triton's launcher.

``LaunchCache.prepare`` goes one step further for callers that launch the same call again and again
(an eager prefill at a fixed shape, a benchmark loop): it returns a ``PreparedLaunch`` whose whole
argument list is built once, with pointers as integers and TMA maps filled; the caller keys it on what
the arguments are made of (addresses, shapes, values) and replays it with ``()``. H100 machine,
2026-11-25 (session 15): the Gluon prefill launch cost 48 us of host time per call (five descriptors,
the argument key, Triton's wrappers), a prepared replay 12 us (its key included).
"""

from __future__ import annotations

import math
import os

import torch
from triton import knobs
from triton.compiler.compiler import CompiledKernel
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
from triton.tools.tensor_descriptor import TensorDescriptor as TlTensorDescriptor
from triton.runtime.driver import driver

try:  # Triton's own expansion of a host tensor descriptor into launcher arguments (NVIDIA backend)
    from triton.backends.nvidia.driver import make_tensordesc_arg
except ImportError:  # pragma: no cover - other backends: Triton's launcher only
    make_tensordesc_arg = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_MAX_KEYS = 4096  # per kernel; a full cache is emptied (a key is a shape / stride / constexpr combination)
_MAX_PLANS = 256  # prepared launches per kernel (``launch_prepared``); a full store is emptied


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


def _hooks_idle() -> bool:
    """Whether no launch hook listens (None, or an empty ``HookChain``): then a launch needs no metadata."""
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


def _raw_launcher(run):
    """The compiled kernel's C launcher under Triton's Python wrappers, with the positions and TMA metadata
    of its tensor-descriptor parameters: (launch, {position: meta}), or None where the launcher is not
    the one this module knows (Triton 3.6, NVIDIA: ``CudaLauncher.launch``, which is the C function or
    ``wrap_handle_tensordesc``'s closure over it) or needs scratch memory per launch."""
    if make_tensordesc_arg is None or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None
    launch = getattr(run, "launch", None)
    code = getattr(launch, "__code__", None)
    if code is None:  # the C function itself: no tensor descriptors
        return (launch, {}) if launch is not None else None
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in launch.__closure__ or ())))
    if not {"launcher", "tensordesc_indices", "tensordesc_meta"} <= cells.keys():
        return None
    positions = sorted(cells["tensordesc_indices"])
    return cells["launcher"], dict(zip(positions, cells["tensordesc_meta"]))


class _Entry:
    """A compiled specialisation: the kernel, the parameters after the positional ones, and (when the fast
    path applies) the C launcher, the arguments it takes before the kernel's (function, cooperative grid,
    PDL, no scratch, packed metadata, no launch metadata, no hooks) and the descriptor positions."""

    __slots__ = ("compiled", "tail", "raw", "head", "descs")

    def __init__(self, compiled, tail):
        self.compiled, self.tail = compiled, tail
        run = compiled.run
        raw = _raw_launcher(run)
        self.raw, self.descs = raw if raw is not None else (None, {})
        self.head = (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                     compiled.packed_metadata, None, None, None) if raw is not None else None

    def expand(self, all_args, as_ints: bool = False) -> list:
        """The kernel's arguments as the C launcher takes them: descriptors expanded (``make_tensordesc_arg``),
        and with ``as_ints`` every tensor as its address."""
        if not self.descs and not as_ints:
            return all_args
        out = []
        for i, a in enumerate(all_args):
            meta = self.descs.get(i, _NOT_DESC)
            parts = make_tensordesc_arg(a, meta) if meta is not _NOT_DESC else (a,)
            if as_ints:
                parts = [p.data_ptr() if isinstance(p, torch.Tensor) else p for p in parts]
            out.extend(parts)
        return out


_NOT_DESC = object()


class PreparedLaunch:
    """One launch with its whole C-launcher argument list built (pointers as integers, TMA maps filled):
    ``()`` launches it on the current stream. It holds no tensor: the caller keys it on the addresses,
    shapes and values it was built from and keeps alive what it points to (``keep``: e.g. a schedule
    tensor the caller's own cache may drop). ``launch_prepared`` replays it only while no launch hook
    (e.g. proton's) listens."""

    __slots__ = ("_raw", "_device", "_grid", "_args", "keep")

    def __init__(self, raw, device: int, grid: tuple, args: tuple, keep=None):
        self._raw, self._device, self._grid, self._args, self.keep = raw, device, grid, args, keep

    def __call__(self) -> None:
        gx, gy, gz = self._grid
        self._raw(gx, gy, gz, driver.active.get_current_stream(self._device), *self._args)


class LaunchCache:
    """``LaunchCache(kernel)(grid, *args, **constexprs_and_options)`` launches like
    ``kernel[grid](*args, **constexprs_and_options)``; args are the kernel's leading non-constexpr
    parameters, in order, and every later parameter is given by keyword or has a default."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.hits = 0  # launches that skipped Triton's dispatch (tests check the fast path runs)
        self._compiled: dict[tuple, _Entry] = {}
        self._plans: dict = {}  # caller key -> PreparedLaunch (``launch_prepared``)

    def _lookup(self, args, meta):
        """(key, entry or None) of a call (the key: module docstring), or (None, None) where the key does not
        cover an argument."""
        try:
            key = (torch.cuda.current_device(), tuple(map(_arg_key, args)), tuple(meta.items()))
            return key, self._compiled.get(key)
        except TypeError:  # an argument type the key does not cover, or an unhashable value
            return None, None

    def _compile(self, key, grid, args, meta, launch: bool):
        """Triton's dispatch for a new key: compiles (and launches when ``launch``, else ``warmup``) and keeps
        the compiled kernel under the key; returns what Triton returned. Not kept: anything but a compiled
        kernel (an asynchronous compile's future, None from a cache hook that skipped the compile)."""
        compiled = self.kernel[grid](*args, **meta) if launch else self.kernel.warmup(*args, grid=grid, **meta)
        if isinstance(compiled, CompiledKernel):
            if len(self._compiled) >= _MAX_KEYS:
                self._compiled.clear()
            # the parameters after the positional ones (constexprs, defaults), as Triton binds them
            params = self.kernel.params[len(args):]
            tail = tuple(meta[p.name] if p.name in meta else p.default for p in params)
            self._compiled[key] = _Entry(compiled, tail)
        return compiled

    def __call__(self, grid, *args, **meta):
        if _INTERPRET:
            return self.kernel[grid](*args, **meta)
        key, entry = self._lookup(args, meta)
        if key is None:
            return self.kernel[grid](*args, **meta)
        if entry is None:
            return self._compile(key, grid, args, meta, launch=True)
        self.hits += 1
        stream = driver.active.get_current_stream(key[0])
        grid = tuple(grid) + (1,) * (3 - len(grid))
        all_args = args + entry.tail
        compiled = entry.compiled
        if entry.raw is not None and _hooks_idle():
            entry.raw(grid[0], grid[1], grid[2], stream, *entry.head, *entry.expand(all_args))
            return compiled
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        metadata = compiled.launch_metadata(grid, stream, *all_args) if enter is not None else None
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, metadata,
                     enter, leave, *all_args)
        return compiled

    def prepare(self, grid, *args, keep=None, **meta) -> PreparedLaunch | None:
        """A ``PreparedLaunch`` of ``self(grid, *args, **meta)`` (compiled here if new, not launched), or None
        where only the ordinary path applies (the interpreter, an argument the key does not cover, a
        launcher that needs scratch memory, a launch hook listening). Every tensor in ``args`` must be a
        CUDA tensor of the current device (its address goes in as an integer, unchecked)."""
        if _INTERPRET or not _hooks_idle():
            return None
        key, entry = self._lookup(args, meta)
        if key is None:
            return None
        if entry is None:
            self._compile(key, grid, args, meta, launch=False)
            entry = self._compiled.get(key)
        if entry is None or entry.raw is None:
            return None
        grid = tuple(grid) + (1,) * (3 - len(grid))
        return PreparedLaunch(entry.raw, key[0], grid, entry.head + tuple(entry.expand(args + entry.tail, True)), keep)

    def launch_prepared(self, plan_key, make) -> PreparedLaunch | None:
        """Launch the prepared launch stored under the caller's ``plan_key``, or first prepare one from
        ``make()`` -> (grid, args, meta, keep) and store it. ``plan_key`` must determine every argument
        ``make`` would build (addresses, shapes, values, settings). Where no launch can be prepared the
        call is launched the ordinary way (and None returned), as it is while a launch hook listens."""
        plan = self._plans.get(plan_key)
        if plan is None or not _hooks_idle():
            grid, args, meta, keep = make()
            plan = self.prepare(grid, *args, keep=keep, **meta)
            if plan is None:
                self(grid, *args, **meta)
                return None
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[plan_key] = plan
        plan()
        return plan
