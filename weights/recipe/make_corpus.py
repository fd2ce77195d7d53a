"""Step 1: generate the synthetic corpus with the teacher through gatedgen's continuous batching.

    python weights/recipe/make_corpus.py --teacher models/smollm2 --out corpus/ --seconds 300

Each prompt (prompts.py) is rendered with the teacher's own chat template and answered with
sampling (temperature 0.9, top-p 0.95) by ``gatedgen.batch.generate_stream``: --batch rows decode
together (one CUDA graph), and a row whose answer ended takes the next prompt at once. New prompts
stop after --seconds; answers in flight are finished. Answers cut off by --max-tokens end at
their last full sentence (dropped if that leaves under 200 characters).
Output: shards ``corpus-NNN.jsonl.gz`` of --shard records, one JSON object per line:
{"kind", "prompt", "text"}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prompts import prompt_stream  # noqa: E402

from gatedgen.batch import BatchStats, generate_stream  # noqa: E402
from gatedgen.chat import ChatFormatter, Message  # noqa: E402
from gatedgen.generate import GenerationSettings  # noqa: E402
from gatedgen.loading import load_model  # noqa: E402
from gatedgen.sampling import SamplingParams  # noqa: E402
from gatedgen.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", required=True, help="folder for the shards")
    ap.add_argument("--seconds", type=float, default=300, help="stop starting new answers after this")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--shard", type=int, default=20000, help="records per shard")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tok = Tokenizer.from_dir(Path(args.teacher))
    model = load_model(args.teacher, dtype=args.dtype, device=args.device)
    eos = tok.id_to_token(tok.eos_token_ids[0]) if tok.eos_token_ids else None
    fmt = ChatFormatter(tok.chat_template, None, eos)
    stop_ids = [i for i in (tok.token_to_id(s) for s in fmt.stop_strings) if i is not None]
    settings = GenerationSettings(
        max_tokens=args.max_tokens, stop=fmt.stop_strings, stop_token_ids=stop_ids,
        sampling=SamplingParams(temperature=0.9, top_p=0.95, seed=args.seed),
    )
    items: list[tuple[str, str]] = []  # (kind, prompt) by index
    start = time.time()

    def prompts():
        for kind, prompt in prompt_stream(seed=args.seed):
            if time.time() - start > args.seconds:
                return
            items.append((kind, prompt))
            yield tok.encode_plain(fmt.render([Message("user", prompt)]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = BatchStats()
    kept, shard_no, f = 0, 0, None
    for n, (index, result) in enumerate(generate_stream(model, tok, prompts(), settings, batch_size=args.batch,
                                                        max_prompt_tokens=256, chunk=16, stats=stats), 1):
        kind, prompt = items[index]
        text = result.text.strip()
        if result.finish_reason == "length":  # cut off by the limit: keep it up to its last full sentence
            end = max(text.rfind(c) for c in ".!?")
            text = text[: end + 1] if end >= 200 else ""
        if len(text) > 20:
            if f is None or kept % args.shard == 0:
                if f is not None:
                    f.close()
                f = gzip.open(out / f"corpus-{args.seed}-{shard_no:03d}.jsonl.gz", "wt", encoding="utf-8")
                shard_no += 1
            f.write(json.dumps({"kind": kind, "prompt": prompt, "text": text}) + "\n")
            kept += 1
        if n % 2000 == 0:
            elapsed = time.time() - start
            print(f"{n} answers, {kept} kept, {stats.generated_tokens} teacher tokens, "
                  f"{stats.generated_tokens / elapsed:.0f} tok/s", flush=True)
    if f is not None:
        f.close()
    elapsed = time.time() - start
    print(f"done: {kept} records kept of {len(items)} prompts, {stats.generated_tokens} teacher tokens in "
          f"{elapsed:.0f} s ({stats.generated_tokens / elapsed:.0f} tok/s, batch {args.batch})", flush=True)


if __name__ == "__main__":
    main()
