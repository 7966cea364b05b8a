"""`skillray sft`: fine-tune the run's model on a selection with Ray Train + TRL (full or LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, ForceOpt, RunDirOpt, SetOpt, fail, help_of, load_run_config,
                                 run_stage)
from skillray.config import SFTConfig, with_overrides


def register(app) -> None:
    """Add the `sft` command."""

    @app.command()
    def sft(
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        selection: Optional[str] = typer.Option(None, "--selection", "-s", help=help_of(SFTConfig, "selection")),
        budget: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "budget")),
        method: Optional[str] = typer.Option(None, help=help_of(SFTConfig, "method") + " [full|lora]"),
        learning_rate: Optional[float] = typer.Option(None, help=help_of(SFTConfig, "learning_rate")),
        num_epochs: Optional[float] = typer.Option(None, help=help_of(SFTConfig, "num_epochs")),
        max_steps: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "max_steps")),
        lr_scheduler: Optional[str] = typer.Option(None, help=help_of(SFTConfig, "lr_scheduler")),
        warmup_ratio: Optional[float] = typer.Option(None, help=help_of(SFTConfig, "warmup_ratio")),
        per_device_batch_size: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "per_device_batch_size")),
        gradient_accumulation_steps: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "gradient_accumulation_steps")),
        max_seq_len: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "max_seq_len")),
        lora_r: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "lora_r")),
        seed: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "seed")),
        num_workers: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "num_workers")),
        use_gpu: Optional[bool] = typer.Option(None, "--use-gpu/--no-gpu", help=help_of(SFTConfig, "use_gpu")),
        cpus_per_worker: Optional[float] = typer.Option(None, help=help_of(SFTConfig, "cpus_per_worker")),
        gpus_per_worker: Optional[float] = typer.Option(None, help=help_of(SFTConfig, "gpus_per_worker")),
        storage_path: Optional[str] = typer.Option(None, help=help_of(SFTConfig, "storage_path")),
        save_steps: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "save_steps")),
        max_failures: Optional[int] = typer.Option(None, help=help_of(SFTConfig, "max_failures")),
        name: Optional[str] = typer.Option(None, help=help_of(SFTConfig, "name")),
        force: bool = ForceOpt,
    ) -> None:
        """Fine-tune the run's model on a selection's train.jsonl (Ray Train workers running TRL's SFTTrainer).

        Loss on assistant tokens only; cut and dropped examples are counted. Checkpoints go to
        storage_path; a failed worker group restarts from the latest one, and a rerun of an
        unfinished folder resumes. Writes <run>/sft/<name>/model (Hugging Face format, LoRA merged),
        which eval and steering load as model.name_or_path. Progress (steps done/total, polled every
        2 s): a live line on a TTY; without one (a Ray job's log) a plain line at most every
        $SKILLRAY_PROGRESS_EVERY_S seconds (30) while steps move, and the last.
        """
        try:
            cfg = load_run_config(config, run_dir, sets)
            s = with_overrides(
                cfg.sft, selection=selection, budget=budget, method=method, learning_rate=learning_rate,
                num_epochs=num_epochs, max_steps=max_steps, lr_scheduler=lr_scheduler, warmup_ratio=warmup_ratio,
                per_device_batch_size=per_device_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                max_seq_len=max_seq_len, lora_r=lora_r, seed=seed, num_workers=num_workers, use_gpu=use_gpu,
                cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, storage_path=storage_path,
                save_steps=save_steps, max_failures=max_failures, name=name,
            )  # fmt: skip
            run_stage("sft", cfg.model_copy(update={"sft": s}), force)
        except USER_ERRORS as e:
            fail(str(e))
