"""The REPL's slash commands. Each handler gets the conversation and the text after the command."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from gatedgen import ui
from gatedgen.errors import GatedgenError
from gatedgen.repl import Conversation

HELP = """Commands:
  /help               this text
  /exit, /bye         leave (Ctrl-D too; Ctrl-C stops a reply, or leaves at the prompt)
  /reset, /clear      forget the conversation (keeps the system prompt)
  /system TEXT        set the system prompt and reset ("/system" alone removes it)
  /set NAME VALUE     temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, seed
                      ("/set" alone shows them; "/set seed none" for a random seed)
  /stats              speeds of the last reply and context use
  /save FILE          write the conversation as JSON to FILE
  /load FILE          replace the conversation by the one in FILE
Multi-line input: start with \"\"\" and end with \"\"\", or end lines with a backslash."""

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
SETTABLE = SAMPLING + ("max_tokens",)
INTS = ("top_k", "seed", "max_tokens")


def _value(name: str, text: str) -> int | float | None:
    if name == "seed" and text.lower() in ("none", "random", "off"):
        return None
    try:
        if name in INTS:
            return int(text)
        value = float(text)
    except ValueError:
        kind = "an integer" if name in INTS else "a number"
        raise GatedgenError(f"/set {name}: expected {kind}, got {text!r}") from None
    if not math.isfinite(value):
        raise GatedgenError(f"/set {name}: expected a finite number, got {text!r}")
    return value


def set_option(conv: Conversation, name: str, text: str) -> None:
    """Validate then apply one setting; a bad value changes nothing."""
    name = name.replace("-", "_")
    if name not in SETTABLE:
        raise GatedgenError(f"/set: unknown setting {name!r} (one of: {', '.join(SETTABLE)})")
    value = _value(name, text)
    if name == "max_tokens":
        if value < 1:
            raise GatedgenError(f"/set max_tokens: must be >= 1, got {value}")
        conv.settings.max_tokens = value
        return
    sampling = dataclasses.replace(conv.settings.sampling, **{name: value})
    sampling.validate()
    conv.settings.sampling = sampling


def _settings_lines(conv: Conversation) -> list[str]:
    s = conv.settings.sampling
    return [f"{name} = {getattr(s, name)}" for name in SAMPLING] + [f"max_tokens = {conv.settings.max_tokens}"]


def _cmd_set(conv: Conversation, arg: str) -> None:
    parts = arg.split()
    if not parts:
        ui.info("\n".join(_settings_lines(conv)))
        return
    if len(parts) != 2:
        raise GatedgenError("usage: /set NAME VALUE (/help lists the names)")
    set_option(conv, *parts)
    ui.info(f"({parts[0]} = {parts[1]})")


def _cmd_reset(conv: Conversation, arg: str) -> None:
    conv.reset()
    ui.info("(conversation cleared)")


def _cmd_system(conv: Conversation, arg: str) -> None:
    conv.system_prompt = arg.strip() or None
    conv.reset()
    ui.info("(system prompt set; conversation cleared)" if conv.system_prompt else "(system prompt removed)")


def _cmd_stats(conv: Conversation, arg: str) -> None:
    if conv.last_stats:
        ui.print_stats(conv.last_stats)
    session = conv.session
    ui.info(f"context: {len(session.tokens)} of {session.max_context} tokens cached; "
            f"{len(conv.messages)} messages")


def _path(arg: str, command: str) -> Path:
    """The path exactly as typed (only ``~`` expanded)."""
    arg = arg.strip()
    if not arg:
        raise GatedgenError(f"usage: {command} FILE")
    return Path(arg).expanduser()


def _cmd_save(conv: Conversation, arg: str) -> None:
    path = _path(arg, "/save")
    conv.save(path)
    ui.info(f"(saved {len(conv.messages)} messages to {path})")


def _cmd_load(conv: Conversation, arg: str) -> None:
    path = _path(arg, "/load")
    conv.load(path)
    ui.info(f"(loaded {len(conv.messages)} messages from {path})")


def _cmd_help(conv: Conversation, arg: str) -> None:
    ui.info(HELP)


COMMANDS: dict[str, Callable[[Conversation, str], None]] = {
    "/help": _cmd_help, "/?": _cmd_help,
    "/reset": _cmd_reset, "/clear": _cmd_reset,
    "/system": _cmd_system,
    "/set": _cmd_set,
    "/stats": _cmd_stats,
    "/save": _cmd_save,
    "/load": _cmd_load,
}
EXIT = ("/exit", "/bye", "/quit")


def handle(conv: Conversation, line: str) -> bool:
    """Run one slash command; return False to leave. Errors raise GatedgenError (the REPL goes on)."""
    name, _, arg = line.partition(" ")
    if name in EXIT:
        return False
    command = COMMANDS.get(name)
    if command is None:
        ui.warn(f"unknown command {name}; /help lists them")
    else:
        command(conv, arg)
    return True
