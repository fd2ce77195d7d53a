"""``gatedgen complete --jsonl``: one JSON request per input line, one JSON result per line, in order.

Request: ``{"prompt": str, "id": any (echoed back), "temperature", "top_k", "top_p", "min_p",
"repetition_penalty", "seed", "max_tokens", "stop": str | [str]}``; fields left out take the
command-line values. Unknown fields are an error (a typo must not pass silently). Blank lines are
skipped (no result).

Result: ``{"text", "finish_reason": "stop"|"length", "prompt_tokens", "generated_tokens"}`` (plus
``"id"`` when given). A bad line does not stop the others: its result is ``{"text": "",
"finish_reason": "error", "prompt_tokens": 0, "generated_tokens": 0, "error": "line N: ..."}``,
and the command exits 1 at the end.

On CPU generation is sequential (shared prompt prefixes are reused from the KV cache); on CUDA
consecutive requests with the same settings are generated in batches (:func:`generate_all`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gatedgen import runtime
from gatedgen.errors import GatedgenError
from gatedgen.generate import GenerationSettings, Session

SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
FIELDS = {"prompt", "id", "max_tokens", "stop", *SAMPLING_FIELDS}


@dataclass
class Request:
    line: int  # 1-based input line number
    id: Any = None
    has_id: bool = False
    ids: list[int] | None = None  # prompt token ids (None: the line was bad)
    settings: GenerationSettings | None = None
    error: str | None = None


def parse_line(text: str, defaults: GenerationSettings) -> tuple[str, GenerationSettings, dict[str, Any]]:
    """(prompt, settings, the request object) of one line; GatedgenError when it is not valid."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise GatedgenError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise GatedgenError("expected a JSON object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise GatedgenError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise GatedgenError('"prompt" must be a non-empty string')
    sampling = dataclasses.replace(defaults.sampling, **{k: obj[k] for k in SAMPLING_FIELDS if k in obj})
    sampling.validate()
    max_tokens = obj.get("max_tokens", defaults.max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise GatedgenError(f'"max_tokens" must be an integer >= 1, got {max_tokens!r}')
    stop = obj.get("stop", defaults.stop)
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise GatedgenError('"stop" must be a non-empty string or a list of them')
    settings = dataclasses.replace(defaults, sampling=sampling, max_tokens=max_tokens, stop=list(stop))
    return prompt, settings, obj


def read_requests(lines: Iterable[str], session: Session, defaults: GenerationSettings,
                  truncate: str) -> Iterator[Request]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        request = Request(line=number)
        try:
            prompt, request.settings, obj = parse_line(text, defaults)
            request.has_id, request.id = "id" in obj, obj.get("id")
            ids = session.tokenizer.encode(prompt)
            request.ids = runtime.fit_prompt(ids, session.max_context, request.settings.max_tokens, truncate,
                                             session.tokenizer.bos_token_id)
        except GatedgenError as e:
            request.error = f"line {number}: {e}"
        yield request


def _generate_one(session: Session, request: Request) -> dict[str, Any]:
    text, last = [], None
    for response in session.generate(request.ids, request.settings):
        text.append(response.text)
        last = response
    return {"text": "".join(text), "finish_reason": last.finish_reason, "prompt_tokens": len(request.ids),
            "generated_tokens": last.stats.generated_tokens}


BATCH_SIZE = 32  # requests decoded together on CUDA (continuous batching: a finished row takes the next)
GROUP_SIZE = 1024  # most requests read ahead into one continuous batch


def generate_all(session: Session, requests: Iterable[Request],
                 batched: bool | None = None) -> Iterator[tuple[Request, dict[str, Any]]]:
    """Results in input order. On CUDA (or ``batched=True``), runs of consecutive valid requests with
    the same settings go through ``gatedgen.batch.generate_stream`` together (BATCH_SIZE rows, one
    sampler and seed per run); otherwise one by one on the session (shared prompt prefixes reused from
    its cache)."""
    if batched is None:
        batched = session.device.type == "cuda"
    if not batched:
        for request in requests:
            yield request, _error(request.error) if request.error is not None else _guard(_generate_one, session,
                                                                                            request)
        return
    group: list[Request] = []
    for request in requests:
        if group and (request.error is not None or request.settings != group[0].settings
                      or len(group) == GROUP_SIZE):
            yield from _run_batch(session, group)
            group = []
        if request.error is not None:
            yield request, _error(request.error)
        else:
            group.append(request)
    if group:
        yield from _run_batch(session, group)


def _guard(fn, session: Session, request: Request) -> dict[str, Any]:
    try:
        return fn(session, request)
    except GatedgenError as e:
        return _error(f"line {request.line}: {e}")


def _run_batch(session: Session, group: list[Request]) -> Iterator[tuple[Request, dict[str, Any]]]:
    from gatedgen.batch import generate_stream

    done: dict[int, dict[str, Any]] = {}
    emitted = 0
    try:
        stream = generate_stream(session.model, session.tokenizer, [r.ids for r in group], group[0].settings,
                                 batch_size=min(BATCH_SIZE, len(group)),
                                 max_prompt_tokens=max(len(r.ids) for r in group))
        for index, result in stream:
            done[index] = {"text": result.text, "finish_reason": result.finish_reason,
                           "prompt_tokens": len(group[index].ids), "generated_tokens": len(result.tokens)}
            while emitted in done:  # in input order
                yield group[emitted], done.pop(emitted)
                emitted += 1
    except GatedgenError as e:
        for request in group[emitted:]:
            yield request, _error(f"line {request.line}: {e}")


def _error(message: str) -> dict[str, Any]:
    return {"text": "", "finish_reason": "error", "prompt_tokens": 0, "generated_tokens": 0, "error": message}


def run(session: Session, lines: Iterable[str], defaults: GenerationSettings, truncate: str,
        write: Callable[[str], None]) -> int:
    """Answer every request line; return how many failed."""
    failed = 0
    for request, result in generate_all(session, read_requests(lines, session, defaults, truncate)):
        if request.has_id:
            result = {"id": request.id, **result}
        failed += "error" in result
        write(json.dumps(result, ensure_ascii=False) + "\n")
    return failed
