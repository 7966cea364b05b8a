"""`skillray select`: SFT data selection along or across skill directions (optionally from the probe's ranking), and baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, csv_list, fail, help_of,
                                 load_run_config, run_stage)
from skillray.config import SelectConfig, with_overrides
from skillray.select.strategies import STRATEGIES


def register(app) -> None:
    """Add the `select` command."""

    @app.command()
    def select(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        strategy: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "strategy")),
        budget: Optional[list[int]] = typer.Option(None, help=help_of(SelectConfig, "budget") + " Repeat for several "
                                                   "(one folder each; the smaller are prefixes of the larger)."),
        direction: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "direction")),
        sign: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "sign")),
        directions: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "directions") + " Comma-separated."),
        signs: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "signs") + " Comma-separated."),
        weights: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "weights") + " Comma-separated."),
        strata: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "strata")),
        from_probe: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "from_probe")),
        from_probe_by: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "from_probe_by")),
        seed: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "seed")),
        name: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "name")),
        decontaminate: Optional[str] = typer.Option(None, help=help_of(SelectConfig, "decontaminate")),
        decontam_n: Optional[int] = typer.Option(None, help=help_of(SelectConfig, "decontam_n")),
        force: bool = ForceOpt,
    ) -> None:
        """Select an ordered, budget-nested subset of the corpus; writes <run>/select/<name>/ (ids, scores, train.jsonl)."""
        try:
            cfg = load_run_config(config, run_dir, sets)
            takes_probe = strategy is None or strategy in STRATEGIES and STRATEGIES[strategy].takes_probe
            if from_probe is None and (directions is not None or not takes_probe):
                # directions given by hand, or a strategy that takes none: the config's from_probe does not apply
                cfg = cfg.model_copy(update={"select": cfg.select.model_copy(update={"from_probe": None})})
            sel = with_overrides(
                cfg.select, strategy=strategy, direction=direction, sign=sign,
                directions=csv_list(directions, int, "--directions"), signs=csv_list(signs, int, "--signs"),
                weights=csv_list(weights, float, "--weights"), strata=strata, from_probe=from_probe,
                from_probe_by=from_probe_by, seed=seed, name=name, decontaminate=decontaminate, decontam_n=decontam_n,
            )  # fmt: skip
            for b in budget or [sel.budget]:
                one = SelectConfig.model_validate({**sel.model_dump(), "budget": b})
                if len(budget or []) > 1 and one.name:
                    one = one.model_copy(update={"name": f"{one.name}-n{b}"})
                run_stage("select", cfg.model_copy(update={"select": one}), force)
        except USER_ERRORS as e:
            fail(str(e))
