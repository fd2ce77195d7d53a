"""An independent implementation of fla's forgetting_transformer forward, for checking gatedgen.

Written from fla's equations (fla/layers/forgetting_attn.py, fla/models/forgetting_transformer)
with none of gatedgen's code: it reads the safetensors file itself, runs in float64, builds the
full T x T score matrix with an explicit gate-sum matrix, and recomputes the whole sequence for
every new token (no cache).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


class FoxOracle:
    def __init__(self, model_dir: Path):
        self.cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {k: v.double() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}

    def _rms(self, x, weight, eps):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    def logits(self, ids: list[int]) -> torch.Tensor:
        c, w = self.cfg, self.w
        C, HQ = c["hidden_size"], c["num_heads"]
        H = c.get("num_kv_heads") or HQ
        D = C // HQ
        eps = c.get("norm_eps", 1e-6)
        T = len(ids)
        x = w["model.embeddings.weight"][torch.tensor(ids)]  # [T, C]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, w[p + "attn_norm.weight"], eps)
            q = h @ w[p + "attn.q_proj.weight"].T
            k = h @ w[p + "attn.k_proj.weight"].T
            v = h @ w[p + "attn.v_proj.weight"].T
            if c.get("qk_norm"):
                # fla's GroupNorm(is_rms_norm=True): RMS over each head's D channels, eps 1e-5
                q = self._rms(q.view(T, HQ, D), w[p + "attn.q_norm.weight"].view(HQ, D), 1e-5).reshape(T, -1)
                k = self._rms(k.view(T, H, D), w[p + "attn.k_norm.weight"].view(H, D), 1e-5).reshape(T, -1)
            f = torch.nn.functional.logsigmoid(h @ w[p + "attn.f_proj.weight"].T + w[p + "attn.f_proj.bias"])
            out = torch.zeros(T, HQ, D, dtype=torch.float64)
            for hq in range(HQ):
                kv = hq // (HQ // H)
                qh, kh, vh = q[:, hq * D:(hq + 1) * D], k[:, kv * D:(kv + 1) * D], v[:, kv * D:(kv + 1) * D]
                gate_sum = torch.zeros(T, T, dtype=torch.float64)
                for a in range(T):  # gate_sum[a, b] = sum of f over (b, a]
                    for b in range(a):
                        gate_sum[a, b] = f[b + 1:a + 1, hq].sum()
                s = qh @ kh.T / math.sqrt(D) + gate_sum
                s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
                out[:, hq] = torch.softmax(s, -1) @ vh
            o = out.reshape(T, C)
            if c.get("use_output_gate"):
                o = o * torch.sigmoid(h @ w[p + "attn.g_proj.weight"].T)
            x = x + o @ w[p + "attn.o_proj.weight"].T
            h = self._rms(x, w[p + "mlp_norm.weight"], eps)
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        x = self._rms(x, w["model.norm.weight"], eps)
        head = w["model.embeddings.weight"] if c.get("tie_word_embeddings") else w["lm_head.weight"]
        return x @ head.T  # [T, V]

    def greedy(self, ids: list[int], n: int) -> list[int]:
        ids, out = list(ids), []
        for _ in range(n):
            nxt = int(self.logits(ids)[-1].argmax())
            out.append(nxt)
            ids.append(nxt)
        return out
