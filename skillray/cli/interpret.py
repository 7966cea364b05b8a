"""`skillray interpret`: skill profiles, contrastive labels and their fidelity, and the run report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, fail, help_of, load_run_config,
                                 run_stage)
from skillray.config import InterpretConfig, with_overrides


def register(app) -> None:
    """Add the `interpret` command to the app."""

    @app.command()
    def interpret(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        base_url: Optional[str] = typer.Option(
            None, envvar="OPENAI_BASE_URL", help=help_of(InterpretConfig, "base_url") + " [env: OPENAI_BASE_URL]"
        ),
        model: Optional[str] = typer.Option(None, "--model", help=help_of(InterpretConfig, "model")),
        offline: bool = typer.Option(False, "--offline", help="Ignore any endpoint (config or OPENAI_BASE_URL): offline labeller and judge."),
        projection: Optional[str] = typer.Option(None, help=help_of(InterpretConfig, "projection") + " [centered|cosine]"),
        top_n: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "top_n")),
        n_heldout: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "n_heldout")),
        labeller: Optional[str] = typer.Option(None, help=help_of(InterpretConfig, "labeller") + " [auto|llm|offline]"),
        judge: Optional[str] = typer.Option(None, help=help_of(InterpretConfig, "judge") + " [auto|llm|offline]"),
        max_example_tokens: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "max_example_tokens")),
        label_max_tokens: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "label_max_tokens")),
        timeout_s: Optional[float] = typer.Option(None, help=help_of(InterpretConfig, "timeout_s")),
        max_retries: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "max_retries")),
        max_concurrency: Optional[int] = typer.Option(None, help=help_of(InterpretConfig, "max_concurrency")),
        cache_dir: Optional[str] = typer.Option(None, help=help_of(InterpretConfig, "cache_dir")),
        force: bool = ForceOpt,
    ) -> None:
        """Project every example on every direction, label each direction's two poles, score the labels.

        With an OpenAI-compatible endpoint (--base-url / OPENAI_BASE_URL / interpret.base_url, plus
        --model; the key from $OPENAI_API_KEY or interpret.api_key_env) an LLM names the contrast and
        judges held-out examples; without one, contrastive keywords and a keyword judge stand in.
        Responses are cached on disk; writes <run>/interpret and the report <run>/report/index.html.
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            icfg = with_overrides(
                cfg.interpret,
                base_url=base_url,
                model=model,
                projection=projection,
                top_n=top_n,
                n_heldout=n_heldout,
                labeller=labeller,
                judge=judge,
                max_example_tokens=max_example_tokens,
                label_max_tokens=label_max_tokens,
                timeout_s=timeout_s,
                max_retries=max_retries,
                max_concurrency=max_concurrency,
                cache_dir=cache_dir,
            )
            if offline:
                icfg = InterpretConfig.model_validate({**icfg.model_dump(), "base_url": None, "labeller": "offline", "judge": "offline"})
            run_stage("interpret", cfg.model_copy(update={"interpret": icfg}), force)
        except USER_ERRORS as e:
            fail(str(e))


