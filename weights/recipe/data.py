"""Step 2 helpers: corpus records -> training documents, and the student's own tokenizer.

Stories and dialogues become plain text; chat questions, and one story in three, become ChatML
conversations so that `gatedgen chat` works with the student's template. Documents are separated
by <|endoftext|>. A held-out split (every 50th record) is kept for perplexity.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = [EOT, IM_START, IM_END]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus_files(path: str | Path) -> list[Path]:
    """A corpus is one .jsonl.gz file or a folder of shards (read in name order)."""
    path = Path(path)
    return sorted(path.glob("*.jsonl.gz")) if path.is_dir() else [path]


def read_records(path: str | Path) -> list[dict]:
    records = []
    for file in corpus_files(path):
        with gzip.open(file, "rt", encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def to_document(record: dict, index: int) -> str:
    chat = record["kind"] == "chat" or (record["kind"] == "story" and index % 3 == 0)
    if chat:
        return (f"{IM_START}user\n{record['prompt']}{IM_END}\n"
                f"{IM_START}assistant\n{record['text']}{IM_END}\n{EOT}")
    return record["text"] + EOT


def split(records: list[dict]) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents)."""
    train, held = [], []
    for i, r in enumerate(records):
        (held if i % 50 == 0 else train).append(to_document(r, i))
    return train, held


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) over the corpus, with the chat markers as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(iter(texts), trainer)
    return tok


def write_tokenizer_files(tok: Tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": EOT, "add_bos_token": False, "chat_template": CHATML,
              "model_max_length": 2048}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    eos_ids = [tok.token_to_id(EOT), tok.token_to_id(IM_END)]
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}, indent=2) + "\n")


def token_stream(tok: Tokenizer, docs: list[str]) -> Iterator[int]:
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        yield from enc.ids
