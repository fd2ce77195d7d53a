"""Step 4: the loss-curve figure of the model card from train_log.jsonl (needs matplotlib).

    python weights/recipe/plot_loss.py weights/train_log.jsonl weights/loss_curve.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(log_path: str, out_path: str) -> None:
    rows = [json.loads(line) for line in open(log_path, encoding="utf-8") if line.strip()]
    train = [(r["tokens"] / 1e6, r["loss"]) for r in rows if "loss" in r]
    held = [(r["tokens"] / 1e6, r["held_out_loss"]) for r in rows if "held_out_loss" in r]
    kept = next((r for r in rows if "kept_step" in r), None)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(*zip(*train), lw=0.8, label="train loss")
    ax.plot(*zip(*held), "o-", ms=3, label="held-out loss")
    if kept is not None:
        tokens = next(r["tokens"] for r in rows if r.get("step") == kept["kept_step"] and "tokens" in r) / 1e6
        ax.axvline(tokens, color="gray", ls="--", lw=0.8, label=f"kept (step {kept['kept_step']})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
