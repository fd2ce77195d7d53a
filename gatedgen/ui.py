"""Every terminal concern in one place: rich output on stderr, generated text on stdout.

Colors and spinners appear only when stderr is a terminal; stdout carries nothing but generated text.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console

from gatedgen.generate import Stats

err = Console(stderr=True, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"[bold red]Error:[/] {message}" if err.is_terminal else f"Error: {message}", markup=err.is_terminal)


def warn(message: str) -> None:
    err.print(f"[yellow]Warning:[/] {message}" if err.is_terminal else f"Warning: {message}",
              markup=err.is_terminal)


def info(message: str) -> None:
    err.print(message, markup=False, style="dim" if err.is_terminal else None)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner on a terminal; nothing otherwise."""
    if err.is_terminal:
        with err.status(message, spinner="dots"):
            yield
    else:
        yield


def write(text: str) -> None:
    """Generated text to stdout, flushed so it streams."""
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def stats_lines(stats: Stats) -> list[str]:
    return [
        f"prompt: {stats.prompt_tokens} tokens, {stats.prefill_tps:.1f} tokens/s",
        f"generation: {stats.generated_tokens} tokens, {stats.decode_tps:.1f} tokens/s",
        f"time to first token: {stats.ttft_seconds * 1000:.1f} ms",
    ]


def print_stats(stats: Stats) -> None:
    for line in stats_lines(stats):
        info(line)


def read_line(prompt: str) -> str:
    """One line of REPL input (line editing through readline where available)."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (enables editing and in-session history for input())
    return input(prompt)
