"""GPT-2 BPE over JSON-escaped text: the tokenizer of the official FoX release.

The release trained on LongCrawl64, whose text was tokenized as ``json.dumps(text)[1:-1]`` (quotes
dropped, non-ASCII written as ``\\uXXXX``, surrogate pairs for emoji) with the GPT-2 tokenizer, and
prepends BOS 50256 (``<|endoftext|>``). Its ``JSONGPT2Tokenizer`` un-escapes the decoded text with
``json.loads``. gatedgen represents this as a wrapper around the checkpoint's GPT-2 tokenizer,
chosen when tokenizer_config.json says ``"tokenizer_class": "JSONGPT2Tokenizer"`` or the model is
``forgetting_transformer-project_fox``.

Decoding un-escapes with :func:`unescape`, which equals ``json.loads`` on valid escaped text and
is total otherwise (invalid escapes kept as written, lone surrogates become U+FFFD). Streaming
holds back an escape until it is complete, so the streamed pieces add up to :meth:`decode`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gatedgen.tokenizer import Tokenizer

JSON_TOKENIZER_CLASS = "JSONGPT2Tokenizer"
OFFICIAL_FOX = "forgetting_transformer-project_fox"
EOT = "<|endoftext|>"

_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")


def escape(text: str) -> str:
    """The text as the release saw it: a JSON string body, ASCII only."""
    return json.dumps(text)[1:-1]


def _is_hex(s: str) -> bool:
    return all(c in _HEX for c in s)


def _low_surrogate_prefix(s: str) -> bool:
    r"""Whether ``s`` (fewer than 6 chars) could still grow into ``\uDC00``..``\uDFFF``."""
    pattern = ("\\", "u", "dD", "cdefCDEF", _HEX, _HEX)
    return all(c in allowed for c, allowed in zip(s, pattern))


def unescape_prefix(s: str, final: bool) -> tuple[str, int]:
    """Un-escape ``s`` left to right; return the text and how many chars of ``s`` it used.

    With ``final=False`` it stops before an escape that later characters could still change (a
    trailing ``\\``, a short ``\\uXX``, a high surrogate whose partner may follow).
    """
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        j = s.find("\\", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out), n
        out.append(s[i:j])
        i = j
        if i + 1 >= n:  # a lone trailing backslash
            if not final:
                break
            out.append("\\")
            i = n
            continue
        c = s[i + 1]
        if c in _SIMPLE:
            out.append(_SIMPLE[c])
            i += 2
            continue
        digits = s[i + 2 : i + 6]
        if c != "u" or not _is_hex(digits):
            out.append(s[i : i + 2])  # not a JSON escape: kept as written
            i += 2
            continue
        if len(digits) < 4:  # \u with its digits still arriving
            if not final:
                break
            out.append(s[i:])
            i = n
            continue
        cp = int(digits, 16)
        if 0xD800 <= cp < 0xDC00:
            low = s[i + 6 : i + 12]
            if len(low) < 6 and not final and _low_surrogate_prefix(low):
                break
            pair = len(low) == 6 and low[:2] == "\\u" and _is_hex(low[2:])
            if pair and 0xDC00 <= int(low[2:], 16) < 0xE000:
                out.append(chr(0x10000 + ((cp - 0xD800) << 10) + (int(low[2:], 16) - 0xDC00)))
                i += 12
                continue
            out.append("\ufffd")
        elif 0xDC00 <= cp < 0xE000:
            out.append("\ufffd")
        else:
            out.append(chr(cp))
        i += 6
    return "".join(out), i


def unescape(s: str) -> str:
    return unescape_prefix(s, final=True)[0]


class JSONEscapedTokenizer(Tokenizer):
    """A GPT-2 tokenizer applied to JSON-escaped text; BOS prepended by :meth:`encode`."""

    @classmethod
    def wrap(cls, base: Tokenizer) -> JSONEscapedTokenizer:
        eot = base.token_to_id(EOT)
        bos = eot if eot is not None else base.bos_token_id
        tok = cls(
            base._hf,
            eos_token_ids=[eot] if eot is not None else base.eos_token_ids,
            bos_token_id=bos,
            chat_template=base.chat_template,
            add_bos_token=True,
            byte_fallback_ids=base.byte_fallback_ids,
            special_ids=base.special_ids,
        )
        tok._escaped = base  # decodes the escaped text itself (the inner stream needs that)
        return tok

    def encode(self, text: str) -> list[int]:
        ids = super().encode_plain(escape(text))
        return [self.bos_token_id, *ids] if self.bos_token_id is not None else ids

    def encode_plain(self, text: str) -> list[int]:
        return super().encode_plain(escape(text))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return unescape(super().decode(ids, skip_special_tokens=skip_special_tokens))

    def stream(self, skip_special_tokens: bool = True) -> UnescapingStream:
        return UnescapingStream(self._escaped.stream(skip_special_tokens))


class UnescapingStream:
    """The GPT-2 stream decoder's pieces, un-escaped as soon as each escape is complete."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._pending = ""  # escaped text not yet un-escaped

    def _take(self, piece: str, final: bool) -> str:
        self._pending += piece
        text, used = unescape_prefix(self._pending, final)
        self._pending = self._pending[used:]
        return text

    def push(self, token_id: int) -> str:
        return self._take(self._inner.push(token_id), final=False)

    def flush(self) -> str:
        return self._take(self._inner.flush(), final=True)

    @property
    def ids(self) -> list[int]:
        return self._inner.ids


def uses_json_escaping(model_dir: Path) -> bool:
    for name, key, value in (("tokenizer_config.json", "tokenizer_class", JSON_TOKENIZER_CLASS),
                             ("config.json", "model_type", OFFICIAL_FOX)):
        try:
            data = json.loads((Path(model_dir) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get(key) == value:
            return True
    return False


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The checkpoint's tokenizer, JSON-escaping when the checkpoint asks for it."""
    tok = Tokenizer.from_dir(Path(model_dir))
    return JSONEscapedTokenizer.wrap(tok) if uses_json_escaping(Path(model_dir)) else tok
