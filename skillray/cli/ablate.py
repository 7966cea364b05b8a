"""`skillray ablate`: selection strategies x budgets x seeds through select -> sft -> eval, one results table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, fail, help_of, load_run_config,
                                 run_stage)
from skillray.config import AblateConfig, SelectConfig, TrackingConfig, with_overrides
from skillray.select.strategies import STRATEGIES


def _ints(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {value!r}: expected comma-separated integers such as 100,200") from None


def register(app) -> None:
    """Add the `ablate` command."""

    @app.command()
    def ablate(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        strategy: Optional[list[str]] = typer.Option(
            None, "--strategy", help="Strategy to compare (repeat for several), replacing the config's list: "
            + ", ".join(STRATEGIES) + " (default settings; put others in the YAML)."),  # fmt: skip
        budgets: Optional[str] = typer.Option(None, help=help_of(AblateConfig, "budgets") + " Comma-separated."),
        seeds: Optional[str] = typer.Option(None, help=help_of(AblateConfig, "seeds") + " Comma-separated."),
        baseline: Optional[str] = typer.Option(None, help=help_of(AblateConfig, "baseline")),
        keep_models: Optional[bool] = typer.Option(None, "--keep-models/--delete-models", help=help_of(AblateConfig, "keep_models")),
        name: Optional[str] = typer.Option(None, help=help_of(AblateConfig, "name")),
        tracking: Optional[str] = typer.Option(None, "--tracking", help=help_of(TrackingConfig, "backend")),
        tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=help_of(TrackingConfig, "uri")),
        force: bool = ForceOpt,
    ) -> None:
        """Fine-tune on every strategy x budget x seed selection and evaluate each model; writes
        <run>/ablate/<name>/results.{parquet,json,md} (mean, spread over seeds, hierarchical bootstrap interval
        over seeds and problems, paired comparison with the baseline strategy with Holm-adjusted p-values, the
        smallest detectable effect, training tokens) and a plot. Every cell is a finished-or-not stage: a rerun
        redoes only what is missing. Training and eval settings: the section's sft/eval, else the run's.

        Progress: the cell (k of N, the base eval counted), its stage (select, sft, eval; reused for a cell
        finished earlier) with the stage's own count (sft steps, eval samples), the cells done and a grid ETA
        from the stages finished so far (none before the first; 'ETA >= ... (eval not timed yet)' while a
        stage kind with work left has none finished). On a TTY a live line; without one (a Ray job's log) a
        plain line on each new cell or stage, at most one per $SKILLRAY_PROGRESS_EVERY_S seconds (30) in
        between, and the last.
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            ab = cfg.ablate or AblateConfig()
            upd = {k: v for k, v in {"budgets": _ints(budgets, "--budgets"), "seeds": _ints(seeds, "--seeds"),
                                     "baseline": baseline, "keep_models": keep_models, "name": name}.items()
                   if v is not None}  # fmt: skip
            if strategy:
                upd["strategies"] = [SelectConfig(strategy=s).model_dump() for s in strategy]
            ab = AblateConfig.model_validate({**ab.model_dump(), **upd})
            tr = with_overrides(cfg.tracking, backend=tracking, uri=tracking_uri)
            run_stage("ablate", cfg.model_copy(update={"ablate": ab, "tracking": tr}), force)
        except USER_ERRORS as e:
            fail(str(e))
