"""End-to-end generation benchmark (``gatedgen bench generate``): ours next to HF transformers and fla.

Per batch size B: a B x P random-token prompt is prefilled (one batched pass, chunked like a
Session), the first token sampled, then N - 1 decode steps (CUDA-graph replays on CUDA), each
handing its tokens to the host as a streamer would. Reported, medians of ``--repeats`` runs after a
warm-up run (graph capture and Triton autotuning happen at start-up, outside the timing):

    ttft_ms      start of the prefill to the first tokens on the host
    decode tok/s B * (N - 1) / decode time (batch total)
    bandwidth    (weight bytes + mean KV-cache bytes read per step) / step time
    prefill tok/s  a separate B=1 pass over a ``--prefill-len`` prompt (cache empty), to logits

With CUDA graphs on, a B=1 prefill into the empty cache replays the prompt's bucket graph
(gatedgen/prefill_graph.py, captured before timing), as a Session's first turn does; the eager
prefill's TTFT and tok/s are then reported too (note column).

Peers (when importable, same config, random weights, same dtype, greedy, HF ``generate`` with a
dynamic cache): ``transformers.LlamaForCausalLM`` for the ungated configs and fla's
``ForgettingTransformerForCausalLM`` for the gated ones; their TTFT is ``generate`` of one token,
their decode rate (N - 1) * B / (t(N) - t(1)), their prefill one forward.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from gatedgen.config import ModelConfig

# 135M-class (docs ../shared/peers.md): hidden 576, 30 layers, 9 heads, 3 KV heads, MLP 1536,
# vocab 49152, tied embeddings. Gated = FoX (forget gate, no RoPE); ungated = Llama (RoPE, no gate).
_BASE = dict(model_type="forgetting_transformer", vocab_size=49152, hidden_size=576, num_hidden_layers=30,
             num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536, tie_word_embeddings=True,
             norm_eps=1e-5)
PRESETS: dict[str, ModelConfig] = {
    "135m": ModelConfig(**_BASE, use_forget_gate=True),
    "135m-nogate": ModelConfig(**_BASE, use_forget_gate=False),  # FoX without its gate: the gate's cost
    "135m-llama": ModelConfig(**{**_BASE, "model_type": "llama"}, use_forget_gate=False, rope_theta=10000.0),
    "tiny": ModelConfig(model_type="forgetting_transformer", vocab_size=512, hidden_size=64, num_hidden_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128, tie_word_embeddings=True),
}


@dataclass
class Row:
    system: str
    config: str
    batch: int
    ttft_ms: float | None = None
    decode_tps: float | None = None
    prefill_tps: float | None = None
    bandwidth_gbs: float | None = None
    note: str = ""
    ttft_eager_ms: float | None = None  # B=1 with graphs on: the same with the eager prefill
    prefill_eager_tps: float | None = None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def random_model(cfg: ModelConfig, device, dtype, seed: int = 0):
    from gatedgen.model import CausalLM

    torch.manual_seed(seed)
    model = CausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("f_proj.bias"):
                p.copy_(torch.linspace(1.0, 6.0, p.numel()))  # slow forgetting on most heads, like trained FoX
            elif p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.to(device=device, dtype=dtype).eval()


def _kv_bytes_per_token(cfg: ModelConfig, dtype) -> int:
    el = torch.empty((), dtype=dtype).element_size()
    per_layer = 2 * cfg.num_kv_heads * cfg.head_dim * el + (4 * cfg.num_heads if cfg.gated else 0)
    return cfg.num_hidden_layers * per_layer


def _graphs_on(device, use_graphs: bool | None) -> bool:
    from gatedgen.engine import graphs_enabled

    device = torch.device(device)
    return graphs_enabled(device) if use_graphs is None else (use_graphs and device.type == "cuda")


def _graph_prefill_applies(model, batch: int, max_len: int, n: int, use_graphs: bool | None) -> bool:
    """A Session would replay a prefill graph for the first chunk of an n-token prompt."""
    from gatedgen.generate import PREFILL_CHUNK
    from gatedgen.prefill_graph import prefill_bucket

    cfg = model.cfg
    return (batch == 1 and _graphs_on(model.output_weight.device, use_graphs)
            and not (cfg.use_k_shift or cfg.use_v_shift) and prefill_bucket(min(n, PREFILL_CHUNK), max_len) is not None)


def _prefill_graphs(model, cache, n: int, use_graphs: bool | None):
    """PrefillGraphs on the empty cache with the bucket of an n-token prompt's first chunk captured
    (None when graphs are off or do not apply)."""
    from gatedgen.generate import PREFILL_CHUNK
    from gatedgen.prefill_graph import PrefillGraphs

    if not _graph_prefill_applies(model, cache.batch_size, cache.max_len, n, use_graphs):
        return None
    graphs = PrefillGraphs(model, cache)
    graphs.prepare(min(n, PREFILL_CHUNK))
    return graphs


@torch.inference_mode()
def _prefill_tps(model, cfg, device, length: int, repeats: int,
                 use_graphs: bool | None = None) -> tuple[float, float | None]:
    """(eager tok/s, graphed tok/s or None) of one B=1 prefill of ``length`` tokens into an empty cache."""
    cache = model.new_cache(1, length + 1)
    x = torch.randint(0, cfg.vocab_size, (1, length), device=device)
    ids = x[0].tolist()

    def tps(prefill) -> float:
        times = []
        for i in range(repeats + 1):
            cache.reset()
            _sync(device)
            t0 = time.perf_counter()
            prefill()
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        return length / statistics.median(times)

    eager = tps(lambda: model(x, cache, mode="prefill", last_only=True))
    cache.reset()  # prefill graphs are captured on an empty cache
    graphs = _prefill_graphs(model, cache, length, use_graphs)
    if graphs is None or not graphs.fits(length):  # beyond the largest bucket: eager only
        return eager, None
    return eager, tps(lambda: graphs.prefill(ids))


@torch.inference_mode()
def bench_ours(model, cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, repeats: int,
               use_graphs: bool | None = None, graph_prefill: bool = True) -> tuple[float, float, float]:
    """(ttft seconds, decode tok/s batch total, bytes read per decode step / step seconds).

    With graphs on and B=1 the first prefill chunk replays a prefill graph (unless ``graph_prefill``
    is False), like a Session's first turn."""
    from gatedgen.engine import Decoder, TokenCopy
    from gatedgen.generate import PREFILL_CHUNK
    from gatedgen.sampling import SamplingParams

    device = model.output_weight.device
    params = SamplingParams(temperature=0)
    cache = model.new_cache(batch, prompt_len + new_tokens + 1)
    decoder = Decoder(model, cache, use_graphs)
    copy = TokenCopy(batch, device)
    sampler = decoder.sampler(params)
    decoder.capture(params)
    graphs = _prefill_graphs(model, cache, prompt_len, use_graphs) if graph_prefill else None
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)
    first = prompt[0, :PREFILL_CHUNK].tolist()
    ttfts, decodes = [], []
    for run in range(repeats + 1):  # run 0: warm-up (autotuning of the prefill shapes)
        cache.reset()
        sampler.reset()
        _sync(device)
        t0 = time.perf_counter()
        for i in range(0, prompt_len, PREFILL_CHUNK):
            if i == 0 and graphs is not None:
                logits = graphs.prefill(first)  # what Session does for the first chunk (from host ids)
            else:
                logits = model(prompt[:, i : i + PREFILL_CHUNK], cache, mode="prefill", last_only=True)[:, -1]
        ids = sampler(logits)
        copy.start(ids).get()
        t1 = time.perf_counter()
        pending = None
        for _ in range(new_tokens - 1):  # as Session.generate: each step queued before the previous token is read
            ids = decoder.step(ids, params)
            if pending is not None:
                pending.get()  # what a streamer needs each step
            pending = copy.start(ids)
        if pending is not None:
            pending.get()
        t2 = time.perf_counter()
        if run:
            ttfts.append(t1 - t0)
            decodes.append(t2 - t1)
    ttft, dec = statistics.median(ttfts), statistics.median(decodes)
    steps = new_tokens - 1
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    mean_len = prompt_len + new_tokens / 2
    kv_bytes = batch * mean_len * _kv_bytes_per_token(cfg, model.output_weight.dtype)
    return ttft, batch * steps / dec, (weight_bytes + kv_bytes) / (dec / steps)


