"""The REPL's pieces in-process: multi-line input, slash commands, /save and /load, context trimming,
and an interrupted reply leaving the cache consistent for the next turn."""

from __future__ import annotations

import json
import os

import pytest

from factory_model import make_checkpoint
from gatedgen import repl_commands, runtime
from gatedgen.chat import ChatFormatter, Message
from gatedgen.errors import GatedgenError
from gatedgen.generate import GenerationSettings, Session
from gatedgen.repl import Conversation, read_message
from gatedgen.sampling import SamplingParams


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("repl"), seed=3)


def conversation(ckpt, max_context=4096, max_tokens=8, system=None) -> Conversation:
    session = runtime.open_session(str(ckpt), "cpu", "float32", max_context).session
    settings = GenerationSettings(max_tokens=max_tokens, sampling=SamplingParams(temperature=0), ignore_eos=True)
    return Conversation(session, settings, system)


def reader(*lines):
    it = iter(lines)
    prompts = []

    def read(prompt):
        prompts.append(prompt)
        return next(it)

    return read, prompts


@pytest.mark.parametrize("lines,expected", [
    (["plain"], "plain"),
    (['"""one', "two", 'three"""'], "one\ntwo\nthree"),
    (['"""', "a", '"""'], "a"),
    (['"""inline"""'], "inline"),
    (["a \\", "b\\", "c"], "a \nb\nc"),
])
def test_read_message(lines, expected):
    read, prompts = reader(*lines)
    assert read_message(read) == expected
    assert prompts == [">>> "] + ["... "] * (len(lines) - 1)


def test_read_message_eof_in_continuation_leaves():
    read, _ = reader('"""open')
    with pytest.raises(StopIteration):  # the reader's end: the REPL sees EOFError from input()
        read_message(read)


def test_set_validates_and_changes_nothing_on_error(ckpt):
    conv = conversation(ckpt)
    before = conv.settings.sampling
    for name, value in [("temperature", "-1"), ("top_p", "0"), ("top_p", "1.5"), ("min_p", "1"), ("top_k", "2.5"),
                        ("seed", "x"), ("max_tokens", "0"), ("temperature", "nan"), ("bogus", "1")]:
        with pytest.raises(GatedgenError):
            repl_commands.set_option(conv, name, value)
    assert conv.settings.sampling == before and conv.settings.max_tokens == 8
    repl_commands.set_option(conv, "temperature", "0.5")
    repl_commands.set_option(conv, "top-k", "5")
    repl_commands.set_option(conv, "seed", "42")
    repl_commands.set_option(conv, "max_tokens", "3")
    s = conv.settings.sampling
    assert (s.temperature, s.top_k, s.seed, conv.settings.max_tokens) == (0.5, 5, 42, 3)
    repl_commands.set_option(conv, "seed", "none")
    assert conv.settings.sampling.seed is None


def test_commands(ckpt, capsys):
    conv = conversation(ckpt, system="be brief")
    assert repl_commands.handle(conv, "/help")
    assert "/save FILE" in capsys.readouterr().err
    "".join(conv.reply("hi"))
    assert len(conv.messages) == 3
    assert repl_commands.handle(conv, "/stats")
    assert "context:" in capsys.readouterr().err
    assert repl_commands.handle(conv, "/reset")
    assert [m.role for m in conv.messages] == ["system"]
    assert repl_commands.handle(conv, "/system")
    assert conv.messages == []
    assert not repl_commands.handle(conv, "/bye") and not repl_commands.handle(conv, "/exit")


def test_save_and_load_round_trip(ckpt, tmp_path):
    conv = conversation(ckpt, system="sys")
    "".join(conv.reply("first"))
    path = tmp_path / "c.json"
    repl_commands.handle(conv, f"/save {path}")
    assert os.listdir(tmp_path) == ["c.json"]  # nothing else written
    other = conversation(ckpt)
    repl_commands.handle(other, f"/load {path}")
    assert other.messages == conv.messages and other.system_prompt == "sys"
    "".join(other.reply("second"))  # the loaded conversation goes on


