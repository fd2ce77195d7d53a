"""StopMatcher: stop strings never shown, partial matches held back, result independent of chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatedgen.errors import GatedgenError
from gatedgen.stops import StopMatcher


def run(stops: list[str], chunks: list[str]) -> tuple[str, bool, list[str]]:
    """Feed chunks until a stop hits; return (all emitted text, hit, emitted pieces)."""
    matcher = StopMatcher(stops)
    pieces: list[str] = []
    for chunk in chunks:
        out, hit = matcher.push(chunk)
        pieces.append(out)
        if hit:
            return "".join(pieces), True, pieces
    pieces.append(matcher.flush())
    return "".join(pieces), False, pieces


def reference(stops: list[str], text: str) -> tuple[str, bool]:
    """Cut before the stop string that ends first (ties: the longer one)."""
    found = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    if not found:
        return text, False
    return text[: min(found)[1]], True


def test_stop_split_across_pushes_is_never_emitted():
    matcher = StopMatcher(["</answer>"])
    assert matcher.push("The result is 4") == ("The result is 4", False)
    assert matcher.push(" </ans") == (" ", False)  # "</ans" could still become the stop
    assert matcher.push("wer> trailing") == ("", True)
    assert matcher.push("more") == ("", True)
    assert matcher.flush() == ""


def test_false_alarm_is_released():
    matcher = StopMatcher(["\n\nUser:"])
    assert matcher.push("a\n\nUs") == ("a", False)
    assert matcher.push("ually") == ("\n\nUsually", False)


def test_flush_returns_held_text_when_generation_ends_otherwise():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("go ST") == ("go ", False)
    assert matcher.flush() == "ST"
    assert matcher.flush() == ""


def test_stop_inside_one_chunk_cuts_there():
    assert StopMatcher(["##"]).push("abc##def##") == ("abc", True)


def test_first_completed_stop_wins():
    # "bc" completes before "abcd" does, whether the text comes at once or char by char
    assert run(["abcd", "bc"], ["abcd"])[:2] == ("a", True)
    assert run(["abcd", "bc"], list("abcd"))[:2] == ("a", True)
    # same end: the longer one (earlier start) wins
    assert run(["cd", "abcd"], ["xabcd"])[:2] == ("x", True)


def test_no_stops_passes_everything_through():
    matcher = StopMatcher([])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


def test_empty_stop_string_rejected():
    with pytest.raises(GatedgenError):
        StopMatcher(["ok", ""])


def test_unicode_stop():
    assert run(["。"], ["你好", "。再见"])[:2] == ("你好", True)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\n:", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_any_chunking_gives_the_reference_result(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    chunks = [text[i:j] for i, j in zip(bounds, bounds[1:])]
    emitted, hit, pieces = run(stops, chunks)
    assert (emitted, hit) == reference(stops, text)
    for stop in stops:
        assert stop not in emitted
    # Nothing is held back needlessly: after each push without a hit, exactly the longest suffix
    # that could still grow into a stop string is missing from the output.
    so_far_in = so_far_out = ""
    for chunk, piece in zip(chunks, pieces):
        so_far_in, so_far_out = so_far_in + chunk, so_far_out + piece
        if reference(stops, so_far_in)[1]:
            break
        held = max([k for s in stops for k in range(1, len(s)) if so_far_in.endswith(s[:k])], default=0)
        assert so_far_out == so_far_in[: len(so_far_in) - held]
