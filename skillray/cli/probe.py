"""`skillray probe`: rank skill directions and signs by proxy interventions (likelihood, accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, csv_list, fail, help_of,
                                 load_run_config, run_stage)
from skillray.config import STEER_MODES, ProbeConfig, with_overrides


def register(app) -> None:
    """Add the `probe` command."""

    @app.command()
    def probe(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        probes: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "probes") + " Comma-separated."),
        directions: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "directions") + " Comma-separated."),
        alpha: Optional[float] = typer.Option(None, help=help_of(ProbeConfig, "alpha")),
        mode: Optional[str] = typer.Option(None, help=help_of(ProbeConfig, "mode") + f" [{'|'.join(STEER_MODES)}]"),
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
        force: bool = ForceOpt,
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
            run_stage("probe", cfg.model_copy(update={"probe": pc}), force)
        except USER_ERRORS as e:
            fail(str(e))
