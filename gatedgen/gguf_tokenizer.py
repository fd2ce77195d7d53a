"""Rebuild a Hugging Face ``tokenizer.json`` from a GGUF file's tokenizer metadata.

llama.cpp stores a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) as its tokens,
merges and token types, plus ``tokenizer.ggml.pre`` naming how text is split before BPE. The
splits below are llama.cpp's (src/llama-vocab.cpp) for the names gatedgen knows.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from gatedgen.errors import GatedgenError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(pre: str) -> tuple[Any, bool]:
    """The pre-tokenizer for ``tokenizer.ggml.pre`` and whether BPE ignores merges for whole words."""
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's own split
    if pre in ("gpt2", "default"):
        return gpt2, False
    if pre == "smollm":  # every digit alone, then GPT-2's split (llama.cpp: "\p{N}" + the GPT-2 regex)
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]), False
    split = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}.get(pre)
    if split is None:
        raise GatedgenError(
            f"GGUF: pre-tokenizer {pre!r} is not supported (gatedgen knows: gpt2, default, smollm, "
            "llama-bpe, qwen2)"
        )
    seq = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return seq, pre != "qwen2"


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` equal to the one the GGUF metadata describes."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GatedgenError(f"GGUF: tokenizer model {kind!r} is not supported (byte-level BPE 'gpt2' only)")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    pre = meta.get("tokenizer.ggml.pre", "default")
    pre_tok, ignore_merges = _pre_tokenizer(pre)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GatedgenError("GGUF: the token list repeats tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    if pre == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)],
        )
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise GatedgenError("GGUF: rebuilding the tokenizer changed the vocabulary size")
    return tok


def tokenizer_config(meta: dict[str, Any], context: int | None) -> dict[str, Any]:
    """tokenizer_config.json: special tokens by text, the add-BOS/EOS flags and the chat template."""
    tokens = meta["tokenizer.ggml.tokens"]

    def text(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text("bos_token_id"),
        "eos_token": text("eos_token_id"),
        "unk_token": text("unknown_token_id"),
        "pad_token": text("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    if context:
        out["model_max_length"] = context
    if isinstance(meta.get("tokenizer.chat_template"), str):
        out["chat_template"] = meta["tokenizer.chat_template"]
    return out
