"""Soak: generated tokens in one chat (tiny model, small context so that old turns get dropped
again and again) without memory growth beyond the preallocated cache.

The full 10k-token run takes 1-3 minutes on 2 CPU cores; it runs in the default suite (and in CI)
and can be skipped locally with ``GATEDGEN_SKIP_SLOW=1``; a 500-token version runs first.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

import pytest

from factory_model import make_checkpoint
from gatedgen import runtime
from gatedgen.generate import GenerationSettings
from gatedgen.repl import Conversation
from gatedgen.sampling import SamplingParams


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("total", [
    500,
    pytest.param(10_000, marks=[pytest.mark.slow, pytest.mark.skipif(
        os.environ.get("GATEDGEN_SKIP_SLOW") == "1", reason="1-3 minutes on CPU (GATEDGEN_SKIP_SLOW=1)")]),
])
def test_chat_soak_no_memory_growth(tmp_path, capsys, total):
    ckpt = make_checkpoint(tmp_path / "soak", seed=2)
    context, per_turn = (512, 200) if total > 5000 else (128, 50)
    session = runtime.open_session(str(ckpt), "cpu", "float32", context).session
    settings = GenerationSettings(max_tokens=per_turn, sampling=SamplingParams(temperature=0.9, seed=0), ignore_eos=True)
    conv = Conversation(session, settings, "You are a soak test.")
    conv.settings.stop, conv.settings.stop_token_ids = [], []  # every turn runs to max_tokens

    generated, turn, start = 0, 0, time.monotonic()
    rss_after_warmup = traced_after_warmup = None
    while generated < total:
        for _ in conv.reply(f"turn {turn}: go on"):
            pass
        generated += conv.last_stats.generated_tokens
        turn += 1
        if turn == 4:  # caches, allocator pools and the dropped-turn path are warm
            gc.collect()
            rss_after_warmup = rss_kib()
            tracemalloc.start()
            traced_after_warmup = tracemalloc.get_traced_memory()[0]
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced_after_warmup
    tracemalloc.stop()
    rss_growth = rss_kib() - rss_after_warmup
    elapsed = time.monotonic() - start
    assert "dropped the" in capsys.readouterr().err  # the context really overflowed
    assert len(conv.messages) < 12 and len(session.tokens) <= context
    assert traced < 2 * 2**20, f"Python heap grew by {traced / 2**20:.1f} MiB over {generated} tokens"
    assert rss_growth < 40 * 1024, f"RSS grew by {rss_growth / 1024:.1f} MiB over {generated} tokens"
    print(f"soak: {generated} tokens in {turn} turns, {elapsed:.1f} s; heap +{traced / 1024:.0f} KiB, "
          f"RSS +{rss_growth / 1024:.1f} MiB")
