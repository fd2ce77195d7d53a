"""Chat formatting: the checkpoint's Jinja ``chat_template`` rendered in a sandbox.

The template is data from the checkpoint, so it runs in jinja2's immutable sandbox: it cannot
reach Python internals or change objects it is given. Checkpoints without a template get a plain
"User:/Assistant:" fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gatedgen.errors import GatedgenError

FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Markers that end a turn in common templates; those present in the template become stop strings.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")


@dataclass
class Message:
    role: str  # "system", "user" or "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _raise(message: str) -> None:
    raise GatedgenError(f"chat template: {message}")


class ChatFormatter:
    def __init__(self, template: str | None, bos_token: str | None = None, eos_token: str | None = None):
        self.is_fallback = not template
        self.source = template or FALLBACK_TEMPLATE
        self.bos_token, self.eos_token = bos_token or "", eos_token or ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise GatedgenError(f"chat template does not parse: {e}") from None

    @property
    def stop_strings(self) -> list[str]:
        """End-of-turn markers the template writes; the fallback stops where the next user turn would."""
        if self.is_fallback:
            return ["\nUser:"]
        stops = [m for m in END_OF_TURN_MARKERS if m in self.source]
        if self.eos_token and self.eos_token not in stops and self.eos_token in self.source:
            stops.append(self.eos_token)
        return stops

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(
                messages=[m.as_dict() for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except GatedgenError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise GatedgenError(f"chat template tried something unsafe and was stopped: {e}") from None
        except Exception as e:  # template bugs surface as many exception types
            raise GatedgenError(f"chat template failed: {e.__class__.__name__}: {e}") from None
