"""`skillray eval`: Pass@k of the run's model on math benchmarks and the procedural held-out set,
with an optional steering sweep over the run's basis."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, csv_list, fail, help_of,
                                 load_run_config, run_stage)
from skillray.config import EVAL_PRESETS, STEER_MODES, EvalBenchmark, EvalConfig, EvalSweep, with_overrides


def _sweep_options(directions: str | None, signs: str | None, alphas: str | None, modes: str | None) -> EvalSweep | None:
    """The --sweep-* options as an EvalSweep (None without --sweep-directions); errors name the option."""
    from pydantic import ValidationError

    given = {"--sweep-signs": signs, "--sweep-alphas": alphas, "--sweep-modes": modes}
    if not directions:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} given without --sweep-directions, so no sweep would run; add "
                             "--sweep-directions (e.g. --sweep-directions 0,1) or drop them")  # fmt: skip
        return None
    kw: dict = {"directions": csv_list(directions, int, "--sweep-directions")}
    for field, kind in (("signs", int), ("alphas", float), ("modes", str)):
        if given[f"--sweep-{field}"] is not None:
            kw[field] = csv_list(given[f"--sweep-{field}"], kind, f"--sweep-{field}")
    try:
        return EvalSweep(**kw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field, *index = err["loc"]
            where = f"--sweep-{field}" + (f" item {int(index[0]) + 1} ({err['input']!r})" if index else "")
            problems.append(f"{where}: {err['msg']}")
        raise ValueError("; ".join(problems)) from None


def register(app) -> None:
    """Add the `eval` command to the app."""

    @app.command("eval")
    def eval_cmd(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        benchmark: Optional[list[str]] = typer.Option(
            None, "--benchmark", "-b",
            help="Benchmark to evaluate (repeat for several), replacing the config's list: a preset ("
            + ", ".join(EVAL_PRESETS) + ") or NAME=PATH for a local JSON/JSONL/Parquet copy of a preset (e.g. "
            "math500=data/math500.jsonl)."),  # fmt: skip
        limit: Optional[int] = typer.Option(None, help="Keep only the first N problems of each --benchmark."),
        n_samples: Optional[int] = typer.Option(None, "--n-samples", "-n", help=help_of(EvalConfig, "n_samples")),
        temperature: Optional[float] = typer.Option(None, help=help_of(EvalConfig, "temperature")),
        top_p: Optional[float] = typer.Option(None, help=help_of(EvalConfig, "top_p")),
        max_new_tokens: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "max_new_tokens")),
        seed: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "seed")),
        backend: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "backend") + " [hf|vllm|openai]"),
        serve: bool = typer.Option(False, "--serve", help=help_of(EvalConfig, "serve")),
        base_url: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "base_url")),
        model_name: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "model_name")),
        api_key_env: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "api_key_env")),
        max_concurrency: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "max_concurrency")),
        max_retries: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "max_retries")),
        vllm_python: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "vllm_python")),
        system_prompt: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "system_prompt")),
        instruction: Optional[str] = typer.Option(None, help=help_of(EvalConfig, "instruction")),
        chunk_size: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "chunk_size")),
        batch_size: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "batch_size")),
        num_actors: Optional[int] = typer.Option(None, help=help_of(EvalConfig, "num_actors")),
        num_cpus_per_actor: Optional[float] = typer.Option(None, help=help_of(EvalConfig, "num_cpus_per_actor")),
        num_gpus_per_actor: Optional[float] = typer.Option(None, help=help_of(EvalConfig, "num_gpus_per_actor")),
        sweep_directions: Optional[str] = typer.Option(
            None, help="Run a steering sweep over these basis directions (comma-separated), e.g. '0,1'."),
        sweep_signs: Optional[str] = typer.Option(None, help="Sweep signs, 1 and/or -1 (comma-separated; with "
                                                  "--sweep-directions; default 1,-1)."),
        sweep_alphas: Optional[str] = typer.Option(None, help="Sweep alphas in spread units (comma-separated; with "
                                                   "--sweep-directions; default 1.0)."),
        sweep_modes: Optional[str] = typer.Option(None, help=f"Sweep modes: {' and/or '.join(STEER_MODES)} (comma-separated; "
                                                  "with --sweep-directions; default residual)."),
        force: bool = ForceOpt,
    ) -> None:
        """Sample n answers per problem, score them (math-verify / reasoning-gym), report unbiased Pass@k.

        Generation runs on Ray actors (one model each; joins RAY_ADDRESS or starts a local
        cluster) and is written chunk by chunk, so a killed run resumes where it stopped.
        --serve starts `skillray serve` for the model under test and evaluates through its
        OpenAI API (the sweep reuses it with per-request steering); --base-url evaluates any
        OpenAI-compatible endpoint (key from the variable named by --api-key-env).
        Writes <run>/eval/ (samples, results.parquet/json/md, plots) and, with a sweep,
        <run>/eval/sweep/ (Pass@k deltas of each steered arm against the unsteered model).
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            ev = cfg.eval
            if benchmark:
                specs = []
                for b in benchmark:
                    name, _, path = b.partition("=")
                    specs.append(EvalBenchmark(name=name.strip(), path=path.strip() or None, limit=limit))
                ev = ev.model_copy(update={"benchmarks": specs})
            elif limit is not None:
                ev = ev.model_copy(update={"benchmarks": [b.model_copy(update={"limit": limit}) for b in ev.benchmarks]})
            sweep = _sweep_options(sweep_directions, sweep_signs, sweep_alphas, sweep_modes)
            if serve or base_url:  # `--serve` / `--base-url` evaluate through an endpoint
                backend = backend or "openai"
            ev = with_overrides(
                ev, serve=serve or None, base_url=base_url, model_name=model_name, api_key_env=api_key_env,
                max_concurrency=max_concurrency, max_retries=max_retries, n_samples=n_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                seed=seed, backend=backend, vllm_python=vllm_python, system_prompt=system_prompt,
                instruction=instruction, chunk_size=chunk_size, batch_size=batch_size, num_actors=num_actors,
                num_cpus_per_actor=num_cpus_per_actor, num_gpus_per_actor=num_gpus_per_actor,
                sweep=sweep.model_dump() if sweep else None,
            )  # fmt: skip
            run_stage("eval", cfg.model_copy(update={"eval": ev}), force)
        except USER_ERRORS as e:
            fail(str(e))