def _hf_model(cfg: ModelConfig, device, dtype):
    """The peer for cfg: fla's FoX for gated configs, HF Llama otherwise (None when not importable)."""
    if cfg.gated:
        try:
            from fla.models import ForgettingTransformerConfig, ForgettingTransformerForCausalLM
        except Exception as e:  # noqa: BLE001 - optional peer
            return None, f"fla: {e.__class__.__name__}"
        hf = ForgettingTransformerConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers, num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
            tie_word_embeddings=cfg.tie_word_embeddings, norm_eps=cfg.norm_eps, bos_token_id=0, eos_token_id=1,
            pad_token_id=0)
        name, make = "fla FoX (HF generate)", ForgettingTransformerForCausalLM
    else:
        try:
            from transformers import LlamaConfig, LlamaForCausalLM
        except Exception as e:  # noqa: BLE001
            return None, f"transformers: {e.__class__.__name__}"
        hf = LlamaConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
            intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
            tie_word_embeddings=cfg.tie_word_embeddings, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta or 10000.0, bos_token_id=0, eos_token_id=1, pad_token_id=0)
        name, make = "HF Llama (generate, eager)", LlamaForCausalLM
    torch.manual_seed(0)
    model = make(hf).to(device=device, dtype=dtype).eval()
    return model, name


