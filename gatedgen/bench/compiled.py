"""What Triton compiled for a kernel, one line per specialization (registers, spills, shared memory,
warps, stages, integer and string constants): the resource report the GPU scripts print beside their
timings."""

from __future__ import annotations


def compiled_lines(name: str, fn) -> list[str]:
    """One line per compiled specialization of the @triton.jit function ``fn`` in this process (none
    before its first launch, or under the interpreter)."""
    lines = []
    for dev_cache in getattr(fn, "device_caches", {}).values():
        for kern in dev_cache[0].values():
            try:
                c = kern.metadata
                consts = {k: v for k, v in kern.src.constants.items() if isinstance(v, (int, str))}
                lines.append(f"{name}: regs={kern.n_regs} spills={kern.n_spills} smem={c.shared} "
                             f"warps={c.num_warps} stages={c.num_stages} {consts}")
            except Exception as e:  # noqa: BLE001  (a report, never fatal)
                lines.append(f"{name}: info failed {type(e).__name__}: {e}")
    return lines


def print_compiled(kernels: list[tuple[str, object]]) -> None:
    """Print ``compiled_lines`` of each (name, kernel) pair."""
    for name, fn in kernels:
        for line in compiled_lines(name, fn):
            print(line, flush=True)
