"""Every terminal concern in one place: rich output on stderr, generated text on stdout.

Colors and spinners appear only when stderr is a terminal; stdout carries nothing but generated text.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

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


HISTORY_LENGTH = 1000


def history_path() -> Path:
    """$XDG_STATE_HOME/gatedgen/history, by default ~/.local/state/gatedgen/history."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "gatedgen" / "history"


class LineEditor:
    """REPL input with line editing and a persistent history file (readline, where available).

    The prompt goes to stdout only when stdout is a terminal (else to stderr, so that stdout keeps
    nothing but generated text). A history file that cannot be read or written costs a warning,
    never the session.
    """

    def __init__(self, history: Path | None = None) -> None:
        self.history = history
        self._readline = None
        if history is not None and sys.stdin.isatty():
            with contextlib.suppress(ImportError):
                import readline

                self._readline = readline
                readline.set_history_length(HISTORY_LENGTH)
                if history.exists():
                    try:
                        readline.read_history_file(str(history))
                    except OSError as e:
                        warn(f"cannot read the history file {history}: {e.strerror or e}")

    def read(self, prompt: str) -> str:
        """One line; raises EOFError on Ctrl-D and KeyboardInterrupt on Ctrl-C."""
        if sys.stdout.isatty():
            return input(prompt)
        sys.stderr.write(prompt)
        sys.stderr.flush()
        return input()

    def save(self) -> None:
        if self._readline is None or self.history is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(str(self.history))
        except OSError as e:
            warn(f"cannot write the history file {self.history}: {e.strerror or e}")


def read_line(prompt: str) -> str:
    """One line of input without a history file."""
    return LineEditor().read(prompt)
