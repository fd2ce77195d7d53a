"""Step 2: train the student tokenizer and the FoX model on the corpus; write a gatedgen checkpoint.

    python weights/recipe/train.py --corpus corpus.jsonl.gz --out weights --steps 1500

On CUDA the attention runs gatedgen's Triton parallel kernel (forward and backward, autograd through
q, k, v and the forget gates); the rest is the model's own PyTorch code under bf16 autocast.
Writes into --out: config.json, sharded bf16 safetensors, tokenizer files, train_log.jsonl
(loss per step, held-out loss every --eval-every steps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import read_records, split, token_stream, train_tokenizer, write_tokenizer_files  # noqa: E402

from gatedgen.attention import get_backend  # noqa: E402
from gatedgen.config import ModelConfig  # noqa: E402
from gatedgen.loading import save_model  # noqa: E402
from gatedgen.model import CausalLM  # noqa: E402


def student_config(vocab_size: int, args) -> ModelConfig:
    return ModelConfig(
        model_type="forgetting_transformer", vocab_size=vocab_size, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_heads=args.heads, num_kv_heads=args.heads,
        head_dim=args.hidden // args.heads, intermediate_size=args.mlp, use_forget_gate=True,
        qk_norm=True, use_output_gate=True, tie_word_embeddings=True, norm_eps=1e-6,
        max_position_embeddings=args.context, eos_token_id=[0],
    )


def init_weights(model: CausalLM, layers: int) -> None:
    """Normal(0.02) init, output projections scaled by 1/sqrt(2 * layers); forget-gate biases spread
    over [1, 5] across heads so some heads start with long memory and others local."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            torch.nn.init.ones_(p)
        elif name.endswith("f_proj.bias"):
            with torch.no_grad():
                p.copy_(torch.linspace(1.0, 5.0, p.numel()))
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        else:
            std = 0.02 / math.sqrt(2 * layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, std=std)


def batches(tokens: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, tokens.numel() - seq - 1, (batch,), generator=gen)
        rows = torch.stack([tokens[s : s + seq + 1] for s in starts.tolist()])  # [B, seq + 1]
        yield rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def held_out_loss(model: CausalLM, tokens: torch.Tensor, seq: int, device, max_windows: int = 64) -> float:
    model.eval()
    n = min(max_windows, (tokens.numel() - 1) // seq)
    losses = []
    for i in range(n):
        chunk = tokens[i * seq : i * seq + seq + 1].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(chunk[None, :-1])
        losses.append(F.cross_entropy(logits[0].float(), chunk[1:]).item())
    model.train()
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--mlp", type=int, default=1024)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seconds", type=float, default=1e9,
                    help="time budget: the learning-rate schedule ends (and training stops) after this long")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep-best", action="store_true",
                    help="save the weights of the best held-out loss seen (checked every --eval-every steps)")
    ap.add_argument("--attn-backend", default="auto", choices=["auto", "reference"],
                    help="auto: the Triton parallel kernel on CUDA; reference: plain PyTorch")
    args = ap.parse_args()

    out = Path(args.out)
    device = torch.device(args.device)
    torch.manual_seed(0)
    train_docs, held_docs = split(read_records(args.corpus))
    tok = train_tokenizer(train_docs, args.vocab)
    write_tokenizer_files(tok, out)
    train_tokens = torch.tensor(list(token_stream(tok, train_docs)), dtype=torch.long)
    held_tokens = torch.tensor(list(token_stream(tok, held_docs)), dtype=torch.long)
    print(f"corpus: {len(train_docs)} train docs / {train_tokens.numel()} tokens, "
          f"{len(held_docs)} held-out docs / {held_tokens.numel()} tokens", flush=True)

    cfg = student_config(tok.get_vocab_size(), args)
    cfg.eos_token_id = [tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")]
    model = CausalLM(cfg, get_backend(args.attn_backend)).to(device)
    init_weights(model, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"student: {n_params / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    def lr_factor(step: int, progress: float) -> float:
        """Linear warm-up, then cosine decay to 0 over the run (steps or seconds, whichever ends first)."""
        return min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    log = (out / "train_log.jsonl").open("w")
    data = batches(train_tokens, args.batch, args.seq, torch.Generator().manual_seed(1))
    start = time.time()
    best: tuple[float, int, dict | None] = (float("inf"), -1, None)
    for step in range(args.steps):
        progress = max(step / args.steps, (time.time() - start) / args.seconds)
        if progress >= 1.0:
            print(f"budget reached at step {step}", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, progress)
        x, y = (t.to(device, non_blocking=True) for t in next(data))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        record = {"step": step, "loss": round(loss.item(), 4), "tokens": (step + 1) * args.batch * args.seq,
                  "seconds": round(time.time() - start, 1), "lr": opt.param_groups[0]["lr"]}
        if (step + 1) % args.eval_every == 0:
            record["held_out_loss"] = round(held_out_loss(model, held_tokens, args.seq, device), 4)
            if args.keep_best and record["held_out_loss"] < best[0]:
                best = (record["held_out_loss"], step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            print(json.dumps(record), flush=True)
        log.write(json.dumps(record) + "\n")
    final = {"step": step, "final_held_out_loss": round(held_out_loss(model, held_tokens, args.seq, device), 4)}
    if args.keep_best and best[2] is not None and best[0] < final["final_held_out_loss"]:
        model.load_state_dict(best[2])
        final.update(kept_step=best[1], kept_held_out_loss=best[0])
    print(json.dumps(final), flush=True)
    log.write(json.dumps(final) + "\n")
    log.close()
    save_model(model, out, dtype=torch.bfloat16, max_shard_bytes=15 * 2**20)
    print(f"saved to {out} after {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
