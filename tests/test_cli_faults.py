"""Bad input gets one `Error:` line on stderr and exit 1 (click's usage errors: exit 2), never a
traceback; `complete --jsonl`; pipes (`| head`, undecodable stdin, no colors) through real processes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from factory_model import make_checkpoint
from gatedgen.cli import cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("faults"), seed=7)


def invoke(*args, input: str | bytes | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def one_error_line(r, code=1) -> str:
    assert r.exit_code == code, (r.exit_code, r.stderr, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    return lines[0]


def broken_copy(ckpt, tmp_path, name="bad"):
    bad = tmp_path / name
    shutil.copytree(ckpt, bad)
    return bad


def lying_header(path, tensors):
    """A safetensors file whose header claims more data than the file holds."""
    header = {name: {"dtype": "F32", "shape": list(t.shape), "data_offsets": [0, 4 * t.numel() * 1000]}
              for name, t in tensors.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)


def corrupt(kind, ckpt, tmp_path):
    bad = broken_copy(ckpt, tmp_path, kind)
    weights = bad / "model.safetensors"
    if kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "lying_header":
        lying_header(weights, load_file(weights))
    elif kind == "huge_header_length":
        weights.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif kind == "missing_weights":
        weights.unlink()
    elif kind == "pickle_only":
        weights.unlink()
        (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif kind == "wrong_shapes":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["hidden_size"] = 128
        (bad / "config.json").write_text(json.dumps(cfg))
    elif kind == "missing_tensor":
        state = load_file(weights)
        state.pop(sorted(state)[0])
        save_file(state, str(weights))
    elif kind == "missing_tokenizer":
        (bad / "tokenizer.json").unlink()
    elif kind == "corrupt_tokenizer":
        (bad / "tokenizer.json").write_text('{"model": ')
    elif kind == "unknown_model_type":
        cfg = json.loads((bad / "config.json").read_text())
        cfg["model_type"] = "mamba9"
        (bad / "config.json").write_text(json.dumps(cfg))
    elif kind == "config_not_json":
        (bad / "config.json").write_text("{nope")
    return bad


@pytest.mark.parametrize("kind,message", [
    ("truncated", "corrupt or truncated"),
    ("lying_header", "corrupt or truncated"),
    ("huge_header_length", "corrupt or truncated"),
    ("missing_weights", "no model.safetensors"),
    ("pickle_only", "only pickle weights"),
    ("wrong_shapes", "has shape"),
    ("missing_tensor", "missing tensors"),
    ("missing_tokenizer", "no tokenizer.json"),
    ("corrupt_tokenizer", "cannot load"),
    ("unknown_model_type", "unsupported model_type 'mamba9'"),
    ("config_not_json", "config.json"),
])
def test_broken_checkpoints(ckpt, tmp_path, kind, message):
    bad = corrupt(kind, ckpt, tmp_path)
    assert message in one_error_line(invoke("complete", "-m", bad, "-p", "hi", "-n", "2"))


def test_nan_weights_found_by_check(ckpt, tmp_path):
    bad = broken_copy(ckpt, tmp_path)
    state = load_file(bad / "model.safetensors")
    name = sorted(state)[-1]
    state[name] = state[name].clone()
    state[name].view(-1)[3] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    line = one_error_line(invoke("complete", "-m", bad, "-p", "hi", "-n", "2", "--check"))
    assert f"tensor {name} holds NaN or Inf" in line
    inf = broken_copy(ckpt, tmp_path, "inf")
    state[name].view(-1)[3] = float("inf")
    save_file(state, str(inf / "model.safetensors"))
    assert "NaN or Inf" in one_error_line(invoke("chat", "-m", inf, "-n", "2", "--check", input="hi\n"))


def test_prompt_longer_than_context(ckpt):
    long = "the cat sat on the mat " * 40
    line = one_error_line(invoke("complete", "-m", ckpt, "-p", long, "-c", "64", "-n", "4"))
    assert "context holds 64" in line and "--truncate left" in line
    r = invoke("complete", "-m", ckpt, "-p", long, "-c", "64", "-n", "4", "-t", "0", "--ignore-eos",
               "--truncate", "left")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.startswith("Warning: prompt truncated: kept the last 60 of")


@pytest.mark.parametrize("args", [["-p", ""], ["-p", "   "]])
def test_empty_prompt(ckpt, args):
    assert "empty prompt" in one_error_line(invoke("complete", "-m", ckpt, *args), 1)


@pytest.mark.parametrize("option", [["-t", "-0.5"], ["--top-p", "0"], ["--top-p", "1.01"], ["--min-p", "1"],
                                    ["--top-k", "-1"], ["-n", "0"], ["--repetition-penalty", "0"],
                                    ["--truncate", "right"]])
def test_invalid_option_values_are_usage_errors(ckpt, option):
    r = invoke("complete", "-m", ckpt, "-p", "hi", *option)
    assert r.exit_code == 2 and "Invalid value" in r.stderr and "Traceback" not in r.stderr


def test_jsonl(ckpt):
    lines = [
        {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "id": "a"},
        "",
        "not json",
        {"prompt": "Hi", "top_p": 2},
        {"prompt": "Hi", "temprature": 0.5},
        {"prompt": ""},
        {"prompt": "Hello", "max_tokens": 4, "temperature": 0, "stop": ["x", "y"], "seed": 1},
        {"prompt": "The cat " * 100},
        [1, 2],
        {"prompt": "Hi", "max_tokens": 3, "temperature": 0.7, "top_k": 5, "min_p": 0.1, "seed": 4,
         "repetition_penalty": 1.3},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    r = invoke("complete", "--jsonl", "-m", ckpt, "-c", "128", "--ignore-eos", input=text)
    assert r.exit_code == 1 and r.stderr.strip() == 'Error: 6 request line(s) failed (see their "error" fields)'
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == 9  # the blank line has no result
    assert out[0]["id"] == "a" and out[0]["generated_tokens"] == 4 and out[0]["finish_reason"] == "length"
    assert out[0]["prompt_tokens"] > 1
    errors = [o.get("error", "") for o in out]
    assert errors[1].startswith("line 3: invalid JSON")
    assert errors[2].startswith("line 4: top-p")
    assert errors[3].startswith("line 5: unknown field(s) temprature")
    assert errors[4].startswith("line 6: \"prompt\"")
    assert "error" not in out[5] and out[5]["text"] in out[0]["text"]  # greedy; a stop string may cut it
    assert "context holds 128" in errors[6]
    assert errors[7].startswith("line 9: expected a JSON object")
    assert "error" not in out[8] and out[8]["generated_tokens"] == 3
    for o in out:
        assert set(o) >= {"text", "finish_reason", "prompt_tokens", "generated_tokens"}


def test_jsonl_batched_path_matches_sequential(ckpt):
    """The CUDA batch path (forced here on CPU) gives the greedy results of the sequential one."""
    from gatedgen import jsonl, runtime
    from gatedgen.generate import GenerationSettings
    from gatedgen.sampling import SamplingParams

    session = runtime.open_session(str(ckpt), "cpu", "float32", 256).session
    defaults = GenerationSettings(max_tokens=5, sampling=SamplingParams(temperature=0), ignore_eos=True)
    lines = ['{"prompt": "Once upon"}', '{"prompt": "A much longer prompt than the other one"}', "bad",
             '{"prompt": "Hi", "max_tokens": 2}', '{"prompt": "Hi", "max_tokens": 2}']
    results = {}
    for batched in (False, True):
        requests = jsonl.read_requests(lines, session, defaults, "none")
        results[batched] = [res for _, res in jsonl.generate_all(session, requests, batched=batched)]
    assert results[True] == results[False]
    assert [r["generated_tokens"] for r in results[True]] == [5, 5, 0, 2, 2]


def test_chat_piped_template_free_checkpoint_and_stdin_bad_bytes(ckpt):
    r = invoke("chat", "-m", ckpt, "-n", "3", "-t", "0", input=b"caf\xe9 \xff question\n")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == "Warning: stdin held bytes that are not UTF-8; they were replaced by U+FFFD\n"


# --- real processes and pipes ---------------------------------------------------------------------


def run_cli(*args, stdin=b""):
    env = {k: v for k, v in os.environ.items() if k not in ("GATEDGEN_DEBUG", "FORCE_COLOR")}
    return subprocess.run([sys.executable, "-m", "gatedgen", *map(str, args)], input=stdin, capture_output=True,
                          timeout=120, env=env)


def test_head_closes_the_pipe_quietly(ckpt):
    """`gatedgen complete ... | head -c 20`: no traceback, no "Exception ignored" at exit, exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "GATEDGEN_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "gatedgen", "complete", "-m", str(ckpt), "-p", "Once",
                             "-n", "3000", "--ignore-eos", "-c", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    head = proc.stdout.read(20)
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert len(head) == 20
    assert err == b"" and code == 0


def test_undecodable_stdin_and_no_colors_on_pipes(ckpt):
    r = run_cli("complete", "-m", ckpt, "-n", "4", "-t", "0", "--ignore-eos", "--stats",
                stdin=b"Hello \xff\xfe world\n")
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert err.startswith("Warning: stdin held bytes that are not UTF-8; they were replaced by U+FFFD\n")
    assert "\x1b" not in err and "\x1b" not in r.stdout.decode() and "tokens/s" in err


def test_jsonl_through_a_pipe(ckpt):
    requests = b"".join(json.dumps({"prompt": p, "max_tokens": 3, "temperature": 0, "id": i}).encode() + b"\n"
                        for i, p in enumerate(["One", "Two two", "Three three three"]))
    r = run_cli("complete", "--jsonl", "-m", ckpt, "--ignore-eos", stdin=requests)
    assert r.returncode == 0 and r.stderr == b""
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [0, 1, 2]


def test_tensors_are_never_unpickled(ckpt, tmp_path, monkeypatch):
    """Loading goes through safetensors only: a poisoned pickle module changes nothing."""
    import pickle

    from gatedgen import runtime

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    session = runtime.open_session(str(ckpt), "cpu", "float32", 64).session
    assert session.model is not None
