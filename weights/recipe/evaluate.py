"""Step 3: measure the student (and the teacher on the same text) for the model card.

    python weights/recipe/evaluate.py --student weights --teacher models/smollm2 \
        --corpus corpus.jsonl.gz --out metrics.json

Held-out texts are the corpus records split off by data.split (every 50th). Perplexities of the two
models are per their own tokens, so bits per byte (UTF-8) is reported too: it compares across
tokenizers. Gate statistics: per layer and head, the mean log forget gate over the held-out text
and the half-life in tokens it implies (ln 0.5 / mean g). Samples: ten fixed prompts, greedy and
sampled (temperature 0.8, seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import read_records  # noqa: E402

from gatedgen.generate import GenerationSettings, Session, generate_text  # noqa: E402
from gatedgen.loading import load_model  # noqa: E402
from gatedgen.sampling import SamplingParams  # noqa: E402
from gatedgen.tokenizer import Tokenizer  # noqa: E402

PROMPTS = [
    "Once upon a time", "The little rabbit", "One day, Lily went to the park and",
    "Tom was sad because", "The dragon looked at the sky and", "In a small village by the river,",
    "Mia: Can we go to the zoo today?\n", "The robot wanted to learn how to",
    "It was a rainy day, so", "The wise owl said,",
]


@torch.no_grad()
def nll(model, tok: Tokenizer, texts: list[str], device, eot: str | None, max_len: int = 1024):
    """Total negative log-likelihood (nats), predicted tokens and UTF-8 bytes over the texts."""
    total, n_tok, n_bytes = 0.0, 0, 0
    for text in texts:
        ids = tok.encode_plain(text + (eot or ""))[:max_len]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids], device=device)
        logits = model(x)[0, :-1].float()
        total += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        n_tok += len(ids) - 1
        n_bytes += len(tok.decode(ids[1:]).encode("utf-8"))
    return {"perplexity": math.exp(total / n_tok), "bits_per_byte": total / n_bytes / math.log(2),
            "tokens": n_tok, "bytes": n_bytes}


@torch.no_grad()
def gate_stats(model, tok: Tokenizer, texts: list[str], device) -> list[dict]:
    sums: dict[int, torch.Tensor] = {}
    count = [0]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hook(_m, _inp, out, i=i):
            g = F.logsigmoid(out.float()).reshape(-1, out.shape[-1])  # [tokens, HQ]
            sums[i] = sums.get(i, 0) + g.sum(0).cpu()
            if i == 0:
                count[0] += g.shape[0]
        hooks.append(layer.attn.f_proj.register_forward_hook(hook))
    for text in texts:
        model(torch.tensor([tok.encode_plain(text)[:1024]], device=device))
    for h in hooks:
        h.remove()
    rows = []
    for i in sorted(sums):
        mean = sums[i] / count[0]
        rows.append({"layer": i, "mean_log_gate": [round(v, 4) for v in mean.tolist()],
                     "half_life_tokens": [round(math.log(0.5) / v, 1) if v < 0 else float("inf") for v in mean.tolist()]})
    return rows


def samples(model_dir: Path, device: str) -> list[dict]:
    tok = Tokenizer.from_dir(model_dir)
    session = Session(load_model(model_dir, device=device), tok, max_context=512)
    out = []
    for prompt in PROMPTS:
        greedy = generate_text(session, prompt, GenerationSettings(max_tokens=60, sampling=SamplingParams(temperature=0)))
        sampled = generate_text(session, prompt, GenerationSettings(
            max_tokens=60, sampling=SamplingParams(temperature=0.8, top_p=0.95, seed=0)))
        out.append({"prompt": prompt, "greedy": greedy, "sampled": sampled})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", help="student checkpoint (omit to measure the teacher alone)")
    ap.add_argument("--teacher")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-texts", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    held = [r["text"] for i, r in enumerate(read_records(args.corpus)) if i % 50 == 0][: args.max_texts]
    metrics: dict = {"held_out_texts": len(held)}
    if args.student:
        student_tok = Tokenizer.from_dir(Path(args.student))
        student = load_model(args.student, device=device, dtype="float32")
        metrics["student"] = nll(student, student_tok, held, device, "<|endoftext|>")
        metrics["student"]["parameters"] = sum(p.numel() for p in student.parameters())
        metrics["gates"] = gate_stats(student, student_tok, held[:50], device)
        metrics["samples"] = samples(Path(args.student), args.device)
    if args.teacher:
        teacher_tok = Tokenizer.from_dir(Path(args.teacher))
        teacher = load_model(args.teacher, device=device, dtype="float32")
        metrics["teacher"] = nll(teacher, teacher_tok, held, device, None)
        metrics["teacher"]["parameters"] = sum(p.numel() for p in teacher.parameters())
    Path(args.out).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k in ("student", "teacher")}, indent=2))


if __name__ == "__main__":
    main()
