"""`skillray replicate`: the paper's claims (selection, steering, the probe as a proxy) tested on one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import USER_ERRORS, ForceOpt, RunDirOpt, SetOpt, console, fail, load_run_config, run_stage
from skillray.config import ReplicateConfig, RunConfig
_BEFORE = ["corpus", "extract", "basis", "interpret", "probe"]


def register(app) -> None:
    """Add the `replicate` command."""

    @app.command()
    def replicate(
        config: Path = typer.Argument(..., help="Run config YAML with a `replicate:` section, e.g. configs/replicate.yaml."),
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        force: bool = ForceOpt,
    ) -> None:
        """Test the paper's claims on this run: corpus -> extract -> basis -> interpret -> probe, then the
        probe's best (direction, sign) pair; the steering alpha chosen on a procedural dev set; SFT on the best
        pair's selection vs random, human-skill balanced and coverage selections (several seeds); steering of
        the base and of one fine-tuned model along every probed pair with random controls; SFT on the other top
        and the bottom probe pairs. Writes <run>/replicate/<name>/results.{json,md} and plots after every part
        (hierarchical bootstrap intervals over seeds and problems, Holm-adjusted paired differences, smallest
        detectable effects, the probe's Spearman with the measured gains). Stopped and started again, it
        redoes only what is unfinished. See docs/replication.md.
        """
        from skillray.cli.main import _write_run_config
        from skillray.pipeline import run_pipeline
        from skillray.replicate import run_replicate

        try:
            cfg = load_run_config(config, run_dir, sets)
            cfg = RunConfig.model_validate({**cfg.model_dump(), "stages": _BEFORE,
                                            "replicate": (cfg.replicate or ReplicateConfig()).model_dump()})  # fmt: skip
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            _write_run_config(cfg)

            def on_stage(i: int, n: int, name: str) -> None:
                console.rule(f"[bold][{i + 1}/{n}] {name}")

            run_pipeline(cfg, force, on_stage, run_stage)
            console.rule("[bold]replicate")
            run_replicate(cfg, force=force, log=lambda s: console.print(s, markup=False, highlight=False))
            md = Path(cfg.run_dir) / "replicate" / cfg.replicate.name / "results.md"
            console.print(md.read_text(), markup=False, highlight=False)
        except USER_ERRORS as e:
            fail(str(e))
