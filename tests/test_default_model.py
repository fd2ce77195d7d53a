"""The shipped default model in weights/: used without --model, a real gated model, small."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gatedgen.loading import load_model
from gatedgen.runtime import DEFAULT_MODEL_DIR, resolve_model_dir
from gatedgen.tokenizer import Tokenizer

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def test_weights_dir_is_the_default_and_small():
    assert resolve_model_dir(None) == DEFAULT_MODEL_DIR == WEIGHTS
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total < 50 * 2**20


def test_complete_without_model_option():
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    r = subprocess.run([sys.executable, "-m", "gatedgen", "complete", "-p", "Once upon a time", "-n", "20",
                        "-t", "0"], capture_output=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    words = text.split()
    assert len(words) >= 8 and sum(w.strip(".,!?\"'").isalpha() for w in words) >= 0.8 * len(words)


def test_gated_and_some_heads_forget():
    model = load_model(WEIGHTS)
    assert model.cfg.use_forget_gate
    tok = Tokenizer.from_dir(WEIGHTS)
    ids = torch.tensor([tok.encode("Once upon a time, there was a little rabbit who lived in the forest. "
                                   "One day, the rabbit found a red ball and said, \"I will share it.\"")])
    half_lives = []
    for layer in model.model.layers:
        captured = {}
        hook = layer.attn.f_proj.register_forward_hook(lambda m, i, o: captured.setdefault("f", o))
        model(ids)
        hook.remove()
        g = F.logsigmoid(captured["f"].float()).mean(dim=(0, 1))  # [HQ] mean log gate
        half_lives += [math.log(0.5) / v for v in g.tolist()]
    assert min(half_lives) < 3 and max(half_lives) > 10  # local heads and long-memory heads
