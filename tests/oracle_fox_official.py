"""An independent float64 implementation of the official FoX release (LLaMA and Pro variants).

Written from the paper's equations (Lin et al., 2025, "Forgetting Transformer", sections 2-3 and
the Pro block of appendix) and the release's key names, with none of gatedgen's code. Two ways to
run it:

* ``logits(ids)``: the whole sequence at once, with an explicit T x T decay matrix
  D_ij = sum_{l=j+1..i} log f_l.
* ``Decoder``: token by token, keeping per layer the keys and values so far, the log-gate sum, and
  the shift state (the previous token's pre-mix k~, v~), as a recurrent decoder would.

Pro attention per head h, for token t with block input x_t:
    q_t = RMSNorm(W_q x_t)                           (norm weight [D] shared across heads)
    k~_t = W_k x_t,  a_t = sigmoid(w^k_h . x_t),  k_t = RMSNorm(a_t k~_{t-1} + (1 - a_t) k~_t)
    v~_t = W_v x_t,  b_t = sigmoid(w^v_h . x_t),  v_t = b_t v~_{t-1} + (1 - b_t) v~_t
    (k~_{-1} = v~_{-1} = 0), optional RoPE on q, k (rotate-half), log f_t = logsigmoid(w_f . x_t + b_f)
    o_i = sum_j softmax_j(q_i . k_j / sqrt(D) + D_ij) v_j
    y_t = W_o(RMSNorm_head(o_t) * sigmoid(W_g x_t))
MLP: W_down(silu(g) * u) with [g; u] = W_gate_up x (one fused [2I, C] matrix, gate first).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

QK_EPS = 1e-5


class OfficialFoxOracle:
    def __init__(self, model_dir: Path):
        self.c = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {k: v.double() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}
        c = self.c
        self.C, self.H = c["hidden_size"], c["num_heads"]
        self.D = self.C // self.H
        self.eps = c.get("norm_eps", 1e-6)

    # --- pieces -----------------------------------------------------------------------------------

    @staticmethod
    def rms(x, weight, eps):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    def heads_rms(self, x, weight, eps):  # x [..., H*D]; weight [D] or [H*D]
        xs = x.reshape(*x.shape[:-1], self.H, self.D)
        w = weight.reshape(-1, self.D)
        return self.rms(xs, w, eps).reshape(x.shape)

    def rope(self, x, pos):  # x [..., H*D] at integer position pos
        if not self.c.get("use_rope"):
            return x
        D = self.D
        inv = 1.0 / (self.c.get("rope_base", 500000.0) ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = pos * inv
        cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
        xs = x.reshape(self.H, D)
        rot = torch.cat([-xs[:, D // 2:], xs[:, : D // 2]], -1)
        return (xs * cos + rot * sin).reshape(-1)

    def project(self, p, h, prev_k, prev_v):
        """q, k, v, log f, new (k~, v~) for one token's normed input h [C]."""
        c, w = self.c, self.w
        q = w[p + "attn.q_proj.weight"] @ h
        shift_k, shift_v = c.get("use_k_shift"), c.get("use_v_shift")
        kt = w[p + ("attn.k_proj.linear.weight" if shift_k else "attn.k_proj.weight")] @ h
        vt = w[p + ("attn.v_proj.linear.weight" if shift_v else "attn.v_proj.weight")] @ h
        k, v = kt, vt
        if shift_k:
            a = torch.sigmoid(w[p + "attn.k_proj.shift_proj.weight"] @ h).repeat_interleave(self.D)
            k = a * prev_k + (1 - a) * kt
        if shift_v:
            b = torch.sigmoid(w[p + "attn.v_proj.shift_proj.weight"] @ h).repeat_interleave(self.D)
            v = b * prev_v + (1 - b) * vt
        if c.get("qk_norm"):
            q = self.heads_rms(q, w[p + "attn.q_norm.weight"], QK_EPS)
            k = self.heads_rms(k, w[p + "attn.k_norm.weight"], QK_EPS)
        if c.get("fgate_type", "full") == "full":
            fgate = w[p + "attn.fgate_proj.weight"] @ h + w[p + "attn.fgate_proj.bias"]
            logf = torch.nn.functional.logsigmoid(fgate)
        else:
            logf = torch.zeros(self.H, dtype=torch.float64)
        return q, k, v, logf, (kt, vt)

    def attend(self, q, ks, vs, decay):
        """o [C] for query q against keys/values [n, C] with per-head decay bias [n, H]."""
        out = []
        for hh in range(self.H):
            sl = slice(hh * self.D, (hh + 1) * self.D)
            s = ks[:, sl] @ q[sl] / math.sqrt(self.D) + decay[:, hh]
            out.append(torch.softmax(s, 0) @ vs[:, sl])
        return torch.cat(out)

    def finish_attn(self, p, h, o):
        c, w = self.c, self.w
        if c.get("use_output_norm"):
            o = self.heads_rms(o, w[p + "attn.output_norm.weight"], self.eps)
        if c.get("use_output_gate"):
            g = w[p + "attn.ogate_proj.weight"] @ h
            o = o * (torch.sigmoid(g) if c.get("ogate_act", "sigmoid") == "sigmoid" else g * torch.sigmoid(g))
        return w[p + "attn.o_proj.weight"] @ o

    def mlp(self, p, x):
        w = self.w
        h = self.rms(x, w[p + "mlp_norm.weight"], self.eps)
        gate, up = (w[p + "mlp.gate_proj.weight"] @ h).chunk(2)
        return w[p + "mlp.down_proj.weight"] @ (gate * torch.sigmoid(gate) * up)

    def head(self, x):
        w = self.w
        x = self.rms(x, w["model.norm.weight"], self.eps)
        out = w["model.embeddings.weight"] if self.c.get("tie_word_embeddings") else w["lm_head.weight"]
        return out @ x

    # --- whole sequence ---------------------------------------------------------------------------

    def logits(self, ids: list[int]) -> torch.Tensor:  # [T, V]
        w, T = self.w, len(ids)
        xs = [w["model.embeddings.weight"][i] for i in ids]
        for layer in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            hs = [self.rms(x, w[p + "attn_norm.weight"], self.eps) for x in xs]
            zero = torch.zeros(self.C, dtype=torch.float64)
            prev_k = prev_v = zero
            qs, ks, vs, fs = [], [], [], []
            for t, h in enumerate(hs):
                q, k, v, f, (prev_k, prev_v) = self.project(p, h, prev_k, prev_v)
                qs.append(self.rope(q, t)), ks.append(self.rope(k, t)), vs.append(v), fs.append(f)
            K, V, F = torch.stack(ks), torch.stack(vs), torch.stack(fs)  # [T, C], [T, C], [T, H]
            new = []
            for i in range(T):
                decay = torch.stack([F[j + 1 : i + 1].sum(0) for j in range(i + 1)])  # [i+1, H]
                o = self.attend(qs[i], K[: i + 1], V[: i + 1], decay)
                x = xs[i] + self.finish_attn(p, hs[i], o)
                new.append(x + self.mlp(p, x))
            xs = new
        return torch.stack([self.head(x) for x in xs])


