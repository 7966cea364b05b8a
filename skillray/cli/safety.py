"""`skillray safety`: adversarial training data by coverage of the model's skill space.

`skillray safety generate` writes the offline guarded-secret benchmark to a JSONL file;
`skillray safety run` runs the whole experiment (pool basis, selections, LoRA refusal SFT per
strategy and budget, held-out attack success and over-refusal) into <run>/safety/.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ForceOpt, RunDirOpt, SetOpt, csv_list, fail, help_of, load_run_config,
                                 print_summary, run_stage)
from skillray.config import SafetyConfig, with_overrides

def register(app) -> None:
    """Add the `safety` command group (generate, run) to the app. Not a pipeline stage: `skillray run` skips it."""
    safety_app = typer.Typer(help="Safety alignment data chosen by coverage of the model's own skill space.",
                             no_args_is_help=True)  # fmt: skip
    app.add_typer(safety_app, name="safety")

    @safety_app.command("generate")
    def generate_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write (one prompt per line, with its split)."),
        seed: int = typer.Option(0, help=help_of(SafetyConfig, "seed")),
        attacks_per_template: int = typer.Option(8, help=help_of(SafetyConfig, "attacks_per_template")),
        benign_per_template: int = typer.Option(8, help=help_of(SafetyConfig, "benign_per_template")),
        eval_templates_per_family: int = typer.Option(1, help=help_of(SafetyConfig, "eval_templates_per_family")),
    ) -> None:
        """Write the offline guarded-secret benchmark: attacks of 16 families and benign requests, split by template."""
        from skillray.safety import generate_guarded_secret, write_items

        try:
            items = generate_guarded_secret(seed, attacks_per_template, benign_per_template, eval_templates_per_family)
        except ValueError as e:
            fail(str(e))
        write_items(out, items)
        counts = collections.Counter((it.kind, it.split) for it in items)
        print_summary("safety generate", {
            "output": str(out), "attacks": sum(it.kind == "attack" for it in items),
            "families": len({it.family for it in items if it.kind == "attack"}),
            **{f"{k} {s}": n for (k, s), n in sorted(counts.items())},
        })  # fmt: skip

    @safety_app.command("run")
    def run_cmd(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run config YAML (default: configs/demo.yaml; "
                                              "its `safety` section, or the defaults when it has none)."),
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        budgets: Optional[str] = typer.Option(None, help=help_of(SafetyConfig, "budgets") + " Comma-separated."),
        strategies: Optional[str] = typer.Option(None, help=help_of(SafetyConfig, "strategies") + " Comma-separated."),
        layer: Optional[int] = typer.Option(None, help=help_of(SafetyConfig, "layer")),
        n_components: Optional[int] = typer.Option(None, help=help_of(SafetyConfig, "n_components")),
        n_eval_attacks: Optional[int] = typer.Option(None, help=help_of(SafetyConfig, "n_eval_attacks")),
        max_new_tokens: Optional[int] = typer.Option(None, help=help_of(SafetyConfig, "max_new_tokens")),
        scorer: Optional[str] = typer.Option(None, help=help_of(SafetyConfig, "scorer") + " [auto|leak|refusal|judge]"),
        base_url: Optional[str] = typer.Option(None, help=help_of(SafetyConfig, "base_url") + " With --judge-model "
                                               "and no base_url in the config, OPENAI_BASE_URL is used."),
        model: Optional[str] = typer.Option(None, "--judge-model", help=help_of(SafetyConfig, "model")),
        force: bool = ForceOpt,
    ) -> None:
        """Pool basis, coverage / text-diversity / random selections, LoRA refusal SFT per budget, held-out
        attack success and over-refusal with bootstrap intervals; writes <run>/safety/ (results.md, curve.png).

        Extraction, fine-tuning and reply generation run on Ray (joins RAY_ADDRESS or starts a local
        cluster). Finished pieces are reused on a rerun; changing only scoring settings re-scores the
        same replies.
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            sc = with_overrides(
                cfg.safety or SafetyConfig(), budgets=csv_list(budgets, int, "--budgets"),
                strategies=csv_list(strategies, str, "--strategies"), layer=layer, n_components=n_components,
                n_eval_attacks=n_eval_attacks, max_new_tokens=max_new_tokens, scorer=scorer,
                base_url=base_url or (os.environ.get("OPENAI_BASE_URL") if (cfg.safety is None or cfg.safety.base_url
                                                                            is None) and model else None),
                model=model,
            )  # fmt: skip
            run_stage("safety", cfg.model_copy(update={"safety": sc}), force)
        except USER_ERRORS as e:
            fail(str(e))
