"""The chat REPL: the conversation lives in the KV cache, each turn prefills only what is new."""

from __future__ import annotations

from dataclasses import dataclass, field

from gatedgen import ui
from gatedgen.chat import ChatFormatter, Message
from gatedgen.generate import GenerationSettings, Session, Stats

HELP = """Commands:
  /help              this text
  /exit, /bye        leave (Ctrl-D too)
  /reset, /clear     forget the conversation (keeps the system prompt)
  /system TEXT       set the system prompt and reset
  /stats             speeds of the last reply"""


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
        self.settings.stop = list(dict.fromkeys(self.settings.stop + self.formatter.stop_strings))
        marker_ids = [tok.token_to_id(s) for s in self.formatter.stop_strings]
        self.settings.stop_token_ids = [i for i in marker_ids if i is not None]
        self.reset()

    def reset(self) -> None:
        self.messages = [Message("system", self.system_prompt)] if self.system_prompt else []

    def reply(self, user_text: str):
        """Stream the assistant's reply to ``user_text``; the reply joins the history as it grows."""
        self.messages.append(Message("user", user_text))
        ids = self.session.tokenizer.encode_plain(self.formatter.render(self.messages))
        answer = Message("assistant", "")
        self.messages.append(answer)
        for response in self.session.generate(ids, self.settings):
            answer.content += response.text
            self.last_stats = response.stats
            yield response.text


def answer_once(conversation: Conversation, question: str, show_stats: bool = False) -> None:
    for piece in conversation.reply(question):
        ui.write(piece)
    ui.write("\n")
    if show_stats and conversation.last_stats:
        ui.print_stats(conversation.last_stats)


def _command(conversation: Conversation, line: str) -> bool:
    """Handle a slash command; return False to leave."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/bye", "/quit"):
        return False
    if name in ("/reset", "/clear"):
        conversation.reset()
        ui.info("(conversation cleared)")
    elif name == "/system":
        conversation.system_prompt = arg.strip() or None
        conversation.reset()
        ui.info("(system prompt set; conversation cleared)")
    elif name == "/stats":
        if conversation.last_stats:
            ui.print_stats(conversation.last_stats)
    elif name == "/help":
        ui.info(HELP)
    else:
        ui.warn(f"unknown command {name}; /help lists them")
    return True


def run(conversation: Conversation, show_stats: bool = False) -> None:
    ui.info("Chat with the model. /help for commands, Ctrl-D to leave.")
    while True:
        try:
            line = ui.read_line(">>> ")
        except EOFError:
            ui.write("\n")
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(conversation, line.strip()):
                return
            continue
        try:
            for piece in conversation.reply(line):
                ui.write(piece)
        except KeyboardInterrupt:
            ui.info("\n(interrupted)")
        ui.write("\n")
        if show_stats and conversation.last_stats:
            ui.print_stats(conversation.last_stats)
