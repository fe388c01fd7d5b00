"""The ``bench`` command: a benchmark users run (not a timed test), printed as tables or JSON.

Kept apart from the pipeline commands because it measures the implementation rather than a model:
every defense's step cost against SFT, our loop against ``transformers.Trainer``, batched against
one-at-a-time generation. The measurements live in :mod:`hftguard.bench`; nothing here imports
torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Benchmark"


def register(app: typer.Typer) -> None:
    @app.command("bench", rich_help_panel=PANEL)
    def bench_cmd(
        model: Annotated[
            str,
            typer.Option(
                "--model", "-m", help="Alias, local model dir, .gguf file, hub id or run directory."
            ),
        ] = "smollm2-135m-instruct",
        llama_shape: Annotated[
            str | None,
            typer.Option(
                "--llama-shape",
                help="Random-initialise a real architecture's shape instead of "
                "loading --model: 135m (SmolLM2), 1b, 3b (Llama-3.2), 8b (Llama-3.1).",
            ),
        ] = None,
        batch_size: Annotated[int, typer.Option(help="Examples per training step.")] = 8,
        seq_len: Annotated[
            int, typer.Option(help="Tokens per training example (half prompt, half response).")
        ] = 128,
        steps: Annotated[int, typer.Option(help="Timed steps per defense (per round).")] = 5,
        warmup: Annotated[int, typer.Option(help="Untimed warm-up steps before them.")] = 1,
        rounds: Annotated[
            int,
            typer.Option(
                help="Repeat the measurements, interleaved, to spread machine noise evenly."
            ),
        ] = 1,
        defenses: Annotated[
            list[str] | None,
            typer.Option(
                "--defenses",
                "-d",
                help="Defenses to time: NAME or STAGE:NAME (align|finetune|repair), "
                "comma-separated or repeated. Default: all registered, every stage.",
            ),
        ] = None,
        skip: Annotated[
            list[str] | None,
            typer.Option(
                "--skip",
                help="Sections to skip: defenses, trainer, generation, padding, repair "
                "(repeatable).",
            ),
        ] = None,
        gen_prompts: Annotated[int, typer.Option(help="Prompts for the generation section.")] = 32,
        gen_batch_size: Annotated[int, typer.Option(help="Batch size of batched generation.")] = 16,
        max_new_tokens: Annotated[
            int, typer.Option(help="Generation budget per prompt (eval's default).")
        ] = 64,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
        precision: Annotated[
            str,
            typer.Option(
                help="auto (bf16 on CUDA and on CPUs with native bf16), fp32, bf16, fp16; "
                "several comma-separated (fp32,bf16) run side by side."
            ),
        ] = "auto",
        lr: Annotated[float, typer.Option(help="Learning rate of the timed steps.")] = 5e-4,
        peak_tflops: Annotated[
            float | None,
            typer.Option(
                help="Device peak TFLOP/s for MFU when the device is not in the built-in table."
            ),
        ] = None,
        threads: Annotated[
            int | None, typer.Option(help="torch CPU threads (default: torch's).")
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed for LoRA init and data.")] = 0,
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="Also write the results to this JSON file."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON instead of tables.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    ) -> None:
        """Time each defense vs SFT, our loop vs Trainer, and batched vs one-at-a-time generation.

        Everything runs in one process on one model, warmed up, reporting medians of repeated
        steps (docs/performance.md). A command to run, not a test: it takes minutes on a CPU.
        """
        from hftguard.bench import BenchOptions, print_report, run_bench
        from hftguard.console import Reporter, print_json
        from hftguard.runs import atomic_write_json

        opts = BenchOptions(
            model=model,
            llama_shape=llama_shape,
            batch_size=batch_size,
            seq_len=seq_len,
            steps=steps,
            warmup=warmup,
            rounds=rounds,
            defenses=list(defenses or []),
            skip=[s.strip() for item in (skip or []) for s in item.split(",") if s.strip()],
            device=device,
            precision=precision,
            lr=lr,
            gen_prompts=gen_prompts,
            gen_batch_size=gen_batch_size,
            max_new_tokens=max_new_tokens,
            peak_tflops=peak_tflops,
            seed=seed,
        )
        reporter = Reporter(quiet=quiet or as_json)
        before = None
        if threads is not None:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            result = run_bench(opts, reporter)
        finally:
            if before is not None:
                import torch

                torch.set_num_threads(before)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out, result)
        if as_json:
            print_json(result)
        else:
            print_report(result)
