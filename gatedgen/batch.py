"""Batched generation: several prompts of different lengths in one cache, decoded together.

    results = generate_batch(model, tokenizer, ["Once upon", "The capital of France is"], settings)
    results[0].text, results[0].finish_reason, results[0].tokens

    for index, result in generate_stream(model, tokenizer, many_prompts, settings, batch_size=128):
        ...  # continuous batching: results as they finish, a finished row takes the next prompt

Prompts are prefilled into their own rows of one preallocated cache, many at a time in packed
varlen passes (``CausalLM.prefill_packed``: each prompt attends only to itself and its running gate
sums restart), long prompts alone in chunks (``KVCache.row``: a batch-1 view); then all rows decode
together: one ragged decode step per token (each row at its own length; the decode
kernel reads lengths on the device), captured as a CUDA graph on CUDA (``gatedgen.engine``).

The host never waits for a step: steps are launched in chunks of ``chunk`` and each chunk's tokens
come back (pinned copy + event) while the next chunk runs; text, stop strings and limits are decided
per row on the host one chunk behind. A row whose sequence ended keeps stepping (its tokens are
ignored) until the host sees it; then it is emptied and, while prompts remain, prefilled with the next
one (``generate_stream``; ``generate_batch`` is one wave of it). Spare rows decode a dummy token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
    generated_tokens: int = 0  # sampled tokens of all sequences (rows' extra steps not counted)
    steps: int = 0  # decode steps (each advances every row)
    seconds: float = 0.0  # start-up (graph capture) excluded

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


class _Row:
    def __init__(self, tokenizer, settings: GenerationSettings, eos_ids: set[int]):
        self.text_of = TokenText(tokenizer, settings, eos_ids, incremental=bool(settings.stop))
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
def prefill_rows(model: CausalLM, cache, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
    """Prefill prompt i into the empty row rows[i] of ``cache`` (default: row i); logits after each
    prompt's last token, [N, V].

    Prompts go in packed varlen passes of up to PACK_TOKENS tokens (one launch per kernel for many
    prompts); a prompt longer than PREFILL_CHUNK, or a model with a key/value shift, is prefilled
    alone in chunks through a batch-1 view of its row.
    """
    rows = list(range(len(prompts))) if rows is None else rows
    out: list[torch.Tensor | None] = [None] * len(prompts)
    packable = cache.k_pre is None and cache.v_pre is None
    group: list[int] = []  # indices into prompts

    def flush() -> None:
        if group:
            logits = model.prefill_packed([prompts[i] for i in group], cache, [rows[i] for i in group])  # [n, V]
            for j, i in enumerate(group):
                out[i] = logits[j]
            group.clear()

    for i, ids in enumerate(prompts):
        b = rows[i]
        if packable and len(ids) <= PREFILL_CHUNK and cache.lengths[b] == 0:
            if sum(len(prompts[j]) for j in group) + len(ids) > PACK_TOKENS:
                flush()
            group.append(i)
            continue
        row = cache.row(b)
        for s in range(0, len(ids), PREFILL_CHUNK):
            x = torch.tensor([ids[s : s + PREFILL_CHUNK]], dtype=torch.long, device=cache.seqlens.device)
            out[i] = model(x, row, mode="prefill", last_only=True)[0, -1]
        cache.lengths[b] = row.lengths[0]
    flush()
    return torch.stack(out)




class _Chunk:
    """Tokens of one launched chunk of decode steps, on their way to the host.

    ``occupants[b]`` is the row's sequence when the chunk was launched (None: a spare row);
    ``firsts`` the sequences that started just before it, whose first tokens (sampled from the
    prefill logits) travel with it in ``first_ids``.
    """

    def __init__(self, tokens: torch.Tensor, first_ids: torch.Tensor | None, occupants: list, firsts: list):
        self.occupants, self.firsts = occupants, firsts
        if tokens.is_cuda:  # copy into pinned host memory behind the chunk's steps; wait only when read
            self.tokens = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            self.tokens.copy_(tokens, non_blocking=True)
            self.first_ids = None
            if first_ids is not None:
                self.first_ids = torch.empty(first_ids.shape, dtype=first_ids.dtype, pin_memory=True)
                self.first_ids.copy_(first_ids, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.tokens, self.first_ids, self.ready = tokens.clone(), first_ids, None

    def host(self) -> tuple[list[list[int]], list[int]]:
        """(tokens [B][chunk], first tokens [len(firsts)]) as lists, waiting for the copies."""
        if self.ready is not None:
            self.ready.synchronize()
        firsts = self.first_ids.tolist() if self.first_ids is not None else []
        return self.tokens.tolist(), firsts


class _Sequence:
    def __init__(self, index: int, ids: list[int], row: _Row):
        self.index, self.ids, self.row = index, ids, row


@torch.inference_mode()
def generate_stream(
    model: CausalLM,
    tokenizer,
    prompts: Iterable[str | list[int]],
    settings: GenerationSettings,
    *,
    batch_size: int = 64,
    max_prompt_tokens: int = 1024,
    chunk: int = 8,
    use_graphs: bool | None = None,
    stats: BatchStats | None = None,
) -> Iterator[tuple[int, BatchResult]]:
    """Continuous batching: yields (index of the prompt, its result) as sequences finish.

    ``batch_size`` rows decode together; when a row's sequence ends, the next prompt is prefilled
    into it while the other rows go on. Prompts (text or token ids) are read lazily; one longer than
    ``max_prompt_tokens`` raises :class:`GatedgenError`. Results are the same as generating each
    prompt alone (greedy; sampling draws from one generator shared by the rows).
    """
    settings.sampling.validate()
    if batch_size < 1 or chunk < 1:
        raise GatedgenError("batch size and chunk must be >= 1")
    B = batch_bucket(batch_size) if use_graphs is not False else batch_size
    device = model.output_weight.device
    # a finished row steps at most two chunks more before it is emptied
    cache = model.new_cache(B, max_prompt_tokens + settings.max_tokens + 2 * chunk + 1)
    decoder = Decoder(model, cache, use_graphs)
    params = settings.sampling
    sampler = decoder.sampler(params)
    decoder.capture(params)  # start-up: outside the timed part
    eos_ids = set(getattr(tokenizer, "eos_token_ids", [])) | set(model.cfg.eos_token_id)
    stats = stats if stats is not None else BatchStats()
    source = enumerate(prompts)
    exhausted = False
    slots: list[_Sequence | None] = [None] * B
    ids = torch.zeros(B, dtype=torch.long, device=device)  # the tokens the next step feeds
    buffer = torch.zeros(B, chunk, dtype=torch.long, device=device)
    pending: _Chunk | None = None
    start = time.perf_counter()
    since_rebase = 0

    def next_prompt() -> _Sequence | None:
        nonlocal exhausted
        for index, prompt in source:
            p = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            if not p:
                raise GatedgenError(f"prompt {index} is empty: nothing to continue")
            if len(p) > max_prompt_tokens:
                raise GatedgenError(f"prompt {index} has {len(p)} tokens > max_prompt_tokens {max_prompt_tokens}")
            return _Sequence(index, p, _Row(tokenizer, settings, eos_ids))
        exhausted = True
        return None

    while True:
        # 1. empty the free rows (queued behind the chunk in flight) and start new sequences in them
        free = [b for b in range(B) if slots[b] is None]
        firsts: list[tuple[int, _Sequence]] = []
        for b in free:
            seq = None if exhausted else next_prompt()
            if seq is None:
                break
            slots[b] = seq
            firsts.append((b, seq))
        first_ids = None
        if free:
            for b in free:
                cache.lengths[b] = 0
            cache.seqlens.index_fill_(0, torch.tensor(free, device=device), 0)
        if firsts:
            rows = [b for b, _ in firsts]
            sampler.reset_rows(rows, [seq.ids for _, seq in firsts])
            logits = prefill_rows(model, cache, [seq.ids for _, seq in firsts], rows)  # [n, V]
            rows_t = torch.tensor(rows, device=device)
            first_ids = sampler.sample_rows(logits, rows_t)
            ids = ids.index_copy(0, rows_t, first_ids)
            stats.prompt_tokens += sum(len(seq.ids) for _, seq in firsts)
        if all(s is None for s in slots) and pending is None:
            break
        # 2. launch a chunk of steps (no host wait)
        launched = None
        if any(s is not None for s in slots):
            for i in range(chunk):
                ids = decoder.step(ids, params)
                buffer[:, i] = ids
            stats.steps += chunk
            since_rebase += chunk
            if since_rebase >= REBASE_EVERY:
                cache.rebase_gates()
                since_rebase = 0
            launched = _Chunk(buffer, first_ids, list(slots), firsts)
        # 3. while it runs, read the previous chunk's tokens and retire finished sequences
        if pending is not None:
            yield from _retire(pending, slots, stats)
        pending = launched
        if pending is not None and device.type != "cuda":
            yield from _retire(pending, slots, stats)
            pending = None
    stats.seconds = time.perf_counter() - start


def _retire(chunk: _Chunk, slots: list, stats: BatchStats) -> Iterator[tuple[int, BatchResult]]:
    """Push a chunk's tokens to their sequences; yield and free the ones that ended."""
    tokens, firsts = chunk.host()
    ended: list[tuple[int, _Sequence]] = []
    for (b, seq), first in zip(chunk.firsts, firsts):
        seq.row.push(first)
        stats.generated_tokens += 1
        if seq.row.done:
            ended.append((b, seq))
    for b, seq in enumerate(chunk.occupants):
        if seq is None or seq.row.done:
            continue
        for token in tokens[b]:
            seq.row.push(token)
            stats.generated_tokens += 1
            if seq.row.done:
                ended.append((b, seq))
                break
    for b, seq in ended:
        if slots[b] is seq:
            slots[b] = None
        r = seq.row
        yield seq.index, BatchResult("".join(r.text), r.tokens, r.done)


def generate_batch(
    model: CausalLM,
    tokenizer,
    prompts: list[str] | list[list[int]],
    settings: GenerationSettings,
    *,
    use_graphs: bool | None = None,
    stats: BatchStats | None = None,
) -> list[BatchResult]:
    """Generate a continuation of every prompt (text, or token ids); results in the prompts' order.
    All prompts decode together in one wave (the smallest graph bucket that holds them)."""
    if not prompts:
        return []
    ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    if any(not x for x in ids):
        raise GatedgenError("empty prompt: nothing to continue")
    results: list[BatchResult | None] = [None] * len(ids)
    for index, result in generate_stream(model, tokenizer, ids, settings, batch_size=len(ids),
                                         max_prompt_tokens=max(len(x) for x in ids), chunk=8,
                                         use_graphs=use_graphs, stats=stats):
        results[index] = result
    return results
