"""`skillray basis`: fit the skill basis of the run's activation store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, fail, help_of, load_run_config,
                                 run_stage)
from skillray.config import BasisConfig, with_overrides


def register(app) -> None:
    """Add the `basis` command to the app."""

    @app.command()
    def basis(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        n_components: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "n_components")),
        method: Optional[str] = typer.Option(None, help=help_of(BasisConfig, "method") + " [streaming|exact|incremental]"),
        oversampling: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "oversampling")),
        max_passes: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "max_passes")),
        tol_degrees: Optional[float] = typer.Option(None, help=help_of(BasisConfig, "tol_degrees")),
        seed: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "seed")),
        stability: Optional[bool] = typer.Option(None, "--stability/--no-stability", help=help_of(BasisConfig, "stability")),
        n_bootstrap: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "n_bootstrap")),
        num_workers: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "num_workers")),
        num_cpus_per_worker: Optional[int] = typer.Option(None, help=help_of(BasisConfig, "num_cpus_per_worker")),
        force: bool = ForceOpt,
    ) -> None:
        """Fit the skill basis: streaming PCA over the activation store, sign-fixed and seeded.

        Each pass is a Ray map over the store's shards (joins RAY_ADDRESS or starts a local
        cluster); the matrix is never held in memory. --stability adds split-half and
        bootstrap principal angles per direction.
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            cfg = cfg.model_copy(
                update={
                    "basis": with_overrides(
                        cfg.basis,
                        n_components=n_components,
                        method=method,
                        oversampling=oversampling,
                        max_passes=max_passes,
                        tol_degrees=tol_degrees,
                        seed=seed,
                        stability=stability,
                        n_bootstrap=n_bootstrap,
                        num_workers=num_workers,
                        num_cpus_per_worker=num_cpus_per_worker,
                    )
                }
            )
            run_stage("basis", cfg, force)
        except USER_ERRORS as e:
            fail(str(e))
