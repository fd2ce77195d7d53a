"""GPT-2 BPE over JSON-escaped text (official FoX tokenizer): escape, un-escape, streaming."""

from __future__ import annotations

import json

import pytest
from factory_tokenizer import CORPUS, make_bytelevel_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from gatedgen.json_tokenizer import JSONEscapedTokenizer, escape, load_tokenizer, unescape, unescape_prefix

ESCAPE_ALPHABET = st.sampled_from(["\\", "u", "d", "D", "8", "c", "C", "0", "f", "a", '"', "n", "x", "é"])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = make_bytelevel_tokenizer(tmp_path_factory.mktemp("jsontok"))
    (root / "config.json").write_text(json.dumps({"model_type": "forgetting_transformer-project_fox"}))
    t = load_tokenizer(root)
    assert isinstance(t, JSONEscapedTokenizer)
    return t


@given(st.text())
def test_unescape_inverts_escape(text):
    assert unescape(escape(text)) == text
    assert escape(text).isascii()


@given(st.text())
def test_unescape_equals_json_loads_on_valid_input(text):
    body = escape(text)
    assert unescape(body) == json.loads(f'"{body}"')


@given(st.lists(ESCAPE_ALPHABET, max_size=40).map("".join), st.lists(st.integers(0, 40), max_size=6))
def test_chunked_unescape_adds_up(s, cuts):
    """Fed in arbitrary pieces (valid or not), the un-escaped parts concatenate to one full un-escape."""
    bounds = sorted({min(c, len(s)) for c in cuts} | {0, len(s)})
    pending, out = "", []
    for a, b in zip(bounds[:-1], bounds[1:]):
        pending += s[a:b]
        text, used = unescape_prefix(pending, final=False)
        out.append(text)
        pending = pending[used:]
    out.append(unescape_prefix(pending, final=True)[0])
    assert "".join(out) == unescape(s)


def test_surrogate_pairs_and_lone_surrogates():
    assert unescape("\\ud83d\\ude00") == "😀"
    assert unescape("\\ud83d") == "\ufffd"
    assert unescape("\\ude00x") == "\ufffdx"
    assert unescape("a\\qb\\u12") == "a\\qb\\u12"  # not JSON escapes: kept as written


def test_encode_escapes_and_prepends_bos(tok):
    eot = tok.token_to_id("<|endoftext|>")
    ids = tok.encode('Grüße "x"\n😀')
    assert ids[0] == eot and tok.bos_token_id == eot and tok.eos_token_ids == (eot,)
    assert tok.decode(ids[1:], skip_special_tokens=False) == 'Grüße "x"\n😀'
    # the BPE saw only ASCII: every id decodes (plainly) to ASCII
    assert all(tok._hf.decode([i]).isascii() for i in ids[1:])


@pytest.mark.parametrize("text", CORPUS)
def test_stream_round_trip(tok, text):
    ids = tok.encode(text)
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == tok.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_stream_of_arbitrary_ids_adds_up_to_decode(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids)


def test_plain_checkpoints_are_not_wrapped(tmp_path):
    root = make_bytelevel_tokenizer(tmp_path)
    assert not isinstance(load_tokenizer(root), JSONEscapedTokenizer)
