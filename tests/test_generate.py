"""Generation: greedy matches an independent oracle; stops, EOS, limits, seeds, chat reuse."""

from __future__ import annotations

import pytest

from factory_model import make_checkpoint
from gatedgen.chat import ChatFormatter, Message
from gatedgen.generate import GenerationSettings, Session
from gatedgen.loading import load_model
from gatedgen.sampling import SamplingParams
from gatedgen.tokenizer import Tokenizer
from oracle_fox import FoxOracle

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gen"), seed=5)


@pytest.fixture
def session(ckpt):
    return Session(load_model(ckpt, backend="reference"), Tokenizer.from_dir(ckpt), max_context=128)


def _run(session, ids, **kw):
    responses = list(session.generate(ids, GenerationSettings(**kw)))
    return responses, "".join(r.text for r in responses), [r.token for r in responses]


def test_greedy_equals_independent_oracle(session, ckpt):
    ids = session.tokenizer.encode("Once upon a time")
    responses, text, tokens = _run(session, ids, max_tokens=12, sampling=GREEDY, ignore_eos=True)
    assert tokens == FoxOracle(ckpt).greedy(ids, 12)
    assert text == session.tokenizer.decode(tokens)
    assert responses[-1].finish_reason == "length"
    assert all(r.finish_reason is None for r in responses[:-1])


def test_stop_string_cut_and_never_printed(session):
    ids = session.tokenizer.encode("Hello")
    _, full, _ = _run(session, ids, max_tokens=30, sampling=GREEDY, ignore_eos=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    responses, text, _ = _run(session, ids, max_tokens=30, sampling=GREEDY, ignore_eos=True, stop=[stop])
    assert text == full[: full.index(stop)]
    assert responses[-1].finish_reason == "stop"


def test_eos_and_stop_tokens_end_generation(session):
    ids = session.tokenizer.encode("Hello")
    _, _, tokens = _run(session, ids, max_tokens=10, sampling=GREEDY, ignore_eos=True)
    target = tokens[4]
    first = tokens.index(target)
    responses, _, got = _run(session, ids, max_tokens=10, sampling=GREEDY, stop_token_ids=[target])
    assert got == tokens[: first + 1] and responses[-1].finish_reason == "stop"
    session.eos_ids = {target}  # several EOS ids are a set; any one ends generation
    _, _, got = _run(session, ids, max_tokens=10, sampling=GREEDY)
    assert got == tokens[: first + 1]
    _, _, got = _run(session, ids, max_tokens=10, sampling=GREEDY, ignore_eos=True)
    assert got == tokens


def test_seed_reproducible(session):
    ids = session.tokenizer.encode("Hello")
    sample = lambda seed: _run(session, ids, max_tokens=15, ignore_eos=True,  # noqa: E731
                               sampling=SamplingParams(temperature=1.0, seed=seed))[2]
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_chat_turn_prefills_only_new_tokens(session):
    tok = session.tokenizer
    fmt = ChatFormatter(tok.chat_template)
    messages = [Message("user", "Hi there")]
    first = tok.encode_plain(fmt.render(messages))
    responses, reply, _ = _run(session, first, max_tokens=5, sampling=GREEDY, ignore_eos=True)
    assert responses[-1].stats.prompt_tokens == len(first)
    messages += [Message("assistant", reply), Message("user", "And now?")]
    second = tok.encode_plain(fmt.render(messages))
    responses, _, tokens = _run(session, second, max_tokens=5, sampling=GREEDY, ignore_eos=True)
    assert responses[-1].stats.prompt_tokens < len(second) - len(first)
    # same tokens as a fresh session that prefills everything
    session.reset()
    _, _, fresh = _run(session, second, max_tokens=5, sampling=GREEDY, ignore_eos=True)
    assert tokens == fresh


def test_context_limit(session):
    with pytest.raises(Exception, match="context holds 128"):
        list(session.generate(list(range(1, 200)), GenerationSettings()))
    responses, _, tokens = _run(session, list(range(1, 120)), max_tokens=50, sampling=GREEDY, ignore_eos=True)
    assert responses[-1].finish_reason == "length" and len(tokens) < 50


def test_step_run_ahead_is_undone_when_a_token_ends_generation(session, ckpt):
    """The decode loop queues the next step before it reads the current token; when that token ends the
    generation (here a stop token) the step it ran ahead is taken back: the cache holds exactly the
    session's tokens, and the next turn continues as a fresh session would."""
    ids = session.tokenizer.encode("Once upon a time")
    _, _, tokens = _run(session, ids, max_tokens=10, sampling=GREEDY, ignore_eos=True)
    stop = next(t for i, t in enumerate(tokens) if i >= 3 and t not in tokens[:i])
    cut = tokens.index(stop)
    session.reset()
    responses, _, got = _run(session, ids, max_tokens=10, sampling=GREEDY, ignore_eos=True, stop_token_ids=[stop])
    assert got == tokens[: cut + 1] and responses[-1].finish_reason == "stop"
    assert session.tokens == ids + tokens[:cut]
    assert session.cache.lengths[0] == len(session.tokens)
    more = ids + tokens[:cut] + session.tokenizer.encode(" and")
    _, _, after = _run(session, more, max_tokens=6, sampling=GREEDY, ignore_eos=True)
    assert after == FoxOracle(ckpt).greedy(more, 6)
