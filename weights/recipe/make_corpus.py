"""Step 1: generate the synthetic corpus with the teacher through gatedgen's batched generation.

    python weights/recipe/make_corpus.py --teacher models/smollm2 --out corpus.jsonl.gz --seconds 300

Each prompt (prompts.py) is rendered with the teacher's own chat template and answered with
sampling (temperature 0.9, top-p 0.95), in batches decoded together (CUDA graphs on the GPU).
Output: one JSON object per line: {"kind", "prompt", "text"}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prompts import mixed_prompts  # noqa: E402

from gatedgen.batch import generate_batch  # noqa: E402
from gatedgen.chat import ChatFormatter, Message  # noqa: E402
from gatedgen.generate import GenerationSettings  # noqa: E402
from gatedgen.loading import load_model  # noqa: E402
from gatedgen.sampling import SamplingParams  # noqa: E402
from gatedgen.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=300, help="stop starting new batches after this")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok = Tokenizer.from_dir(Path(args.teacher))
    model = load_model(args.teacher, device=args.device)
    eos = tok.id_to_token(tok.eos_token_ids[0]) if tok.eos_token_ids else None
    fmt = ChatFormatter(tok.chat_template, None, eos)
    stop_ids = [i for i in (tok.token_to_id(s) for s in fmt.stop_strings) if i is not None]
    start, n_done, n_tokens, batch_no = time.time(), 0, 0, 0
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        while time.time() - start < args.seconds:
            items = mixed_prompts(args.batch, seed=args.seed * 100003 + batch_no)
            ids = [tok.encode_plain(fmt.render([Message("user", p)])) for _, p in items]
            settings = GenerationSettings(
                max_tokens=args.max_tokens, stop=fmt.stop_strings, stop_token_ids=stop_ids,
                sampling=SamplingParams(temperature=0.9, top_p=0.95, seed=args.seed * 7919 + batch_no),
            )
            results = generate_batch(model, tok, ids, settings)
            for (kind, prompt), r in zip(items, results):
                text = r.text.strip()
                if r.finish_reason == "stop" and len(text) > 20:  # drop replies cut off by the limit
                    f.write(json.dumps({"kind": kind, "prompt": prompt, "text": text}) + "\n")
                    n_done += 1
                n_tokens += len(r.tokens)
            batch_no += 1
            rate = n_tokens / (time.time() - start)
            print(f"batch {batch_no}: {n_done} kept, {n_tokens} teacher tokens, {rate:.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
