"""Stop strings over streamed text: emit only what can no longer turn into a stop string."""

from __future__ import annotations

from collections.abc import Iterable

from gatedgen.errors import GatedgenError


class StopMatcher:
    """Watches streamed text for any of ``stops``.

    :meth:`push` returns the text that is safe to show and whether a stop string was hit. A stop
    string and everything after it are never returned; a trailing part that could still grow into
    a stop string is held back until it cannot (or until :meth:`flush`). When several stop strings
    occur, the one completed first in the text wins (ties: the longer one), so the result does not
    depend on how the text was split into pieces.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        if any(not s for s in self.stops):
            raise GatedgenError("stop strings must not be empty")
        self._held = ""
        self.hit = False
        """True once a stop string has been seen; later pushes return ``("", True)``."""

    def push(self, text: str) -> tuple[str, bool]:
        """Add streamed text; return ``(text safe to emit, stop string hit)``."""
        if self.hit:
            return "", True
        buf = self._held + text
        cut = self._first_stop(buf)
        if cut is not None:
            self.hit = True
            self._held = ""
            return buf[:cut], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Generation ended for another reason: return the held-back text."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _first_stop(self, buf: str) -> int | None:
        """Start of the stop string that ends first in ``buf`` (None if none occurs)."""
        best: tuple[int, int] | None = None  # (end, start)
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best):
                best = (i + len(s), i)
        return None if best is None else best[1]

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:k]):
                    longest = k
                    break
        return longest