@torch.inference_mode()
def bench_hf(model, cfg, batch, prompt_len, new_tokens, repeats, prefill_len, device):
    prompt = torch.randint(2, cfg.vocab_size, (batch, prompt_len), device=device)
    mask = torch.ones_like(prompt)

    def gen(n):
        _sync(device)
        t0 = time.perf_counter()
        model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=0)
        _sync(device)
        return time.perf_counter() - t0

    gen(2)  # warm-up
    t1 = statistics.median(gen(1) for _ in range(repeats))
    tn = statistics.median(gen(new_tokens) for _ in range(max(1, repeats // 2)))
    if not prefill_len:
        return t1, batch * (new_tokens - 1) / max(tn - t1, 1e-9), None
    x = torch.randint(2, cfg.vocab_size, (1, prefill_len), device=device)
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        model(x, use_cache=False)
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return t1, batch * (new_tokens - 1) / max(tn - t1, 1e-9), prefill_len / statistics.median(times)


def run(configs: list[str], batches: list[int], prompt_len: int, new_tokens: int, prefill_len: int,
        dtype: str = "bfloat16", device: str | None = None, repeats: int = 3, peers: bool = True,
        use_graphs: bool | None = None, model_dir: str | None = None, log=print) -> list[Row]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype)
    rows: list[Row] = []
    for name in configs:
        if model_dir:
            from gatedgen.loading import load_model

            model = load_model(model_dir, dtype=dtype, device=torch.device(device))
            cfg, name = model.cfg, f"{name}:{model_dir}"
        else:
            cfg = PRESETS[name]
            model = random_model(cfg, device, dt)
        if device == "cuda" and os.environ.get("GATEDGEN_NO_FUSE", "0") != "1":
            from gatedgen.engine import fuse_projections

            fuse_projections(model)  # as a Session's Decoder does before anything runs
        prefill_eager, prefill_graph = _prefill_tps(model, cfg, device, prefill_len, repeats, use_graphs)
        for b in batches:
            ttft, dec, bw = bench_ours(model, cfg, b, prompt_len, new_tokens, repeats, use_graphs)
            row = Row("gatedgen", name, b, ttft * 1e3, dec, None, bw / 1e9)
            if b == batches[0]:
                row.prefill_tps = prefill_graph or prefill_eager
                row.prefill_eager_tps = prefill_eager if prefill_graph else None
            if _graph_prefill_applies(model, b, prompt_len + new_tokens + 1, prompt_len, use_graphs):
                ttft_eager, _, _ = bench_ours(model, cfg, b, prompt_len, new_tokens, repeats, use_graphs,
                                              graph_prefill=False)
                row.ttft_eager_ms = ttft_eager * 1e3
            rows.append(row)
            log(rows[-1])
        del model
        if peers and device == "cuda" and (cfg.gated or cfg.rope_theta is not None):  # fla FoX / HF Llama
            hf, label = _hf_model(cfg, device, dt)
            if hf is None:
                rows.append(Row(label, name, 0, note="not importable"))
                log(rows[-1])
            else:
                for b in batches:
                    try:
                        t1, dec, pf = bench_hf(hf, cfg, b, prompt_len, new_tokens, max(1, repeats - 1),
                                               prefill_len if b == batches[0] else 0, device)
                        rows.append(Row(label, name, b, t1 * 1e3, dec, pf))
                    except Exception as e:  # noqa: BLE001 - a failing peer must not lose our numbers
                        rows.append(Row(label, name, b, note=f"failed: {e.__class__.__name__}: {str(e)[:80]}"))
                    log(rows[-1])
                del hf
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_table(rows: list[Row]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| system | config | batch | TTFT ms | decode tok/s | prefill tok/s | GB/s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = [r.note] if r.note else []
        if r.ttft_eager_ms is not None or r.prefill_eager_tps is not None:  # graphed prefill above
            note.append(f"eager prefill: TTFT {f(r.ttft_eager_ms, '.2f')} ms, {f(r.prefill_eager_tps, ',.0f')} tok/s")
        lines.append(f"| {r.system} | {r.config} | {r.batch or '-'} | {f(r.ttft_ms, '.2f')} | "
                     f"{f(r.decode_tps, ',.0f')} | {f(r.prefill_tps, ',.0f')} | {f(r.bandwidth_gbs, ',.0f')} | "
                     f"{'; '.join(note)} |")
    return "\n".join(lines)


__all__ = ["PRESETS", "Row", "format_table", "random_model", "run"]


@torch.inference_mode()
def replay_step_us(model, batch: int, context: int = 192, reps: int = 100) -> float:
    """GPU time (us) of one CUDA-graph-replayed greedy decode step at ``context`` cached tokens
    (replays back to back, no host sync between them: kernel time without the host)."""
    from gatedgen.engine import Decoder
    from gatedgen.sampling import SamplingParams

    params = SamplingParams(temperature=0)
    cache = model.new_cache(batch, context + reps + 16)
    cache.seqlens.fill_(context)
    cache.lengths = [context] * batch
    decoder = Decoder(model, cache)
    decoder.sampler(params)
    decoder.capture(params)
    graph = decoder._graphs[next(iter(decoder._graphs))].graph
    for _ in range(5):
        graph.replay()
    cache.seqlens.fill_(context)
    return graph_replay_us(graph, reps)


def graph_replay_us(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """GPU time (us) of one replay of ``graph``, from ``reps`` back-to-back replays between two events."""
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        graph.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / reps * 1e3
