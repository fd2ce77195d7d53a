"""The `gatedgen` command line. Commands stay thin: the work lives in the library modules and every
terminal concern in ``gatedgen.ui``."""

from __future__ import annotations

import functools
import os
import sys

import click

from gatedgen import __version__
from gatedgen.errors import GatedgenError

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def _sampling_options(f):
    """Options shared by every generating command."""
    options = [
        click.option("--model", "-m", "model", metavar="DIR", help="Model directory (default: weights/)."),
        click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Most tokens to generate."),
        click.option("--temperature", "-t", type=click.FloatRange(min=0), default=0.8, show_default=True,
                     help="Sampling temperature; 0 = greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=0, help="Keep the k most likely (0 = off)."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0,
                     help="Nucleus sampling mass in (0, 1]."),
        click.option("--min-p", type=click.FloatRange(0, 1, max_open=True), default=0.0,
                     help="Drop tokens below min_p * the top probability."),
        click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0,
                     help="Penalise tokens already seen (1 = off)."),
        click.option("--seed", type=int, default=None, help="Random seed (same seed, same text)."),
        click.option("--stop", multiple=True, help="Stop string (repeatable); never printed."),
        click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-sequence."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="Weights dtype (auto: float32 on CPU; on CUDA the checkpoint's own, else bfloat16)."),
        click.option("--quantize", "-q", type=click.Choice(["auto", "none", "int8"]), default="auto", show_default=True,
                     help="Weight-only int8 for the linear maps (CPU only; auto: int8 on CPU, none on CUDA). "
                          "none runs the exact weights."),
        click.option("--max-context", "-c", type=click.IntRange(min=2), default=None,
                     help="Context length to allocate (default: the model's, or 4096)."),
        click.option("--stats", is_flag=True, help="Print token counts and speeds on stderr."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
        click.option("--no-graph", is_flag=True, expose_value=False, callback=lambda c, p, v: _no_graph(c, p, v),
                     help="Decode without CUDA graphs (debugging; also GATEDGEN_NO_GRAPH=1)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _guarded(f):
    """Turn errors into one line on stderr and the conventional exit codes."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug") or os.environ.get("GATEDGEN_DEBUG") == "1"
        from gatedgen import ui

        try:
            return f(*args, **kwargs)
        except GatedgenError as e:
            if debug:
                raise
            ui.error(str(e))
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            if debug:
                raise
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except Exception as e:
            if debug:
                raise
            ui.error(f"unexpected {e.__class__.__name__}: {e} (run with --debug for the traceback)")
            sys.exit(EXIT_ERROR)

    return wrapper


def _quiet_broken_pipe() -> None:
    """`gatedgen ... | head`: the reader left; end without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(0)


def _settings(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, ignore_eos):
    from gatedgen.generate import GenerationSettings
    from gatedgen.sampling import SamplingParams

    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed)
    sampling.validate()
    return GenerationSettings(max_tokens=max_tokens, sampling=sampling, stop=list(stop), ignore_eos=ignore_eos)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gatedgen")
def cli() -> None:
    """Generate text with gated-attention (Forgetting Transformer) language models."""


@cli.command()
@click.option("--prompt", "-p", default=None, help="Prompt text; '-' reads stdin. Piped stdin comes first.")
@click.option("--echo", is_flag=True, help="Print the prompt before the continuation.")
@click.option("--jsonl", is_flag=True,
              help='Read one JSON request per stdin line ({"prompt": ..., sampling fields}); '
                   "write one JSON result per line, in order. See gatedgen/jsonl.py.")
@click.option("--truncate", type=click.Choice(["none", "left"]), default="none", show_default=True,
              help="A prompt longer than the context: error (none) or keep its last tokens (left).")
@click.option("--check", is_flag=True, help="Check the weights for NaN/Inf while loading.")
@_sampling_options
@_guarded
def complete(prompt, echo, jsonl, truncate, check, model, max_tokens, temperature, top_k, top_p, min_p,
             repetition_penalty, seed, stop, ignore_eos, device, dtype, quantize, max_context, stats, debug):
    """Continue a prompt; only the continuation goes to stdout."""
    from gatedgen import runtime, ui

    settings = _settings(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, ignore_eos)
    if jsonl:
        if prompt is not None or echo:
            raise GatedgenError("--jsonl reads its prompts from stdin; drop --prompt/--echo")
        with ui.status("Loading model..."):
            loaded = runtime.open_session(model, device, dtype, max_context, check=check, quantize=quantize)
        from gatedgen import jsonl as jsonl_mode

        failed = jsonl_mode.run(loaded.session, runtime.stdin_lines(), settings, truncate, ui.write)
        if failed:
            raise GatedgenError(f"{failed} request line(s) failed (see their \"error\" fields)")
        return
    text = runtime.prompt_from_inputs(prompt)
    with ui.status("Loading model..."):
        loaded = runtime.open_session(model, device, dtype, max_context, check=check, quantize=quantize)
    session = loaded.session
    ids = runtime.fit_prompt(session.tokenizer.encode(text), session.max_context, max_tokens, truncate,
                             session.tokenizer.bos_token_id)
    if echo:
        ui.write(text)
    last = None
    for response in session.generate(ids, settings):
        ui.write(response.text)
        last = response
    if sys.stdout.isatty():
        ui.write("\n")
    if stats and last is not None:
        ui.print_stats(last.stats)


@cli.command()
@click.option("--system", "-s", "system_prompt", default=None, help="System prompt.")
@click.option("--check", is_flag=True, help="Check the weights for NaN/Inf while loading.")
@_sampling_options
@_guarded
def chat(system_prompt, check, model, max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed,
         stop, ignore_eos, device, dtype, quantize, max_context, stats, debug):
    """Talk with the model. Piped stdin: answer it once and exit."""
    from gatedgen import repl, runtime, ui

    settings = _settings(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, ignore_eos)
    piped = runtime.stdin_is_piped()
    question = runtime.prompt_from_inputs(None) if piped else None
    with ui.status("Loading model..."):
        loaded = runtime.open_session(model, device, dtype, max_context, check=check, quantize=quantize)
    conversation = repl.Conversation(loaded.session, settings, system_prompt)
    if question is not None:
        repl.answer_once(conversation, question, show_stats=stats)
    else:
        repl.run(conversation, show_stats=stats, history=ui.history_path())


@cli.command()
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="dtype of the dequantized weights.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_guarded
def convert(gguf_file, out_dir, dtype, debug):
    """Convert a llama.cpp GGUF file into a model directory (needs: pip install 'gatedgen[gguf]')."""
    from gatedgen import ui
    from gatedgen.convert_gguf import convert as convert_gguf

    with ui.status("Converting..."):
        out = convert_gguf(gguf_file, out_dir, dtype)
    ui.info(f"wrote {out}")


@cli.command()
@click.option("--model", "-m", "model", metavar="DIR", help="Model directory (default: weights/).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_guarded
def info(model, debug):
    """Describe a model directory: architecture, size, context, tokenizer, chat template."""
    from gatedgen import runtime, ui
    from gatedgen.info import describe

    rows = describe(runtime.resolve_model_dir(model))
    width = max(len(label) for label, _ in rows)
    ui.write("".join(f"{label + ':':<{width + 2}}{value}\n" for label, value in rows))


@cli.group()
def bench() -> None:
    """Benchmarks (measurements, printed as a table)."""


@bench.command("generate")
@click.option("--config", "configs", multiple=True, default=["135m", "135m-nogate"], show_default=True,
              help="Preset (135m = gated FoX, 135m-nogate, 135m-llama, tiny); repeatable.")
@click.option("--model", "-m", "model_dir", metavar="DIR", default=None, help="Load this model instead.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=[1, 32], show_default=True)
@click.option("--prompt-len", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--prefill-len", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default="bfloat16", show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--no-peers", is_flag=True, help="Skip HF transformers / fla.")
@click.option("--no-graph", is_flag=True, help="Decode eagerly (no CUDA graphs).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_guarded
def bench_generate(configs, model_dir, batches, prompt_len, new_tokens, prefill_len, dtype, repeats, no_peers,
                   no_graph, debug):
    """Prefill / decode tok/s, time to first token and bandwidth, beside HF transformers and fla."""
    from gatedgen.bench import generate as bench_gen

    rows = bench_gen.run(list(configs), list(batches), prompt_len, new_tokens, prefill_len, dtype=dtype,
                         repeats=repeats, peers=not no_peers, use_graphs=False if no_graph else None,
                         model_dir=model_dir, log=lambda row: click.echo(row, err=True))
    click.echo(bench_gen.format_table(rows))


@bench.command("kernels")
@click.option("--part", type=click.Choice(["prefill", "decode", "all"]), default="all", show_default=True)
@click.option("--quick", is_flag=True, help="Fewer shapes (a smoke run).")
@click.option("--layers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also time decode as a model runs it: this many layers' calls back to back in one graph.")
@click.option("--graphs", is_flag=True,
              help="Also time the prefill forwards from CUDA-graph replays (host launch cost excluded for all).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_guarded
def bench_kernels(part, quick, layers, graphs, debug):
    """Attention kernels (TFLOP/s, TB/s) beside fla and torch SDPA, measured in the same run."""
    import torch

    from gatedgen.errors import GatedgenError

    if not torch.cuda.is_available():
        raise GatedgenError("bench kernels needs a CUDA device")
    if part in ("prefill", "all"):
        from gatedgen.bench import kernels_prefill

        click.echo(kernels_prefill.format_table(kernels_prefill.run(quick=quick)))
        if graphs:
            click.echo(kernels_prefill.format_graph_table(kernels_prefill.run_graphs(quick=quick)))
    if part in ("decode", "all"):
        from gatedgen.bench import kernels_decode

        click.echo(kernels_decode.format_table(kernels_decode.run(quick=quick)))
        if layers:
            from gatedgen.bench import decode_stream

            click.echo(decode_stream.format_table(decode_stream.run(layers, quick=quick)))


def _no_graph(ctx, param, value):
    if value:
        os.environ["GATEDGEN_NO_GRAPH"] = "1"
    return value


def main() -> None:
    try:
        cli.main(prog_name="gatedgen", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # bare `gatedgen`: the help, as click shows it
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:  # bad option values and unknown options: one line, exit 2
        from gatedgen import ui

        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        ui.error(e.format_message() + hint)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:  # Ctrl-C inside click's own prompts
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
