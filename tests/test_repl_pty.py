"""The chat REPL driven through a real terminal (a pseudo-terminal): keys in, screen text out.

One long session covers history, multi-line input, slash commands and Ctrl-C during a reply;
a second checks that Ctrl-C at the prompt leaves with exit code 130.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import subprocess
import sys
import termios
import time

import pytest

from factory_model import make_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pty tests need Linux")

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>])")


class Terminal:
    """A child process on a pty with a controlling terminal, so Ctrl-C sends SIGINT."""

    def __init__(self, args: list[str], env: dict[str, str]):
        master, slave = os.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.screen = ""  # everything shown so far, escape sequences removed
        self.mark = 0  # expect() searches after this point

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child closed the terminal
            return False
        if not data:
            return False
        self.screen += ANSI.sub("", data.decode("utf-8", errors="replace")).replace("\r", "")
        return True

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """Wait for ``pattern`` (a regex) after the last match; move past it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.screen, self.mark)
            if m:
                self.mark = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.5)) and self.proc.poll() is not None):
                if m := regex.search(self.screen, self.mark):
                    self.mark = m.end()
                    return m
                raise AssertionError(f"{pattern!r} not shown; screen after mark:\n{self.screen[self.mark:][-3000:]}")

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05):
            pass
        if self.proc.poll() is None:
            raise AssertionError(f"still running after {timeout} s; screen:\n{self.screen[-3000:]}")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory):
    """No chat template: the fallback template's only stop string is "\\nUser:", so with
    --ignore-eos a reply runs until max_tokens (long enough to interrupt)."""
    root = make_checkpoint(tmp_path_factory.mktemp("pty"), seed=5)
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    return root


def start(ckpt, state_dir, *extra) -> Terminal:
    env = {**os.environ, "XDG_STATE_HOME": str(state_dir), "TERM": "xterm", "COLUMNS": "200", "LINES": "50",
           "PYTHONIOENCODING": "utf-8"}
    env.pop("GATEDGEN_DEBUG", None)
    args = [sys.executable, "-m", "gatedgen", "chat", "-m", str(ckpt), "-t", "0", "-c", "8192", "-n", "12",
            "--ignore-eos", *extra]
    return Terminal(args, env)


def test_repl_session_in_a_terminal(plain_ckpt, tmp_path):
    history = tmp_path / "state" / "gatedgen" / "history"
    history.parent.mkdir(parents=True)
    history.write_text("/set top_k 7\n")  # from an earlier session
    saved = tmp_path / "chat.json"
    term = start(plain_ckpt, tmp_path / "state")
    try:
        term.expect(r"Ctrl-D to leave")
        term.expect(r">>> ")
        # history from the file: Up recalls the earlier session's line
        term.send("\x1b[A\r")
        term.expect(r"\(top_k = 7\)")
        term.expect(r">>> ")
        term.line("/help")
        term.expect(r"/save FILE")
        term.line("/set temperature -1")
        term.expect(r"Error: temperature must be >= 0")
        term.line("/set top_p 0")
        term.expect(r"Error: top-p must be in \(0, 1\]")
        term.line("/set max_tokens 6")
        term.expect(r"\(max_tokens = 6\)")
        # multi-line input: triple quotes, then trailing backslashes
        term.line('"""first line')
        term.expect(r"\.\.\. ")
        term.line('second line"""')
        term.expect(r">>> ")
        term.line("one \\")
        term.expect(r"\.\.\. ")
        term.line("two")
        term.expect(r">>> ")
        term.line(f"/save {saved}")
        term.expect(r"\(saved 4 messages")
        # Ctrl-C during a long reply stops only the reply
        term.line("/set max_tokens 100000")
        term.expect(r">>> ")
        term.line("tell me a long story")
        time.sleep(1.0)  # the reply is streaming (it would take far longer to finish)
        term.send("\x03")
        term.expect(r"\(interrupted\)")
        term.expect(r">>> ")
        term.line("/set max_tokens 4")
        term.expect(r">>> ")
        term.line("and then?")
        term.expect(r">>> ")
        term.line("/stats")
        m = term.expect(r"prompt: (\d+) tokens.*\n.*\n.*\ncontext: (\d+) of 8192 tokens cached; (\d+) messages")
        prompt, cached, messages = map(int, m.groups())
        assert messages == 8  # the interrupted reply stayed in the history
        # the next turn reused the cached prefix (how much depends on whether the random model's
        # tokens re-encode to themselves; test_repl.py checks the reuse exactly)
        assert cached > 60 and prompt < cached - 4
        term.line("/save /nonexistent-dir/x.json")
        term.expect(r"Error: cannot write /nonexistent-dir/x.json")
        term.line("/bogus")
        term.expect(r"unknown command /bogus")
        term.expect(r">>> ")
        term.send("\x04")  # Ctrl-D leaves with 0
        assert term.wait() == 0
    finally:
        term.close()
    assert "Traceback" not in term.screen
    data = json.loads(saved.read_text())
    contents = [m["content"] for m in data["messages"] if m["role"] == "user"]
    assert contents == ["first line\nsecond line", "one \ntwo"]
    lines = history.read_text().splitlines()
    assert lines[0] == "/set top_k 7" and "/help" in lines and "tell me a long story" in lines


def test_ctrl_c_at_prompt_exits_130(plain_ckpt, tmp_path):
    term = start(plain_ckpt, tmp_path / "state")
    try:
        term.expect(r">>> ")
        term.line("hello")
        term.expect(r">>> ")
        # a SIGINT that lands before readline waits for keys is only seen at the next key (CPython's
        # readline checks signals when select() is interrupted): a person is never that fast
        time.sleep(0.5)
        term.send("\x03")
        assert term.wait() == 130
    finally:
        term.close()
    assert "Traceback" not in term.screen
    assert (tmp_path / "state" / "gatedgen" / "history").read_text().splitlines() == ["hello"]
