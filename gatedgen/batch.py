"""Batched generation: several prompts of different lengths in one cache, decoded together.

    results = generate_batch(model, tokenizer, ["Once upon", "The capital of France is"], settings)
    results[0].text, results[0].finish_reason, results[0].tokens

Prompts are prefilled into their own rows of one preallocated cache, many at a time in packed
varlen passes (``CausalLM.prefill_packed``: each prompt attends only to itself and its running gate
sums restart), long prompts alone in chunks (``KVCache.row``: a batch-1 view); then all rows decode
together: one ragged decode step per token (each row at its own length; the decode
kernel reads lengths on the device), captured as a CUDA graph on CUDA (``gatedgen.engine``). The
batch runs in the smallest graph bucket that holds it; spare rows decode a dummy token and are
dropped. Rows that finish keep stepping (their tokens are ignored) until every row is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from gatedgen.engine import Decoder, batch_bucket
from gatedgen.errors import GatedgenError
from gatedgen.generate import PREFILL_CHUNK, REBASE_EVERY, GenerationSettings, TokenText
from gatedgen.model import CausalLM


@dataclass
class BatchResult:
    text: str  # the continuation (stop strings removed)
    tokens: list[int]  # every sampled token, the stopping one included
    finish_reason: str  # "stop" or "length"


@dataclass
class BatchStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0  # sampled tokens of all rows (finished rows' extra steps not counted)
    prefill_seconds: float = 0.0  # all prompts, to the first token of every row
    decode_seconds: float = 0.0
    steps: int = 0  # decode steps after the first tokens
    extra: dict = field(default_factory=dict)


class _Row:
    def __init__(self, tokenizer, settings: GenerationSettings, eos_ids: set[int]):
        self.text_of = TokenText(tokenizer, settings, eos_ids)
        self.text: list[str] = []
        self.tokens: list[int] = []
        self.done: str | None = None

    def push(self, token: int) -> None:
        self.tokens.append(token)
        text, self.done = self.text_of.push(token)
        self.text.append(text)


# Most tokens in one packed (varlen) prefill pass.
PACK_TOKENS = 8192


@torch.inference_mode()
def prefill_rows(model: CausalLM, cache, prompts: list[list[int]]) -> torch.Tensor:
    """Prefill prompt b into row b of ``cache``; logits after each prompt's last token, [N, V].

    Prompts go in packed varlen passes of up to PACK_TOKENS tokens (one launch per kernel for many
    prompts); a prompt longer than PREFILL_CHUNK, or a model with a key/value shift, is prefilled
    alone in chunks through a batch-1 view of its row.
    """
    out: list[torch.Tensor | None] = [None] * len(prompts)
    packable = cache.k_pre is None and cache.v_pre is None
    group: list[int] = []

    def flush() -> None:
        if group:
            logits = model.prefill_packed([prompts[b] for b in group], cache, list(group))  # [n, V]
            for i, b in enumerate(group):
                out[b] = logits[i]
            group.clear()

    for b, ids in enumerate(prompts):
        if packable and len(ids) <= PREFILL_CHUNK and cache.lengths[b] == 0:
            if sum(len(prompts[i]) for i in group) + len(ids) > PACK_TOKENS:
                flush()
            group.append(b)
            continue
        row = cache.row(b)
        for i in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[i : i + PREFILL_CHUNK]
            x = torch.tensor([chunk], dtype=torch.long, device=cache.seqlens.device)
            out[b] = model(x, row, mode="prefill", last_only=True)[0, -1]
        cache.lengths[b] = row.lengths[0]
    flush()
    return torch.stack(out)


def generate_batch(
    model: CausalLM,
    tokenizer,
    prompts: list[str] | list[list[int]],
    settings: GenerationSettings,
    *,
    use_graphs: bool | None = None,
    stats: BatchStats | None = None,
) -> list[BatchResult]:
    """Generate a continuation of every prompt (text, or token ids); results in the prompts' order."""
    if not prompts:
        return []
    settings.sampling.validate()
    ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    if any(not x for x in ids):
        raise GatedgenError("empty prompt: nothing to continue")
    n = len(ids)
    B = batch_bucket(n) if use_graphs is not False else n
    device = model.output_weight.device
    cache = model.new_cache(B, max(len(x) for x in ids) + settings.max_tokens + 1)
    decoder = Decoder(model, cache, use_graphs)
    params = settings.sampling
    sampler = decoder.sampler(params)
    decoder.capture(params)  # start-up: outside the timed part
    sampler.prime(ids + [[] for _ in range(B - n)])
    eos_ids = set(getattr(tokenizer, "eos_token_ids", [])) | set(model.cfg.eos_token_id)
    rows = [_Row(tokenizer, settings, eos_ids) for _ in range(n)]
    stats = stats if stats is not None else BatchStats()
    stats.prompt_tokens = sum(len(x) for x in ids)

    start = time.perf_counter()
    logits = prefill_rows(model, cache, ids)  # [n, V]
    if B > n:  # spare rows of the bucket start empty and decode token 0 (ignored)
        pad = torch.zeros(B - n, logits.shape[1], dtype=logits.dtype, device=device)
        logits = torch.cat([logits, pad], dim=0)
    next_ids = sampler(logits)
    tokens = next_ids.tolist()  # host synchronisation: hand the tokens over
    stats.prefill_seconds = time.perf_counter() - start
    decode_start = time.perf_counter()
    while True:
        for b, row in enumerate(rows):
            if row.done is None:
                row.push(tokens[b])
                stats.generated_tokens += 1
        if all(r.done for r in rows) or max(cache.lengths) + 1 >= cache.max_len:
            break
        next_ids = decoder.step(next_ids, params)
        stats.steps += 1
        if max(cache.lengths) % REBASE_EVERY == 0:
            cache.rebase_gates()
        tokens = next_ids.tolist()
    stats.decode_seconds = time.perf_counter() - decode_start
    return [BatchResult("".join(r.text), r.tokens, r.done or "length") for r in rows]

