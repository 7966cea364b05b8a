"""`skillray`: one subcommand per stage, each reading the run config and writing its artifact."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, console, fail, help_of,
                                 load_run_config, run_stage)
from skillray.config import CorpusConfig, ExtractConfig, ModelConfig, RunConfig, TrackingConfig, with_overrides
from skillray.stages import PIPELINE

app = typer.Typer(
    help="Model-native skills: recover a language model's skill directions from its activations and act on them, on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
corpus_app = typer.Typer(help="Build the corpus: generate the offline default, or load a file / hub dataset.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("generate")
def corpus_generate(
    config: Optional[Path] = ConfigOpt,
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    tasks: Optional[str] = typer.Option(None, help=help_of(CorpusConfig, "tasks") + " Comma-separated."),
    size_per_task: Optional[int] = typer.Option(None, help=help_of(CorpusConfig, "size_per_task")),
    seed: Optional[int] = typer.Option(None, help=help_of(CorpusConfig, "seed")),
    force: bool = ForceOpt,
) -> None:
    """Generate the offline procedural corpus (reasoning-gym) into <run>/corpus/records.jsonl."""
    try:
        cfg = load_run_config(config, run_dir, sets)
        corpus = with_overrides(
            cfg.corpus,
            source="generate",
            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
            size_per_task=size_per_task,
            seed=seed,
        )
        run_stage("corpus", cfg.model_copy(update={"corpus": corpus}), force)
    except USER_ERRORS as e:
        fail(str(e))


@corpus_app.command("build")
def corpus_build(
    config: Optional[Path] = ConfigOpt,
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    limit: Optional[int] = typer.Option(None, help=help_of(CorpusConfig, "limit")),
    force: bool = ForceOpt,
) -> None:
    """Build the corpus the config describes (generated, a local file or a hub dataset, with its field mapping)."""
    try:
        cfg = load_run_config(config, run_dir, sets)
        run_stage("corpus", cfg.model_copy(update={"corpus": with_overrides(cfg.corpus, limit=limit)}), force)
    except USER_ERRORS as e:
        fail(str(e))


def _layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers {value!r}: expected comma-separated integers such as '2,5,-1'") from None


@app.command()
def extract(
    config: Optional[Path] = ConfigOpt,
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    model: Optional[str] = typer.Option(None, help=help_of(ModelConfig, "name_or_path")),
    dtype: Optional[str] = typer.Option(None, help=help_of(ModelConfig, "dtype")),
    layers: Optional[str] = typer.Option(None, help=help_of(ExtractConfig, "layers") + " Comma-separated."),
    pooling: Optional[str] = typer.Option(None, help=help_of(ExtractConfig, "pooling") + " [mean|response_mean|last]"),
    skip_prefix: Optional[str] = typer.Option(None, help=help_of(ExtractConfig, "skip_prefix") + " [shared|first|none]"),
    standardize: Optional[bool] = typer.Option(None, "--standardize/--no-standardize", help=help_of(ExtractConfig, "standardize")),
    max_tokens: Optional[int] = typer.Option(None, help=help_of(ExtractConfig, "max_tokens")),
    token_budget: Optional[int] = typer.Option(None, help=help_of(ExtractConfig, "token_budget")),
    shard_size: Optional[int] = typer.Option(None, help=help_of(ExtractConfig, "shard_size")),
    store_dtype: Optional[str] = typer.Option(None, help=help_of(ExtractConfig, "store_dtype")),
    num_actors: Optional[int] = typer.Option(None, help=help_of(ExtractConfig, "num_actors")),
    num_cpus_per_actor: Optional[float] = typer.Option(None, help=help_of(ExtractConfig, "num_cpus_per_actor")),
    num_gpus_per_actor: Optional[float] = typer.Option(None, help=help_of(ExtractConfig, "num_gpus_per_actor")),
    force: bool = ForceOpt,
) -> None:
    """Pool each record's residual stream at many layers into one vector; write a sharded, resumable store.

    Runs on Ray Data (an actor pool, one model per actor); joins the cluster at RAY_ADDRESS
    or starts a local one. Rerunning after a kill computes only the missing shards.
    """
    try:
        cfg = load_run_config(config, run_dir, sets)
        cfg = cfg.model_copy(
            update={
                "model": with_overrides(cfg.model, name_or_path=model, dtype=dtype),
                "extract": with_overrides(
                    cfg.extract,
                    layers=_layers(layers),
                    pooling=pooling,
                    skip_prefix=skip_prefix,
                    standardize=standardize,
                    max_tokens=max_tokens,
                    token_budget=token_budget,
                    shard_size=shard_size,
                    store_dtype=store_dtype,
                    num_actors=num_actors,
                    num_cpus_per_actor=num_cpus_per_actor,
                    num_gpus_per_actor=num_gpus_per_actor,
                ),
            }
        )
        run_stage("extract", cfg, force)
    except USER_ERRORS as e:
        fail(str(e))


# The other commands live in their own CLI modules and add themselves to the app.
from skillray.cli import ablate as _ablate_cli  # noqa: E402
from skillray.cli import basis as _basis_cli  # noqa: E402
from skillray.cli import compare as _compare_cli  # noqa: E402
from skillray.cli import eval as _eval_cli  # noqa: E402
from skillray.cli import importer as _importer_cli  # noqa: E402
from skillray.cli import interpret as _interpret_cli  # noqa: E402
from skillray.cli import plan as _plan_cli  # noqa: E402
from skillray.cli import probe as _probe_cli  # noqa: E402
from skillray.cli import replicate as _replicate_cli  # noqa: E402
from skillray.cli import safety as _safety_cli  # noqa: E402
from skillray.cli import select as _select_cli  # noqa: E402
from skillray.cli import serve as _serve_cli  # noqa: E402
from skillray.cli import sft as _sft_cli  # noqa: E402
from skillray.cli import steer as _steer_cli  # noqa: E402

for _module in (_basis_cli, _interpret_cli, _serve_cli, _steer_cli, _select_cli, _probe_cli, _sft_cli, _eval_cli,
                _ablate_cli, _safety_cli, _compare_cli, _replicate_cli, _importer_cli, _plan_cli):
    _module.register(app)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="Run config YAML, e.g. configs/demo.yaml (or --config)."),
    config_opt: Optional[Path] = typer.Option(None, "--config", "-c", help="The run config YAML, as an option (what "
                                              "the other commands and jobs/*.py take)."),
    run_dir: Optional[Path] = RunDirOpt,
    sets: Optional[list[str]] = SetOpt,
    stages: Optional[str] = typer.Option(
        None, help="Comma-separated stages to run instead of the config's `stages` (always in pipeline order: "
        + ", ".join(PIPELINE) + ")."),  # fmt: skip
    tracking: Optional[str] = typer.Option(None, "--tracking", help=help_of(TrackingConfig, "backend")),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=help_of(TrackingConfig, "uri")),
    ablate: Optional[bool] = typer.Option(
        None, "--ablate/--no-ablate", help="After the pipeline, run the config's `ablate:` grid (as `skillray ablate`; "
        "default: no, and under a Ray job (jobs/pipeline.py) when the config has one)."),  # fmt: skip
    force: bool = ForceOpt,
) -> None:
    """Run every stage of the config in order, skipping finished ones and resuming the rest; write the report.

    Killed and started again, it recomputes nothing that was finished: each stage's manifest
    says whether its output matches. Under `ray job submit` (see jobs/pipeline.py and
    docs/cluster.md) the same command runs on the job's cluster.
    """
    from skillray.cli import common
    from skillray.pipeline import run_pipeline

    try:
        if (config is None) == (config_opt is None):
            raise ValueError("give the run config once: `skillray run CONFIG` or `skillray run --config CONFIG`")
        cfg = load_run_config(config or config_opt, run_dir, sets)
        if stages is not None:
            cfg = RunConfig.model_validate({**cfg.model_dump(), "stages": [s.strip() for s in stages.split(",") if s.strip()]})
        cfg = cfg.model_copy(update={"tracking": with_overrides(cfg.tracking, backend=tracking, uri=tracking_uri)})
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        _write_run_config(cfg)
        t0 = time.perf_counter()

        def on_stage(i: int, n: int, name: str) -> None:
            console.rule(f"[bold][{i + 1}/{n}] {name}")

        from skillray.tracking import log_pipeline, log_run_config, tracked, tracked_runner

        # The tracking run opens (and its server is checked) before any stage; it is FAILED if a stage fails.
        with tracked(cfg.tracking, cfg.run_dir, tags={"skillray.command": "run"}) as tracker:
            log_run_config(tracker, cfg)
            statuses = run_pipeline(cfg, force, on_stage, tracked_runner(run_stage, tracker))
            console.rule("[bold]pipeline")
            _print_statuses(statuses)
            report = _write_report(cfg)
            log_pipeline(tracker, cfg.run_dir)
        if ablate or (ablate is None and common.in_job and cfg.ablate is not None):
            console.rule("[bold]ablate")
            run_stage("ablate", cfg, force)  # its own tracking run
        console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.1f}s: outputs under {cfg.run_dir}")
        if report is not None:
            console.print(f"report: {report}")
    except USER_ERRORS as e:
        fail(str(e))


def _print_statuses(statuses) -> None:
    from rich.table import Table

    t = Table(title="stages")
    for c in ("stage", "status", "seconds", "output"):
        t.add_column(c)
    for s in statuses:
        t.add_row(s.stage, s.status, f"{s.seconds:.1f}" if s.seconds is not None else "", ", ".join(s.outputs))
    console.print(t)


def _write_report(cfg: RunConfig) -> Path | None:
    from skillray.report.run import write_run_report

    return write_run_report(cfg.run_dir, embed_images=cfg.interpret.embed_images)


def _write_run_config(cfg: RunConfig) -> None:
    import yaml

    from skillray.artifacts import atomic_write_bytes

    atomic_write_bytes(Path(cfg.run_dir) / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False).encode())


if __name__ == "__main__":
    app()
