"""Token sampling on the logits' device without host synchronisation (CUDA-graph friendly).

Every step is a torch op on fixed shapes: no ``.item()``, ``.tolist()``, data-dependent boolean
indexing or ``torch.multinomial``. Options that are off are skipped by Python ``if``s on the
(static) parameters, never on tensor values.

Order, as in HF ``generate``: repetition penalty, temperature, top-k, top-p, min-p, then a draw by
the exponential race ``argmax(p_i / E_i)`` with ``E_i ~ Exponential(1)``, which picks ``i`` with
probability ``p_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gatedgen.errors import GatedgenError


@dataclass
class SamplingParams:
    """How the next token is chosen from the logits."""

    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set with probability >= top_p; 1 = off
    min_p: float = 0.0  # drop tokens with p < min_p * p_max; 0 = off
    repetition_penalty: float = 1.0  # HF semantics on tokens already seen; 1 = off
    seed: int | None = None  # None = nondeterministic

    def validate(self) -> SamplingParams:
        """Raise :class:`GatedgenError` for a value out of range; return self."""

        def num(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GatedgenError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
            return float(value)

        if num("temperature") < 0:
            raise GatedgenError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise GatedgenError(f"top-k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < num("top_p") <= 1:
            raise GatedgenError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= num("min_p") < 1:
            raise GatedgenError(f"min-p must be in [0, 1), got {self.min_p}")
        if num("repetition_penalty") <= 0:
            raise GatedgenError(f"repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GatedgenError(f"seed must be an integer, got {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# --- filters: pure functions on logits [B, V] -> logits [B, V] -------------------------------------


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """HF semantics: for seen tokens, positive logits are divided by ``penalty``, others multiplied.

    logits [B, V] float; seen [B, V] bool.
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep logits >= the k-th largest of each row (ties at the threshold are kept), rest -inf."""
    k = min(k, logits.shape[-1])
    threshold = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus: keep the most likely tokens until their probability reaches ``top_p`` (at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's highest probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # [B, 1]
    return logits.masked_fill(probs < threshold, float("-inf"))


def sample_from_probs(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row by the exponential race ``argmax(p / E)``, E ~ Exp(1); [B, V] -> [B] int64."""
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    race.clamp_min_(torch.finfo(race.dtype).tiny)  # a 0 draw would make 0/0 = NaN win the argmax
    return torch.argmax(probs / race, dim=-1)


# --- the sampler -----------------------------------------------------------------------------------


class Sampler:
    """Chooses one token per row from logits [B, V] and remembers chosen ids (repetition penalty).

    State lives on ``device``: a ``seen`` mask [B, V] bool and a ``torch.Generator`` seeded from
    ``params.seed`` (same seed and settings give the same tokens).
    """

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = params.validate()
        self.vocab_size = vocab_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seen = torch.zeros(batch_size, vocab_size, dtype=torch.bool, device=self.device)
        self.generator = torch.Generator(device=self.device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def reset(self) -> None:
        """Forget all seen tokens (a new conversation)."""
        self.seen.zero_()

    def prime(self, prompt_ids: list[list[int]]) -> None:
        """Mark prompt tokens as seen for the repetition penalty (adds to what is already marked).

        Host-side (before decoding starts): one list of ids per batch row.
        """
        if len(prompt_ids) != self.batch_size:
            raise ValueError(f"prime: got {len(prompt_ids)} rows for batch size {self.batch_size}")
        for row, ids in enumerate(prompt_ids):
            if not ids:
                continue
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ValueError(f"prime: token id out of range [0, {self.vocab_size}) in row {row}")
            index = torch.tensor(ids, dtype=torch.long, device=self.device)
            self.seen[row].index_fill_(0, index, True)

    def reset_rows(self, rows: list[int], prompt_ids: list[list[int]]) -> None:
        """Start new sequences in ``rows`` (continuous batching): forget what those rows saw and mark
        their prompts (host-side, before their first token is sampled)."""
        if self.params.repetition_penalty == 1.0:
            return  # ``seen`` is only read by the repetition penalty
        for row, ids in zip(rows, prompt_ids):
            self.seen[row] = False
            if ids:
                self.seen[row].index_fill_(0, torch.tensor(ids, dtype=torch.long, device=self.device), True)

    def filter_logits(self, logits: Tensor, seen: Tensor | None = None) -> Tensor:
        """Logits [B, V] after the repetition penalty, temperature, top-k, top-p and min-p (fp32);
        ``seen`` [B, V] defaults to the sampler's own mask."""
        p = self.params
        logits = logits.float()
        if p.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, self.seen if seen is None else seen, p.repetition_penalty)
        if p.greedy:
            return logits
        if p.temperature != 1.0:
            logits = logits / p.temperature
        if p.top_k > 0:
            logits = top_k_filter(logits, p.top_k)
        if p.top_p < 1.0:
            logits = top_p_filter(logits, p.top_p)
        if p.min_p > 0.0:
            logits = min_p_filter(logits, p.min_p)
        return logits

    def __call__(self, logits: Tensor) -> Tensor:
        """Next token ids [B] int64 from logits [B, V]; also marks them as seen."""
        if tuple(logits.shape) != (self.batch_size, self.vocab_size):
            raise ValueError(
                f"logits shape {tuple(logits.shape)} != (batch {self.batch_size}, vocab {self.vocab_size})"
            )
        ids = self._draw(self.filter_logits(logits))
        self.seen.scatter_(1, ids[:, None], True)
        return ids

    def sample_rows(self, logits: Tensor, rows: Tensor) -> Tensor:
        """Next ids [n] for some rows only: logits [n, V] belong to rows ``rows`` [n] (device int64)."""
        ids = self._draw(self.filter_logits(logits, self.seen[rows]))
        self.seen[rows, ids] = True
        return ids

    def _draw(self, logits: Tensor) -> Tensor:
        if self.params.greedy:
            return torch.argmax(logits, dim=-1)
        return sample_from_probs(torch.softmax(logits, dim=-1), self.generator)