def test_save_and_load_errors(ckpt, tmp_path):
    conv = conversation(ckpt)
    "".join(conv.reply("x"))
    for target in [tmp_path / "missing-dir" / "c.json", tmp_path]:
        with pytest.raises(GatedgenError, match="cannot write"):
            repl_commands.handle(conv, f"/save {target}")
    assert not (tmp_path / "missing-dir").exists()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(GatedgenError, match="cannot write"):
            repl_commands.handle(conv, f"/save {ro / 'c.json'}")
    with pytest.raises(GatedgenError, match="usage"):
        repl_commands.handle(conv, "/save")
    bad = {"garbage.json": b"\xff\xfe", "notjson.json": b"{", "wrongrole.json": b'[{"role": "root", "content": "x"}]',
           "late_system.json": b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}'}
    before = list(conv.messages)
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(GatedgenError):
            repl_commands.handle(conv, f"/load {tmp_path / name}")
    with pytest.raises(GatedgenError, match="cannot read"):
        repl_commands.handle(conv, f"/load {tmp_path / 'nope.json'}")
    assert conv.messages == before


def test_oldest_turns_dropped_system_prompt_kept(ckpt, capsys):
    conv = conversation(ckpt, max_context=160, max_tokens=16, system="You are terse.")
    for i in range(12):
        "".join(conv.reply(f"question number {i} about something"))
        assert len(conv.session.tokens) < 160
    assert conv.messages[0] == Message("system", "You are terse.")
    assert conv.messages[1].role == "user" and "question number 0" not in conv.messages[1].content
    assert conv.messages[-2].content == "question number 11 about something"
    assert "dropped the" in capsys.readouterr().err


def test_message_longer_than_context_is_an_error(ckpt):
    conv = conversation(ckpt, max_context=64, max_tokens=8)
    with pytest.raises(GatedgenError, match="needs .* tokens"):
        "".join(conv.reply("word " * 200))
    assert conv.messages == []  # the turn was not kept
    "".join(conv.reply("short"))


class InterruptAfter:
    """Wraps a callable (the model's forward for the prefill, the decoder's step for decoding): the
    n-th call raises KeyboardInterrupt after it has run (the cache already committed, the session's
    token list not yet extended: the worst moment)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


@pytest.mark.parametrize("calls", [1, 6])  # during the prefill; during decoding
def test_interrupted_reply_keeps_cache_consistent(ckpt, calls):
    conv = conversation(ckpt, max_tokens=30)
    conv.settings.stop, conv.settings.stop_token_ids = [], []  # the random model must not end the reply
    "".join(conv.reply("hello there"))
    session = conv.session
    model = session.model
    if calls == 1:
        session.model = InterruptAfter(model, 1)
    else:
        session.decoder.step = InterruptAfter(session.decoder.step, calls)
    pieces = []
    with pytest.raises(KeyboardInterrupt):
        for piece in conv.reply("tell me more"):
            pieces.append(piece)
    session.model = model
    session.decoder.__dict__.pop("step", None)
    assert conv.messages[-1] == Message("assistant", "".join(pieces))  # the partial reply stays
    conv.settings.max_tokens = 6
    ids = session.tokenizer.encode_plain(conv.formatter.render(conv.messages + [Message("user", "and?")]))
    shared = next((i for i, (a, b) in enumerate(zip(session.tokens, ids)) if a != b),
                  min(len(session.tokens), len(ids)))
    reply = "".join(conv.reply("and?"))
    assert conv.last_stats.prompt_tokens == len(ids) - shared  # exactly the new tokens were prefilled
    assert shared > 10
    assert len(session.tokens) == session.cache.lengths[0]
    fresh = Session(model, session.tokenizer, session.max_context)
    expected = "".join(r.text for r in fresh.generate(ids, conv.settings))
    assert reply == expected


EVIL_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}",
]


@pytest.mark.parametrize("template", EVIL_TEMPLATES)
def test_template_reaching_for_internals_fails_cleanly(template):
    formatter = ChatFormatter(template)
    with pytest.raises(GatedgenError, match="chat template"):
        formatter.render([Message("user", "hi")])


def test_chat_with_evil_template_one_error_line(tmp_path):
    from click.testing import CliRunner

    from gatedgen.cli import cli

    root = make_checkpoint(tmp_path / "evil", seed=1)
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    cfg["chat_template"] = EVIL_TEMPLATES[1]
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["chat", "-m", str(root), "-n", "2"], input="hello\n")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [r.stderr.splitlines()[0]] and r.stderr.startswith("Error: chat template")
