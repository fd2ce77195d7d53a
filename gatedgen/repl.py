"""The chat REPL: the conversation lives in the KV cache, each turn prefills only what is new.

:class:`Conversation` holds the messages and renders them through the checkpoint's chat template;
when they outgrow the context the oldest turns are dropped (the system prompt stays). Slash
commands live in :mod:`gatedgen.repl_commands`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gatedgen import ui
from gatedgen.chat import ChatFormatter, Message
from gatedgen.errors import GatedgenError
from gatedgen.generate import GenerationSettings, Session, Stats

ROLES = ("system", "user", "assistant")
SAVE_FORMAT = "gatedgen-conversation"
MAX_LOAD_BYTES = 64 * 2**20


@dataclass
class Conversation:
    session: Session
    settings: GenerationSettings
    system_prompt: str | None = None
    messages: list[Message] = field(default_factory=list)
    last_stats: Stats | None = None

    def __post_init__(self) -> None:
        tok = self.session.tokenizer
        bos = tok.id_to_token(tok.bos_token_id) if tok.bos_token_id is not None else None
        eos = tok.id_to_token(tok.eos_token_ids[0]) if tok.eos_token_ids else None
        self.formatter = ChatFormatter(tok.chat_template, bos, eos)
        self.formatter.render([Message("user", "hello")])  # a broken template fails now, not mid-chat
        self.settings.stop = list(dict.fromkeys(self.settings.stop + self.formatter.stop_strings))
        marker_ids = [tok.token_to_id(s) for s in self.formatter.stop_strings]
        self.settings.stop_token_ids = [i for i in marker_ids if i is not None]
        self.reset()

    def reset(self) -> None:
        self.messages = [Message("system", self.system_prompt)] if self.system_prompt else []

    # --- the context budget ----------------------------------------------------------------------

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens a turn may use: the rest of the context is room for the reply."""
        ctx = self.session.max_context
        return ctx - max(1, min(self.settings.max_tokens, ctx // 2))

    def _encode(self) -> list[int]:
        return self.session.tokenizer.encode_plain(self.formatter.render(self.messages))

    def _fit(self) -> list[int]:
        """Ids of the rendered conversation, dropping the oldest turns until they fit the budget."""
        ids = self._encode()
        dropped = 0
        while len(ids) > self.prompt_budget:
            first = 1 if self.messages and self.messages[0].role == "system" else 0
            # the oldest turn: its user message and everything up to the next user message
            end = first + 1
            while end < len(self.messages) and self.messages[end].role != "user":
                end += 1
            if end >= len(self.messages):  # only the newest message is left
                raise GatedgenError(
                    f"the message needs {len(ids)} tokens with the chat template; the context leaves "
                    f"{self.prompt_budget} for it ({self.session.max_context} minus room for the reply)"
                )
            dropped += end - first
            del self.messages[first:end]
            ids = self._encode()
        if dropped:
            ui.warn(f"the conversation outgrew the context: dropped the {dropped} oldest messages"
                    + (" (system prompt kept)" if self.system_prompt else ""))
        return ids

    # --- turns -----------------------------------------------------------------------------------

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the assistant's reply to ``user_text``; the reply joins the history as it grows.

        Interrupted (Ctrl-C), the partial reply stays in the history; the session keeps its token
        list equal to its cache, so the next turn still reuses the cached prefix.
        """
        self.messages.append(Message("user", user_text))
        try:
            ids = self._fit()
        except GatedgenError:
            self.messages.pop()
            raise
        answer = Message("assistant", "")
        self.messages.append(answer)
        for response in self.session.generate(ids, self.settings):
            answer.content += response.text
            self.last_stats = response.stats
            yield response.text

    # --- files -----------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"format": SAVE_FORMAT, "version": 1,
                           "messages": [m.as_dict() for m in self.messages]}, ensure_ascii=False, indent=1)

    def save(self, path: Path) -> None:
        """Write the conversation to exactly ``path`` (no directories created, nothing else touched)."""
        text = self.to_json() + "\n"
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise GatedgenError(f"cannot write {path}: {e.strerror or e.__class__.__name__}") from None

    def load(self, path: Path) -> None:
        """Replace the conversation by the one saved in ``path`` (the cache reuses what it can)."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_LOAD_BYTES + 1)
        except OSError as e:
            raise GatedgenError(f"cannot read {path}: {e.strerror or e.__class__.__name__}") from None
        if len(data) > MAX_LOAD_BYTES:
            raise GatedgenError(f"{path}: larger than {MAX_LOAD_BYTES // 2**20} MiB; not a saved conversation")
        self.messages = parse_saved(data, str(path))
        system = [m.content for m in self.messages if m.role == "system"]
        self.system_prompt = system[0] if system else None


def parse_saved(data: bytes, source: str) -> list[Message]:
    """The messages of a saved conversation, strictly checked."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GatedgenError(f"{source}: not a saved conversation ({e.__class__.__name__})") from None
    raw = obj.get("messages") if isinstance(obj, dict) else obj
    if not isinstance(raw, list):
        raise GatedgenError(f"{source}: expected a JSON object with a \"messages\" list")
    messages = []
    for i, m in enumerate(raw):
        if (not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)):
            raise GatedgenError(f"{source}: message {i} is not {{\"role\": system|user|assistant, \"content\": str}}")
        if m["role"] == "system" and i != 0:
            raise GatedgenError(f"{source}: only the first message may be the system prompt")
        messages.append(Message(m["role"], m["content"]))
    return messages


# --- input -----------------------------------------------------------------------------------------

PROMPT, CONTINUE = ">>> ", "... "
QUOTES = '"""'


def read_message(read: Callable[[str], str]) -> str:
    """One user message: a line; text between triple quotes; or lines joined by trailing backslashes."""
    line = read(PROMPT)
    if line.lstrip().startswith(QUOTES):
        rest = line.lstrip()[len(QUOTES):]
        lines = []
        while not rest.rstrip().endswith(QUOTES):
            lines.append(rest)
            rest = read(CONTINUE)
        lines.append(rest.rstrip()[: -len(QUOTES)])
        return "\n".join(lines).strip("\n")
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read(CONTINUE)
    lines.append(line)
    return "\n".join(lines)


# --- the loop --------------------------------------------------------------------------------------


def answer_once(conversation: Conversation, question: str, show_stats: bool = False) -> None:
    for piece in conversation.reply(question):
        ui.write(piece)
    ui.write("\n")
    if show_stats and conversation.last_stats:
        ui.print_stats(conversation.last_stats)


def stream_reply(conversation: Conversation, text: str, show_stats: bool = False) -> None:
    """One turn: Ctrl-C stops only this reply."""
    try:
        for piece in conversation.reply(text):
            ui.write(piece)
    except KeyboardInterrupt:
        ui.write("\n")
        ui.info("(interrupted)")
        return
    ui.write("\n")
    if show_stats and conversation.last_stats:
        ui.print_stats(conversation.last_stats)


def run(conversation: Conversation, show_stats: bool = False, history: Path | None = None) -> None:
    """The REPL. Ctrl-D (or /exit) returns; Ctrl-C at the prompt raises KeyboardInterrupt (exit 130)."""
    from gatedgen.repl_commands import handle

    editor = ui.LineEditor(history)
    ui.info("Chat with the model. /help for commands, Ctrl-D to leave.")
    try:
        while True:
            try:
                text = read_message(editor.read)
            except EOFError:
                ui.write("\n")
                return
            if not text.strip():
                continue
            try:
                if text.startswith("/"):
                    if not handle(conversation, text.strip()):
                        return
                else:
                    stream_reply(conversation, text, show_stats)
            except GatedgenError as e:
                ui.error(str(e))
    except KeyboardInterrupt:
        ui.write("\n")
        raise
    finally:
        editor.save()
