"""`skillray probe`: rank skill directions and signs by proxy interventions (likelihood, accuracy)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from skillray.artifacts import StageMismatchError
from skillray.cli.common import SetOpt, csv_list, fail, help_of, load_run_config, print_summary, rows_progress
from skillray.config import ProbeConfig, RunConfig, with_overrides
from skillray.corpus.records import CorpusError
from skillray.steer import SteeringError

_USER_ERRORS = (CorpusError, StageMismatchError, FileNotFoundError, ValueError, SteeringError)


def _do_probe(cfg: RunConfig, force: bool) -> None:
    """Run the probe stage of a run config (``cfg.probe``, with ``cfg.model`` and ``cfg.eval``); print the tables."""
    from skillray.probe import run_probe

    started = time.time()
    with rows_progress("probe") as progress:
        m = run_probe(cfg.run_dir, cfg.probe, cfg.model, force=force, progress=progress, eval_cfg=cfg.eval)
    print_summary("probe", m.summary, skipped=m.created < started)
    md = Path(cfg.run_dir) / "probe" / "probe.md"
    if md.is_file():
        typer.echo(md.read_text())


def register(app, stages: dict) -> None:
    """Add the `probe` command."""

    @app.command()
    def probe(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: configs/demo.yaml)."),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Run directory (overrides run_dir in the config)."),
        sets: Optional[list[str]] = SetOpt,
        probes: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "probes") + " Comma-separated."),
        directions: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "directions") + " Comma-separated."),
        alpha: Optional[float] = typer.Option(None, help=help_of(ProbeConfig, "alpha")),
        mode: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "mode") + " [residual|per_layer]"),
        n_dev: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "n_dev")),
        seed: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "seed")),
        max_tokens: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "max_tokens")),
        batch_size: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "batch_size")),
        accuracy_n_dev: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_n_dev")),
        accuracy_seed: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_seed")),
        accuracy_n_samples: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_n_samples")),
        accuracy_k: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_k")),
        accuracy_max_new_tokens: Optional[int] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_max_new_tokens")),
        accuracy_temperature: Optional[float] = typer.Option(None, help=help_of(ProbeConfig, "accuracy_temperature")),
        force: bool = typer.Option(False, "--force", help="Discard existing output made by another config and recompute."),
    ) -> None:
        """Rank (direction, sign) pairs by steering +/- alpha: likelihood probe (change in log-likelihood of corpus
        solutions) and/or accuracy probe (change in Pass@k on a procedural dev set); writes ranked tables with each
        probe's cost and the rank agreement of the two to <run>/probe/ (Parquet, JSON, Markdown)."""
        try:
            cfg = load_run_config(config, run_dir, sets)
            pc = with_overrides(cfg.probe, probes=csv_list(probes, str, "--probes"), directions=csv_list(directions, int, "--directions"),
                                alpha=alpha, mode=mode, n_dev=n_dev, seed=seed, max_tokens=max_tokens, batch_size=batch_size,
                                accuracy_n_dev=accuracy_n_dev, accuracy_seed=accuracy_seed,
                                accuracy_n_samples=accuracy_n_samples, accuracy_k=accuracy_k,
                                accuracy_max_new_tokens=accuracy_max_new_tokens,
                                accuracy_temperature=accuracy_temperature)  # fmt: skip
            _do_probe(cfg.model_copy(update={"probe": pc}), force)
        except _USER_ERRORS as e:
            fail(str(e))
