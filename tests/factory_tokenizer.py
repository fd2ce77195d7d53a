"""Build small real tokenizers on disk for tests (trained in well under a second, no network).

Two families that split UTF-8 characters across tokens in different ways:

* :func:`make_bytelevel_tokenizer` - GPT-2 style byte-level BPE (ByteLevel pre-tokenizer and
  decoder), ``<|endoftext|>``-style special tokens, a post-processor that prepends BOS.
* :func:`make_bytefallback_tokenizer` - sentencepiece/Llama style BPE (Metaspace, ``byte_fallback``
  with ``<0x00>``..``<0xFF>`` tokens): characters outside its small alphabet (CJK, emoji) become
  several byte tokens.

Each writes ``tokenizer.json`` and ``tokenizer_config.json`` (with a ChatML chat template) into a
directory, plus ``generation_config.json`` / ``config.json`` when asked, and returns the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Small multilingual corpus: Latin with accents, Cyrillic, Greek, CJK, emoji (incl. ZWJ
# sequences and skin-tone modifiers), combining marks, code.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, world! How are you today?",
    "Generation is streamed token by token; every piece must be complete text.",
    "def main():\n    print('hello world')\n    return 0\n",
    "Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Grüße aus München.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "我能吞下玻璃而不伤身体。今天天气很好，我们去公园散步吧。中文文本测试。",
    "私はガラスを食べられます。それは私を傷つけません。日本語のテキスト。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.",
    "Emoji: 😀 👍 👍🏽 🎉 🦀 ❤️ 👨‍👩‍👧‍👦 🇫🇷 🤖✨",
    "Combining marks: e\u0301 a\u0300 n\u0303 o\u0308 Z\u0335\u0321a\u0336l\u0337g\u0338o",
    "Numbers 0123456789 and symbols #$%&*+-/<=>@[]^_{|}~ and tabs\tand\nnewlines.",
]

BYTELEVEL_SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]


def _corpus(repeat: int = 8) -> list[str]:
    return [line for _ in range(repeat) for line in CORPUS]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def _write_side_files(
    root: Path,
    tokenizer_config: dict[str, Any] | None,
    generation_config: dict[str, Any] | None,
    config: dict[str, Any] | None,
) -> None:
    if tokenizer_config is not None:
        _write_json(root / "tokenizer_config.json", tokenizer_config)
    if generation_config is not None:
        _write_json(root / "generation_config.json", generation_config)
    if config is not None:
        _write_json(root / "config.json", config)


def make_bytelevel_tokenizer(
    root: Path,
    *,
    vocab_size: int = 600,
    bos_in_post_processor: bool = True,
    eos_token: str | dict[str, Any] = "<|endoftext|>",
    tokenizer_config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """GPT-2 style byte-level BPE in ``root``; BOS ``<|begin_of_text|>`` prepended by the post-processor.

    ``tokenizer_config`` replaces the default tokenizer_config.json contents when given.
    """
    root.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BYTELEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if bos_in_post_processor:
        bos_id = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A $B",
            special_tokens=[("<|begin_of_text|>", bos_id)],
        )
    tok.save(str(root / "tokenizer.json"))
    if tokenizer_config is None:
        tokenizer_config = {
            "bos_token": "<|begin_of_text|>",
            "eos_token": eos_token,
            "add_bos_token": bos_in_post_processor,
            "chat_template": CHATML_TEMPLATE,
        }
    _write_side_files(root, tokenizer_config, generation_config, config)
    return root


def make_bytefallback_tokenizer(
    root: Path,
    *,
    vocab_size: int = 420,
    limit_alphabet: int = 60,
    bos_in_post_processor: bool = True,
    tokenizer_config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Llama/sentencepiece style BPE with byte fallback in ``root``.

    Vocabulary: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<0x00>``..``<0xFF>`` 3..258, then merged
    pieces; ``<|im_start|>`` / ``<|im_end|>`` added as special tokens at the end. Characters
    outside the ``limit_alphabet`` most frequent ones are encoded as UTF-8 byte tokens.
    """
    root.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"]
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)

    # 1) learn merges on a plain BPE restricted to a small alphabet
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 256,
        special_tokens=specials,
        limit_alphabet=limit_alphabet,
        show_progress=False,
    )
    draft.train_from_iterator(_corpus(), trainer)
    learned = json.loads(draft.to_str())["model"]

    # 2) rebuild the model with byte tokens at 3..258 and byte_fallback on
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")]
    )
    if bos_in_post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    tok.save(str(root / "tokenizer.json"))
    if tokenizer_config is None:
        tokenizer_config = {
            "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "special": True},
            "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "special": True},
            "add_bos_token": bos_in_post_processor,
            "chat_template": CHATML_TEMPLATE,
        }
    _write_side_files(root, tokenizer_config, generation_config, config)
    return root
