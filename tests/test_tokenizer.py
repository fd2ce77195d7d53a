"""Tokenizer: BOS as the post-processor says, EOS union, errors, and the streaming invariant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatedgen.errors import GatedgenError
from gatedgen.tokenizer import REPLACEMENT_CHAR, Tokenizer
from factory_tokenizer import (
    CHATML_TEMPLATE,
    make_bytefallback_tokenizer,
    make_bytelevel_tokenizer,
)

HARD_TEXTS = [
    "Hello, world!",
    "中文文本测试，今天天气很好。",
    "👍🏽 🦀 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "e\u0301 a\u0300 Z\u0335\u0321a\u0336l\u0337g\u0338o",
    "mix: café 🤖 日本語 ok\n\tdone",
    "  leading spaces and trailing  ",
    "\U0001f9ec\U0001faa8\u4dc0 rare chars not in any training text",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("tok")
    return {
        "bytelevel": Tokenizer.from_dir(make_bytelevel_tokenizer(root / "bytelevel")),
        "bytefallback": Tokenizer.from_dir(make_bytefallback_tokenizer(root / "bytefallback")),
    }


KINDS = ["bytelevel", "bytefallback"]


def stream_pieces(tok: Tokenizer, ids: list[int], skip: bool) -> tuple[list[str], str]:
    stream = tok.stream(skip_special_tokens=skip)
    pieces = [stream.push(i) for i in ids]
    return pieces, stream.flush()


def check_stream(tok: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    pieces, rest = stream_pieces(tok, ids, skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(pieces) + rest == full
    for piece in pieces:
        assert not piece.endswith(REPLACEMENT_CHAR), (ids, pieces)
    shown = [i for i in ids if not (skip and i in tok.special_ids)]
    if REPLACEMENT_CHAR not in full and (not shown or shown[-1] not in tok.byte_fallback_ids):
        assert rest == ""  # nothing needlessly held back to the end (an open byte run may be)
    return pieces


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", HARD_TEXTS)
@pytest.mark.parametrize("skip", [True, False])
def test_stream_matches_decode_on_hard_text(tokenizers, kind, text, skip):
    tok = tokenizers[kind]
    ids = tok.encode(text) + [tok.eos_token_ids[0]]
    pieces = check_stream(tok, ids, skip)
    assert all(REPLACEMENT_CHAR not in p for p in pieces)


@pytest.mark.parametrize("kind", KINDS)
def test_multibyte_chars_really_split_across_tokens(tokenizers, kind):
    """The fixtures must exercise the hard case: one character, several tokens, empty pushes."""
    tok = tokenizers[kind]
    crab = tok.encode_plain("🦀")
    assert len(crab) >= 2
    pieces, rest = stream_pieces(tok, crab + tok.encode_plain(" ok"), skip=True)
    emitted = [p for p in pieces if p]
    assert pieces[: len(crab) - 1] == [""] * (len(crab) - 1)
    assert emitted[0].startswith("🦀") and "".join(emitted) + rest == "🦀 ok"
    if kind == "bytelevel":  # complete at its last byte; byte fallback waits for the run to close
        assert pieces[len(crab) - 1] == "🦀"


def test_bytefallback_tokens_are_bytes(tokenizers):
    tok = tokenizers["bytefallback"]
    ids = tok.encode_plain("中")
    assert [tok.id_to_token(i) for i in ids][-3:] == ["<0xE4>", "<0xB8>", "<0xAD>"]
    assert len(tok.byte_fallback_ids) == 256
    assert tokenizers["bytelevel"].byte_fallback_ids == frozenset()


@pytest.mark.parametrize("kind", KINDS)
def test_stream_emits_complete_text_early(tokenizers, kind):
    """Text is not held longer than needed: ASCII words come out before the end."""
    tok = tokenizers[kind]
    ids = tok.encode_plain("hello world how are you")
    pieces, _ = stream_pieces(tok, ids, skip=True)
    assert "".join(pieces[: len(ids) // 2 + 1]) != ""


def test_bytefallback_invalid_run_matches_full_decode(tokenizers):
    """A byte run made invalid by a late byte turns wholly into U+FFFD in decode(); so must the stream."""
    tok = tokenizers["bytefallback"]
    byte = {b: tok.token_to_id(f"<0x{b:02X}>") for b in (0x41, 0xE4, 0xB8)}
    eos, space = tok.token_to_id("</s>"), tok.token_to_id("▁")
    cases = [[byte[0x41], byte[0xE4]], [byte[0x41], eos, byte[0xE4], space], [byte[0xE4], byte[0xB8], space]]
    for ids in cases:
        for skip in (True, False):
            check_stream(tok, ids, skip)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), kind=st.sampled_from(KINDS), skip=st.booleans())
def test_stream_property_random_text(tokenizers, text, kind, skip):
    tok = tokenizers[kind]
    pieces = check_stream(tok, tok.encode(text), skip)
    if REPLACEMENT_CHAR not in text:
        assert all(REPLACEMENT_CHAR not in p for p in pieces)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(KINDS), skip=st.booleans())
def test_stream_property_random_ids(tokenizers, data, kind, skip):
    """Any id sequence a model might generate, incl. invalid byte runs and special tokens."""
    tok = tokenizers[kind]
    any_id = st.integers(0, tok.vocab_size - 1)
    interesting = sorted(tok.byte_fallback_ids | tok.special_ids) or [0]
    ids = data.draw(st.lists(st.one_of(any_id, st.sampled_from(interesting)), max_size=30))
    check_stream(tok, ids, skip)


def test_stream_continues_after_flush(tokenizers):
    tok = tokenizers["bytelevel"]
    stream = tok.stream()
    first = [stream.push(i) for i in tok.encode_plain("ab 🦀")] + [stream.flush()]
    second = [stream.push(i) for i in tok.encode_plain(" cd 中")] + [stream.flush()]
    assert "".join(first) == "ab 🦀" and "".join(second) == " cd 中"


# --- encode / decode / special tokens --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_bos_from_post_processor(tokenizers, kind):
    tok = tokenizers[kind]
    ids, plain = tok.encode("hello"), tok.encode_plain("hello")
    assert ids == [tok.bos_token_id] + plain
    assert tok.bos_token_id is not None and tok.bos_token_id not in plain


@pytest.mark.parametrize("make", [make_bytelevel_tokenizer, make_bytefallback_tokenizer])
def test_no_bos_when_post_processor_adds_none(tmp_path, make):
    """add_bos_token in tokenizer_config.json is not acted on: the post-processor decides."""
    root = make(tmp_path / "t", bos_in_post_processor=False)
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(root)
    assert tok.encode("hello") == tok.encode_plain("hello")
    assert tok.add_bos_token is True


def test_encode_plain_maps_template_special_tokens(tokenizers):
    tok = tokenizers["bytelevel"]
    ids = tok.encode_plain("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.token_to_id("<|im_end|>") in ids
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("kind", KINDS)
def test_decode_hides_special_tokens_by_default(tokenizers, kind):
    tok = tokenizers[kind]
    eos = tok.eos_token_ids[0]
    ids = tok.encode_plain("done") + [eos]
    assert tok.decode(ids) == "done"
    assert tok.decode(ids, skip_special_tokens=False).endswith(tok.id_to_token(eos))
    assert "".join(stream_pieces(tok, ids, skip=True)[0]) == "done"


@pytest.mark.parametrize("kind", KINDS)
def test_roundtrip(tokenizers, kind):
    tok = tokenizers[kind]
    for text in HARD_TEXTS[:5]:
        assert tok.decode(tok.encode(text)) == text


def test_metadata(tokenizers):
    tok = tokenizers["bytelevel"]
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.eos_token_ids == (tok.token_to_id("<|endoftext|>"),)
    assert tok.vocab_size == 600
    fb = tokenizers["bytefallback"]
    assert fb.eos_token_ids == (2,) and fb.bos_token_id == 1  # from {"content": ...} dicts
    assert fb.vocab_size == fb._hf.get_vocab_size(with_added_tokens=False) + 2  # + im_start/im_end
    assert fb.token_to_id("<|im_end|>") == fb.vocab_size - 1
    assert fb.token_to_id("no such token") is None


def test_eos_union_of_all_files(tmp_path):
    root = make_bytelevel_tokenizer(
        tmp_path / "t",
        eos_token={"content": "<|endoftext|>", "special": True},
        generation_config={"eos_token_id": [3, 0], "bos_token_id": 1},
        config={"eos_token_id": 3, "bos_token_id": 7},
    )
    tok = Tokenizer.from_dir(root)
    endoftext = tok.token_to_id("<|endoftext|>")
    assert endoftext == 0
    assert tok.eos_token_ids == (3, 0)  # union, first-seen order, no duplicates
    assert tok.bos_token_id == 1  # generation_config first


def test_eos_from_config_json_only(tmp_path):
    root = make_bytelevel_tokenizer(tmp_path / "t", tokenizer_config={}, config={"eos_token_id": [5, 6]})
    tok = Tokenizer.from_dir(root)
    assert tok.eos_token_ids == (5, 6)
    assert tok.chat_template is None and tok.bos_token_id is None


def test_optional_files_absent(tmp_path):
    root = make_bytelevel_tokenizer(tmp_path / "t")
    (root / "tokenizer_config.json").unlink()
    tok = Tokenizer.from_dir(root)
    assert tok.eos_token_ids == () and tok.chat_template is None
    assert tok.encode("x")[0] == tok.token_to_id("<|begin_of_text|>")  # post-processor still applies


# --- errors ----------------------------------------------------------------------------------------


def _one_line_error(root: Path, match: str) -> None:
    with pytest.raises(GatedgenError, match=match) as info:
        Tokenizer.from_dir(root)
    assert "\n" not in str(info.value)


def test_missing_tokenizer_json(tmp_path):
    _one_line_error(tmp_path, "no tokenizer.json")


@pytest.mark.parametrize(
    "content", ["{not json", '{"model": {"type": "Nonsense"}}', "[1, 2]", b"\xff\xfe\x00garbage"]
)
def test_corrupt_tokenizer_json(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _one_line_error(tmp_path, "cannot load .*tokenizer.json")


@pytest.mark.parametrize("name", ["tokenizer_config.json", "generation_config.json", "config.json"])
def test_corrupt_side_file(tmp_path, name):
    root = make_bytelevel_tokenizer(tmp_path / "t")
    (root / name).write_text("{oops")
    _one_line_error(root, f"cannot read .*{name}")
