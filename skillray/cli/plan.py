"""`skillray plan CONFIG --gpus N --gpu-memory GB`: per-stage cost and checks before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import SetOpt, console, fail, load_run_config


def register(app) -> None:
    """Add the `plan` command (no pipeline stage: it reads only the config and the model's shape)."""

    @app.command()
    def plan(
        config: Optional[Path] = typer.Argument(None, help="Run config YAML (default: configs/demo.yaml)."),
        gpus: int = typer.Option(8, "--gpus", min=1, help="GPUs of the cluster the run is planned for."),
        gpu_memory: float = typer.Option(80.0, "--gpu-memory", min=1, help="Memory per GPU, GB."),
        gpu_tflops: float = typer.Option(989.0, "--gpu-tflops", min=0.001,
                                         help="Dense bf16 peak per GPU, TFLOP/s (H100 SXM: 989; A100: 312)."),
        mfu: float = typer.Option(0.4, "--mfu", min=0.001, max=1.0,
                                  help="Utilisation of the forward and training stages (fraction of the peak)."),
        decode_mfu: float = typer.Option(0.1, "--decode-mfu", min=0.001, max=1.0,
                                         help="Utilisation of generation (decoding is memory-bound)."),
        mean_tokens: Optional[float] = typer.Option(
            None, "--mean-tokens", min=1,
            help="Assume this mean length (tokens) of a corpus record for the expected cost (extract, SFT), instead "
                 "of what a finished corpus / extract stage in the run directory measures."),
        mean_new_tokens: Optional[float] = typer.Option(
            None, "--mean-new-tokens", min=0,
            help="Assume this mean of generated tokens per eval sample for the expected cost, instead of what the "
                 "run's finished eval samples measure."),
        deadline_hours: float = typer.Option(24.0, "--deadline-hours", min=0.001,
                                             help="Say whether the worst case and the expected total fit this."),
        out: Optional[Path] = typer.Option(None, "--out", help="Also write the plan as JSON to this file."),
        sets: Optional[list[str]] = SetOpt,
    ) -> None:
        """Estimate a run before it starts: per stage FLOPs, GPU-hours at the stated utilisation, disk (store,
        checkpoints, models) and memory per GPU, from the model's shape and the config; and the checks that
        would otherwise fail hours in (prompt + max_new_tokens past the model's context, a fine-tuning that
        does not fit the GPUs). Exit code 1 when a check fails. Each stage is costed twice: at the worst case
        (every record and sample at its maximum length) and as expected, from the lengths a finished corpus,
        extract, select or eval stage in the run directory measures, or --mean-tokens / --mean-new-tokens
        (printed as assumptions); both totals are compared with --deadline-hours."""
        from skillray.artifacts import atomic_write_json
        from skillray.plan import plan as make_plan
        from skillray.plan import plan_markdown

        try:
            cfg = load_run_config(config, None, sets)
            res = make_plan(cfg, gpus, gpu_memory, gpu_tflops, mfu, decode_mfu, mean_tokens, mean_new_tokens, deadline_hours)
        except ValueError as e:
            fail(str(e))
        typer.echo(plan_markdown(res))  # plain: a Markdown table, not wrapped to the terminal
        if out is not None:
            atomic_write_json(out, res)
            console.print(f"wrote {out}")
        if not res["fits"]:
            raise typer.Exit(1)
