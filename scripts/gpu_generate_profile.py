"""Where the time goes: torch profiler over a 2048-token prefill, a 128-token prefill and eager
decode steps of the 135M gated preset (run on the device; see docs/notes-generate.md)."""
import time

import torch
from torch.profiler import ProfilerActivity, profile

import kernels.dispatch as disp
from gatedgen.bench.generate import PRESETS, random_model
from gatedgen.engine import Decoder
from gatedgen.sampling import SamplingParams

m = random_model(PRESETS["135m"], "cuda", torch.bfloat16)
print("parallel impl:", disp._impl("parallel", "parallel_attn", m.output_weight).__module__)
for T in (2048, 128):
    c = m.new_cache(1, T + 8)
    x = torch.randint(0, 49152, (1, T), device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            c.reset(); m(x, c, mode="prefill", last_only=True)
        torch.cuda.synchronize()
        c.reset(); t0 = time.perf_counter(); m(x, c, mode="prefill", last_only=True); t1 = time.perf_counter()
        torch.cuda.synchronize(); t2 = time.perf_counter()
        print(f"prefill T={T}: host {1e3 * (t1 - t0):.2f} ms, total {1e3 * (t2 - t0):.2f} ms")
        c.reset()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            m(x, c, mode="prefill", last_only=True); torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
c = m.new_cache(1, 512); c.seqlens.fill_(192); c.lengths = [192]
d = Decoder(m, c, use_graphs=False); p = SamplingParams(temperature=0); d.sampler(p)
ids = torch.zeros(1, dtype=torch.long, device="cuda")
for _ in range(3): ids = d.step(ids, p)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    d.step(ids, p); torch.cuda.synchronize()
ev = prof.key_averages()
print("decode step kernels:", sum(e.count for e in ev if e.device_type.name == "CUDA"))
print(ev.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
