"""Generation: prefill the new tokens once, then one token per step from the KV cache.

A :class:`Session` owns a model, its tokenizer and one cache. Its context (the tokens in the
cache) persists between calls, so a chat turn prefills only what is new; ``generate`` yields
small :class:`Response` records as text becomes printable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from gatedgen.engine import Decoder, TokenCopy
from gatedgen.errors import GatedgenError
from gatedgen.model import CausalLM
from gatedgen.prefill_graph import PrefillGraphs, graphable
from gatedgen.sampling import SamplingParams
from gatedgen.stops import StopMatcher
from gatedgen.tokenizer import Tokenizer

# Prompts are prefilled in chunks of this many tokens (bounded memory for long prompts).
PREFILL_CHUNK = 2048
# Re-base the gates' running sums this often (tokens); see kernels.attn.naive.rebase_gate_cache.
REBASE_EVERY = 4096


@dataclass
class GenerationSettings:
    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)  # stop strings (never printed)
    stop_token_ids: list[int] = field(default_factory=list)  # end generation like EOS (e.g. end of turn)
    ignore_eos: bool = False  # keep going past EOS (benchmarks)


@dataclass
class Stats:
    prompt_tokens: int = 0  # tokens prefilled by this call
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    ttft_seconds: float = 0.0  # start of the call to the first sampled token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # the first token comes from the prefill; each later one from a decode step
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Response:
    text: str  # newly printable text (may be "")
    token: int | None  # the token sampled at this step (None for the final flush)
    finish_reason: str | None  # None while generating; "stop" (EOS or stop string) or "length"
    stats: Stats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Session:
    """One conversation or completion context on one model."""

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, max_context: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.cache = model.new_cache(1, max_context)
        self.tokens: list[int] = []  # exactly the tokens whose keys/values are in the cache
        self.device = model.output_weight.device
        self.decoder = Decoder(model, self.cache)  # decode steps: CUDA-graph replays on CUDA
        # prefills into the empty cache: one CUDA graph per prompt-length bucket (prefill_graph.py)
        graphed = self.decoder.use_graphs and graphable(model, self.cache)
        self.prefill_graphs = PrefillGraphs(model, self.cache) if graphed else None
        self.eos_ids = set(tokenizer.eos_token_ids) | set(model.cfg.eos_token_id)
        self.token_copy = TokenCopy(1, self.device)  # sampled token -> host

    def reset(self) -> None:
        self.cache.reset()
        self.tokens = []

    def _sync_tokens(self) -> None:
        """After an interruption, keep the token list equal to what the cache holds.

        Ctrl-C can land between the model's cache commit and ``tokens.extend`` (cache longer than
        the list) or inside a pass (list and cache agree; the half-written positions are beyond
        ``lengths`` and get overwritten): keep the shorter of the two.
        """
        n = min(len(self.tokens), self.cache.lengths[0])
        self.tokens = self.tokens[:n]
        if self.cache.lengths[0] > n:
            self.cache.truncate(n)

    def _reusable(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` the cache already holds and keeps."""
        self._sync_tokens()
        common = 0
        for a, b in zip(self.tokens, ids):
            if a != b:
                break
            common += 1
        if common == len(ids) and common > 0:
            common -= 1  # the last token must be fed again to get the next-token logits
        return common

    def set_context(self, ids: list[int]) -> list[int]:
        """Reuse the cached prefix shared with ``ids``; return the tokens still to prefill."""
        common = self._reusable(ids)
        if common < len(self.tokens):
            self.cache.truncate(common)
            self.tokens = self.tokens[:common]
        return ids[common:]

    @torch.inference_mode()
    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Append ids to the cache; return the logits after the last one, [1, V] fp32."""
        logits = None
        graphs = self.prefill_graphs
        for i in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[i : i + PREFILL_CHUNK]
            if graphs is not None and self.cache.lengths[0] == 0 and graphs.fits(len(chunk)):
                logits = graphs.prefill(chunk)  # one graph replay (padded to its bucket)
            else:
                x = torch.tensor([chunk], dtype=torch.long, device=self.device)
                logits = self.model(x, self.cache, last_only=True)[:, -1]
            self.tokens.extend(chunk)
            if self.cache.lengths[0] % REBASE_EVERY < len(chunk):
                self.cache.rebase_gates()
        return logits

    def generate(self, ids: list[int], settings: GenerationSettings) -> Iterator[Response]:
        """Generate after the context ``ids`` (the whole context: a cached prefix is reused)."""
        if not ids:
            raise GatedgenError("empty prompt: nothing to continue")
        if len(ids) >= self.max_context:
            raise GatedgenError(f"prompt has {len(ids)} tokens; the context holds {self.max_context}")
        settings.sampling.validate()
        stats = Stats()
        sampler = self.decoder.sampler(settings.sampling)  # reset; the decode steps sample with it
        self.decoder.capture(settings.sampling)  # once per setting, before any timing
        if self.prefill_graphs is not None and self._reusable(ids) == 0:
            self.reset()  # nothing to reuse: start empty now and capture the prompt's bucket untimed
            self.prefill_graphs.prepare(min(len(ids), PREFILL_CHUNK))
        start = time.perf_counter()
        new = self.set_context(ids)
        sampler.prime([ids])
        logits = self._feed(new)
        next_ids = sampler(logits)  # [1] on the device
        pending = self.token_copy.start(next_ids)
        stats.prompt_tokens = len(new)
        text_of = TokenText(self.tokenizer, settings, self.eos_ids)
        decode_start = start
        while True:
            # run one step ahead: the step that feeds this token (and samples the next) is queued before
            # the host waits for the token, unless the token is certainly the last one
            ahead = None
            if stats.generated_tokens + 1 < settings.max_tokens and len(self.tokens) + 2 < self.max_context:
                ahead = self._decode(next_ids, settings)
            token = pending.get()[0]  # the one host synchronisation per step
            now = time.perf_counter()
            if stats.generated_tokens == 0:
                stats.ttft_seconds = stats.prefill_seconds = now - start
                decode_start = now
            else:
                stats.decode_seconds = now - decode_start
            stats.generated_tokens += 1
            text, finish = text_of.push(token, context_full=len(self.tokens) + 1 >= self.max_context)
            if finish is not None and ahead is not None:
                self.cache.truncate(len(self.tokens))  # the step ran ahead with a token that ends here
            elif finish is None:
                self.tokens.append(token)  # now in the cache (the step ahead fed it)
            yield Response(text, token, finish, stats)
            if finish is not None:
                return
            if ahead is None:
                ahead = self._decode(next_ids, settings)
            next_ids, pending = ahead, self.token_copy.start(ahead)  # queued after the step ahead

    def _decode(self, ids: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
        """Queue the step that appends ``ids`` (the sampled token, on the device) to the cache and samples
        the next; returns the next ids [1] (the decoder's buffer: the next step overwrites it)."""
        next_ids = self.decoder.step(ids, settings.sampling)
        if self.cache.lengths[0] % REBASE_EVERY == 0:
            self.cache.rebase_gates()
        return next_ids


class TokenText:
    """Sampled tokens -> printable text, and when generation ends: an EOS or stop token (not printed),
    a stop string (never printed; text that may still become one is held back), the token limit.

    ``incremental=False`` (batches, which hand out whole answers): no text until the end, where the
    tokens are decoded once -- the same text, since the stream's pieces add up to ``decode``; only
    without stop strings, which need the text as it grows."""

    def __init__(self, tokenizer: Tokenizer, settings: GenerationSettings, eos_ids: set[int],
                 incremental: bool = True):
        if not incremental and settings.stop:
            raise ValueError("stop strings need incremental text")
        self.tokenizer = tokenizer
        self.stream = tokenizer.stream() if incremental else None
        self.stops = StopMatcher(settings.stop)
        self.settings, self.eos_ids = settings, eos_ids
        self.count = 0
        self.ids: list[int] = []  # the tokens not yet turned into text (incremental=False)

    def push(self, token: int, context_full: bool = False) -> tuple[str, str | None]:
        """(text to print now, finish reason or None)."""
        self.count += 1
        s = self.settings
        if (token in self.eos_ids and not s.ignore_eos) or token in s.stop_token_ids:
            return self._drain(), "stop"
        if self.stream is None:
            self.ids.append(token)
            if self.count >= s.max_tokens or context_full:
                return self._drain(), "length"
            return "", None
        text, hit = self.stops.push(self.stream.push(token))
        if hit:
            return text, "stop"
        if self.count >= s.max_tokens or context_full:
            return text + self._drain(), "length"
        return text, None

    def _drain(self) -> str:
        """Text still held by the detokenizer and the stop matcher when generation ends."""
        if self.stream is None:
            return self.tokenizer.decode(self.ids)
        tail, hit = self.stops.push(self.stream.flush())
        return tail if hit else tail + self.stops.flush()


def generate_text(session: Session, prompt: str, settings: GenerationSettings) -> str:
    """Convenience: the whole continuation of ``prompt`` as one string."""
    ids = session.tokenizer.encode(prompt)
    return "".join(r.text for r in session.generate(ids, settings))
