"""Session 11: (1) the half last block on/off (graph-replayed kernel, beside SDPA); (2) host time by piece."""
import time
import torch, torch.nn.functional as F
import triton
from kernels.attn import parallel_hopper
from kernels.attn.parallel import parallel_attn, _gate_sums, parallel_attn_fwd

dev = "cuda"
a = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
t = time.perf_counter()
while time.perf_counter() - t < 1.5:
    a @ a
torch.cuda.synchronize()
print("graph-replayed forward kernel TFLOP/s, half last block off / on, SDPA beside", flush=True)
for (B, T, HQ, D) in [(16, 1024, 32, 64), (16, 1024, 16, 128), (4, 4096, 32, 64), (4, 4096, 16, 128), (1, 16384, 32, 64)]:
    q = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(B, T, HQ, device=dev) + 4)
    gc, gct = _gate_sums(g, None, None, rows=True)
    o = torch.empty_like(q)
    lse = torch.empty(B, T, HQ, device=dev)
    fl = 2.0 * B * HQ * T * T * D
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    sd = fl / triton.testing.do_bench_cudagraph(lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True), rep=100) / 1e9
    res = {}
    for rep in range(2):
        for half in (False, True):
            parallel_hopper._HALF = half
            for name, rows in (("g", gct), ("u", None)):
                parallel_hopper.parallel_attn_fwd_hopper(q, k, v, rows, D ** -0.5, o, lse)
                ms = triton.testing.do_bench_cudagraph(
                    lambda: parallel_hopper.parallel_attn_fwd_hopper(q, k, v, rows, D ** -0.5, o, lse), rep=100)
                res.setdefault((name, half), []).append(fl / ms / 1e9)
    parallel_hopper._HALF = True
    line = f"{HQ}x{D} T={T}: SDPA {sd:.0f}"
    for name in ("g", "u"):
        off, on = max(res[(name, False)]), max(res[(name, True)])
        line += f" | {name}: off {off:.0f} ({off / sd:.3f}) on {on:.0f} ({on / sd:.3f}) gain {on / off - 1:+.3f}"
    print(line, flush=True)

def host_us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    return min(best)

B, T, HQ, D = 1, 128, 16, 128
q = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(B, T, HQ, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
g = F.logsigmoid(torch.randn(B, T, HQ, device=dev) + 4).requires_grad_(True)
qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v))
qd, kd, vd, gd = (x.detach() for x in (q, k, v, g))
gc, gct = _gate_sums(gd, None, None, rows=True)
o = torch.empty_like(qd)
lse = torch.empty(B, T, HQ, device=dev)
BM, BN, ST, NQ = parallel_hopper._BLOCKS[D]
descs = lambda: (parallel_hopper._desc(qd, [B, T, HQ * D], [1, BM // 2, D]), parallel_hopper._desc(o, [B, T, HQ * D], [1, BM // 2, D]),
                 parallel_hopper._desc(kd, [B, T, HQ * D], [1, BN, D]), parallel_hopper._desc(vd, [B, T, HQ * D], [1, BN, D]),
                 parallel_hopper._desc(gct, list(gct.shape), [1, BN]))
pieces = {
    "sdpa autograd": lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True),
    "parallel_attn g autograd": lambda: parallel_attn(q, k, v, g),
    "parallel_attn u autograd": lambda: parallel_attn(q, k, v),
    "parallel_attn g no-grad": lambda: parallel_attn(qd, kd, vd, gd),
    "parallel_attn u no-grad": lambda: parallel_attn(qd, kd, vd),
    "_gate_sums (scan launch)": lambda: _gate_sums(gd, None, None, rows=True),
    "parallel_attn_fwd g": lambda: parallel_attn_fwd(qd, kd, vd, gc, D ** -0.5, None, gct),
    "fwd_hopper g": lambda: parallel_hopper.parallel_attn_fwd_hopper(qd, kd, vd, gct, D ** -0.5, o, lse),
    "5 descriptors": descs,
    "3 torch.empty": lambda: (torch.empty_like(qd), torch.empty(B, T, HQ, device=dev), torch.empty(B * HQ, 128, device=dev)),
    "supported()": lambda: parallel_hopper.supported(qd, kd, None, vd),
}
for name, fn in pieces.items():
    print(f"host {name}: {host_us(fn):.1f} us", flush=True)