class Decoder:
    """The oracle run token by token with explicit recurrent state (no recomputation)."""

    def __init__(self, oracle: OfficialFoxOracle):
        self.o = oracle
        L, C = oracle.c["num_hidden_layers"], oracle.C
        self.keys = [[] for _ in range(L)]
        self.values = [[] for _ in range(L)]
        self.gate_sums = [[] for _ in range(L)]  # cumulative log f up to each position
        self.shift = [(torch.zeros(C, dtype=torch.float64),) * 2 for _ in range(L)]
        self.t = 0

    def step(self, token: int) -> torch.Tensor:  # [V]
        o, w = self.o, self.o.w
        x = w["model.embeddings.weight"][token]
        for layer in range(o.c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = o.rms(x, w[p + "attn_norm.weight"], o.eps)
            q, k, v, f, self.shift[layer] = o.project(p, h, *self.shift[layer])
            sums = self.gate_sums[layer]
            sums.append((sums[-1] if sums else torch.zeros_like(f)) + f)
            self.keys[layer].append(o.rope(k, self.t))
            self.values[layer].append(v)
            S = torch.stack(sums)
            decay = S[-1][None] - S  # sum over (j, t] = cum_t - cum_j
            keys, values = torch.stack(self.keys[layer]), torch.stack(self.values[layer])
            out = o.attend(o.rope(q, self.t), keys, values, decay)
            x = x + o.finish_attn(p, h, out)
            x = x + o.mlp(p, x)
        self.t += 1
        return o.head(x)
