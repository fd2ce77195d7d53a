"""The CLI through real processes and pipes: stdout holds only generated text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from factory_model import make_checkpoint
from gatedgen.tokenizer import Tokenizer
from oracle_fox import FoxOracle


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli"), seed=11)


def gatedgen(*args, stdin: bytes | None = b"", timeout: float = 120):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "gatedgen", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


def test_piped_prompt_greedy_equals_oracle(ckpt):
    # exact fp32 weights on any device (the CPU default is int8 weights, gatedgen/quantize.py,
    # tests/test_quantize.py; the CUDA default bf16, whose greedy path leaves the fp32 oracle's within 20
    # tokens of this random model: seen on the H100, 2026-11-25)
    r = gatedgen("complete", "-m", str(ckpt), "-n", "20", "-t", "0", "--ignore-eos", "-q", "none",
                 "--dtype", "float32", stdin=b"Once upon a time\n")
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.from_dir(ckpt)
    expected = tok.decode(FoxOracle(ckpt).greedy(tok.encode("Once upon a time"), 20))
    assert r.stdout.decode() == expected
    assert r.stderr == b""


def test_prompt_option_stats_on_stderr(ckpt):
    r = gatedgen("complete", "-m", str(ckpt), "-p", "Hello", "-n", "5", "-t", "0", "--stats", "--ignore-eos",
                 stdin=None)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "prompt:" in err and "tokens/s" in err and "time to first token" in err
    assert "tokens/s" not in r.stdout.decode()


def test_piped_and_prompt_combined_and_echo(ckpt):
    both = gatedgen("complete", "-m", str(ckpt), "-p", "world", "-n", "6", "-t", "0", "--ignore-eos", "--echo",
                    stdin=b"Hello\n")
    alone = gatedgen("complete", "-m", str(ckpt), "-p", "Hello\nworld", "-n", "6", "-t", "0", "--ignore-eos",
                     "--echo", stdin=None)
    assert both.returncode == 0 and both.stdout == alone.stdout
    assert both.stdout.decode().startswith("Hello\nworld")


def test_prompt_dash_reads_stdin(ckpt):
    a = gatedgen("complete", "-m", str(ckpt), "-p", "-", "-n", "4", "-t", "0", "--ignore-eos", stdin=b"Hi")
    b = gatedgen("complete", "-m", str(ckpt), "-p", "Hi", "-n", "4", "-t", "0", "--ignore-eos", stdin=None)
    assert a.returncode == 0 and a.stdout == b.stdout


def test_chat_answers_piped_text_once(ckpt):
    r = gatedgen("chat", "-m", str(ckpt), "-n", "8", "-t", "0", stdin=b"What is up?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n")


@pytest.mark.parametrize("args,code,message", [
    (["complete", "-m", "/nonexistent/model", "-p", "hi"], 1, b"Error: /nonexistent/model: no such model directory"),
    (["complete", "-p", "hi", "--top-p", "1.5"], 2, b"--top-p"),
    (["complete", "-p", "hi", "-t", "-1"], 2, b"--temperature"),
    (["complete", "-p", "hi", "--bogus"], 2, b"No such option"),
])
def test_errors_and_exit_codes(args, code, message):
    r = gatedgen(*args, stdin=None)
    assert r.returncode == code
    assert message in r.stderr
    assert b"Traceback" not in r.stderr and r.stdout == b""


def test_empty_prompt_is_an_error(ckpt):
    r = gatedgen("complete", "-m", str(ckpt), stdin=b"   \n")
    assert r.returncode == 1 and b"Error: empty prompt" in r.stderr and b"Traceback" not in r.stderr


def test_corrupt_weights_one_line(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "model.safetensors").write_bytes(b"\x01\x02\x03")
    r = gatedgen("complete", "-m", str(bad), "-p", "hi", stdin=None)
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: model.safetensors")


def test_debug_shows_traceback(ckpt, tmp_path):
    r = gatedgen("complete", "-m", str(tmp_path / "missing"), "-p", "hi", "--debug", stdin=None)
    assert r.returncode != 0 and b"Traceback" in r.stderr


def test_module_entry_point_and_version():
    r = gatedgen("--version", stdin=None)
    assert r.returncode == 0 and b"gatedgen" in r.stdout


def test_kernels_package_is_ours():
    import kernels

    assert getattr(kernels, "GATEDGEN_KERNELS", False) is True
    assert os.path.dirname(os.path.dirname(kernels.__file__)) == os.path.dirname(os.path.dirname(__file__))
