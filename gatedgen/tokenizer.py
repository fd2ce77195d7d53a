"""The checkpoint's tokenizer (HF ``tokenizers``) plus its special-token metadata and a streaming decoder.

Special tokens follow the checkpoint's files exactly: :meth:`Tokenizer.encode` lets the tokenizer's
own post-processor decide whether BOS is prepended; gatedgen never adds one of its own.

Decoding default: ``skip_special_tokens=True`` for both :meth:`Tokenizer.decode` and
:meth:`Tokenizer.stream`, so text shown to users never contains EOS (or chat markers such as
``<|im_end|>``); pass ``skip_special_tokens=False`` to see them. A stream and ``decode`` built with
the same flag agree exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from gatedgen.errors import GatedgenError

REPLACEMENT_CHAR = "\ufffd"
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GatedgenError(f"cannot read {path}: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise GatedgenError(f"cannot read {path}: expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """A special token given as ``"<s>"`` or as ``{"content": "<s>", ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _int_ids(value: Any) -> list[int]:
    """``eos_token_id`` as found in config files: an int, a list of ints, or absent."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _has_decoder_step(node: Any, kind: str) -> bool:
    """Whether a tokenizer.json ``decoder`` (possibly a nested Sequence) has a step of ``kind``."""
    if isinstance(node, dict):
        if node.get("type") == kind:
            return True
        return any(_has_decoder_step(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_has_decoder_step(v, kind) for v in node)
    return False


class Tokenizer:
    """A checkpoint's tokenizer: encode, decode, stream-decode, and special-token ids."""

    def __init__(
        self,
        hf: _HFTokenizer,
        *,
        eos_token_ids: Sequence[int] = (),
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        add_bos_token: bool | None = None,
        byte_fallback_ids: Iterable[int] = (),
        special_ids: Iterable[int] | None = None,
    ) -> None:
        self._hf = hf
        self._eos = tuple(dict.fromkeys(eos_token_ids))
        self._bos = bos_token_id
        self._chat_template = chat_template
        self.add_bos_token = add_bos_token
        """``add_bos_token`` from tokenizer_config.json, for information only: BOS is the post-processor's."""
        self.byte_fallback_ids: frozenset[int] = frozenset(byte_fallback_ids)
        """Ids of ``<0xNN>`` tokens when the decoder has a ByteFallback step (else empty)."""
        if special_ids is None:
            special_ids = [i for i, t in hf.get_added_tokens_decoder().items() if t.special]
        self.special_ids: frozenset[int] = frozenset(special_ids)
        """Ids of special added tokens (the ones ``skip_special_tokens`` leaves out)."""

    @classmethod
    def from_dir(cls, path: Path) -> Tokenizer:
        """Load ``tokenizer.json`` (required) and the optional ``tokenizer_config.json``,
        ``generation_config.json`` and ``config.json`` from a checkpoint directory.

        EOS ids are the union, in this order, of generation_config ``eos_token_id``, config
        ``eos_token_id`` and tokenizer_config ``eos_token``; BOS is the first of generation_config
        ``bos_token_id``, config ``bos_token_id``, tokenizer_config ``bos_token``.
        """
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise GatedgenError(f"no tokenizer.json in {path}")
        try:
            text = tok_file.read_text(encoding="utf-8")
            raw = json.loads(text)
            hf = _HFTokenizer.from_str(text)
        except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, or the Rust parser's error
            raise GatedgenError(f"cannot load {tok_file}: {_one_line(exc)}") from exc

        tok_cfg = _read_json(path / "tokenizer_config.json") or {}
        gen_cfg = _read_json(path / "generation_config.json") or {}
        model_cfg = _read_json(path / "config.json") or {}

        eos: list[int] = _int_ids(gen_cfg.get("eos_token_id")) + _int_ids(model_cfg.get("eos_token_id"))
        eos_text = _token_content(tok_cfg.get("eos_token"))
        if eos_text is not None and (eos_id := hf.token_to_id(eos_text)) is not None:
            eos.append(eos_id)

        bos_candidates = _int_ids(gen_cfg.get("bos_token_id"))[:1]
        bos_candidates += _int_ids(model_cfg.get("bos_token_id"))[:1]
        bos_text = _token_content(tok_cfg.get("bos_token"))
        if bos_text is not None and (bos_id := hf.token_to_id(bos_text)) is not None:
            bos_candidates.append(bos_id)

        template = tok_cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        add_bos = tok_cfg.get("add_bos_token")

        byte_ids: list[int] = []
        if _has_decoder_step(raw.get("decoder"), "ByteFallback"):
            vocab = hf.get_vocab(with_added_tokens=True)
            byte_ids = [i for t, i in vocab.items() if _BYTE_TOKEN.fullmatch(t)]

        return cls(
            hf,
            eos_token_ids=eos,
            bos_token_id=bos_candidates[0] if bos_candidates else None,
            chat_template=template if isinstance(template, str) else None,
            add_bos_token=add_bos if isinstance(add_bos, bool) else None,
            byte_fallback_ids=byte_ids,
        )

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with the special tokens the tokenizer's post-processor adds (e.g. BOS)."""
        return self._hf.encode(text, add_special_tokens=True).ids

    def encode_plain(self, text: str) -> list[int]:
        """Ids of ``text`` without post-processor tokens; special tokens written as text
        (``<|im_start|>`` in a rendered chat template) still map to their ids."""
        return self._hf.encode(text, add_special_tokens=False).ids

    # --- decoding -------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (EOS, chat markers) left out unless asked for."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True) -> StreamDecoder:
        """A fresh incremental decoder whose pieces add up to ``decode(ids, skip_special_tokens)``."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # --- metadata -------------------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends generation (may be empty)."""
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template from tokenizer_config.json, if any."""
        return self._chat_template

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._hf.id_to_token(token_id)


class StreamDecoder:
    """Turns generated ids into text pieces as soon as they are complete.

    Prefix/read-offset algorithm (as in ``tokenizers.decoders.DecodeStream`` and HF's
    TextStreamer): decode the window ``ids[prefix:]`` and emit what it adds to the already-emitted
    ``ids[prefix:read]`` unless it ends in U+FFFD (a character still missing bytes). Decoding a
    window that starts one emission back keeps context-dependent decoders (Metaspace's stripped
    leading space) consistent with a full decode.

    Two differences from ``DecodeStream``, whose lack would break the invariant
    ``"".join(pieces) + flush() == tokenizer.decode(all_ids)``:

    * byte-fallback decoders turn a whole run of ``<0xNN>`` tokens into U+FFFDs when any byte of
      the run is invalid, so a run is held until a non-byte token closes it (a skipped special
      token does not: the decoder never sees it);
    * :meth:`flush` returns what is still held (e.g. a final U+FFFD) by comparing with a full
      decode, which also repairs any window/full-decode disagreement in the held tail.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._byte_ids = tokenizer.byte_fallback_ids
        self._skipped = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._open_run = False  # the last id the decoder sees is a <0xNN> byte token
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this have been emitted
        self._prefix_text = ""  # decode(ids[prefix:read])
        self._emitted: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text (often ``""``)."""
        self._ids.append(token_id)
        if token_id in self._byte_ids:
            self._open_run = True
        elif token_id not in self._skipped:  # a skipped token does not close a byte run
            self._open_run = False
        if self._open_run:
            return ""
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        if text.startswith(self._prefix_text):
            new = text[len(self._prefix_text) :]
        else:  # the window disagrees with its own prefix: fall back on one full decode
            full, done = self._decode(self._ids), "".join(self._emitted)
            if not full.startswith(done) or full.endswith(REPLACEMENT_CHAR):
                return ""
            new = full[len(done) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        self._emitted.append(new)
        return new

    def flush(self) -> str:
        """At the end of generation: everything not yet emitted (possibly ending in U+FFFD)."""
        full, done = self._decode(self._ids), "".join(self._emitted)
        if full.startswith(done):
            rest = full[len(done) :]
        else:
            window = self._decode(self._ids[self._prefix :])
            rest = window[len(self._prefix_text) :] if window.startswith(self._prefix_text) else ""
        self._prefix = self._read = len(self._ids)
        self._prefix_text = ""
        self._emitted.append(rest)
        return rest

    @property
    def ids(self) -> list[int]:
        """All ids pushed so far (a copy)."""
        return list(self._ids)
