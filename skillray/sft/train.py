"""What every Ray Train worker runs: TRL's SFTTrainer on the tokenized data, checkpoints reported to Ray Train.

``train_loop(config)`` is the ``train_loop_per_worker`` of a ``TorchTrainer``. Ray Train has already
set up the process group (gloo on CPU, NCCL on GPU) and the RANK / WORLD_SIZE environment that
transformers reads, so the HF Trainer runs data parallel across the workers.

Checkpoints: the HF Trainer writes ``checkpoint-<step>/`` (weights or adapter, optimizer, scheduler,
trainer state, one RNG file per rank) into a worker-local folder every ``save_steps``; a callback
hands it to ``ray.train.report``, which persists it under the run's ``storage_path`` (workers' files
are merged into one folder). A restarted worker group gets the latest one from
``ray.train.get_checkpoint()`` and resumes the HF Trainer from it: global step, optimizer, schedule,
RNG and the data order continue where the checkpoint left them.

At the end, rank 0 reports the final model (LoRA merged into the base) in Hugging Face format as
the last checkpoint, with the loss history as metrics; the driver copies it to ``<out>/model``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

FINAL = "final"  # subfolder of the last Ray checkpoint holding the saved model


def _kill_once(fault: dict, step: int, rank: int) -> None:
    """Fault injection for tests: SIGKILL this worker process at ``step`` on ``rank``, once (marker file)."""
    if step == fault["step"] and rank == fault.get("rank", 0):
        marker = Path(fault["marker"])
        if not marker.exists():
            _wait_for_reports_to_be_taken()
            marker.write_text(f"killed rank {rank} at step {step}, pid {os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_reports_to_be_taken(timeout_s: float = 120.0) -> None:
    """Test hook: block until this worker's earlier reports are uploaded and taken by the Ray Train controller, so
    a kill lands after the last checkpoint is registered. Checkpoints are uploaded in the background (ASYNC), and a
    worker that dies before its upload finishes, or before the controller's next poll (every 2 s), loses that
    checkpoint: the restart then begins from the one before, which is right for a real failure but makes a
    kill-and-resume test depend on timing. Reads Ray Train v2's internal context (no public API says "persisted")."""
    import time

    from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S
    from ray.train.v2._internal.execution.context import get_train_context

    ctx = get_train_context()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ctx.current_report_index == ctx.report_call_index and ctx.get_result_queue().empty():
            break
        time.sleep(0.1)
    # The other ranks' reports of the same checkpoint are taken in the controller's same or next poll.
    time.sleep(DEFAULT_HEALTH_CHECK_INTERVAL_S + 0.5)


def _final_again(checkpoint, rank: int) -> bool:
    """If the latest checkpoint is the final model, report it again (all ranks) and say so."""
    import ray.train

    with checkpoint.as_directory() as d:
        if not Path(d, FINAL).is_dir():
            return False
        metrics = json.loads(Path(d, FINAL, "metrics.json").read_text())
    ray.train.report(metrics, checkpoint=checkpoint if rank == 0 else None, checkpoint_dir_name="final")
    return True


def train_loop(config: dict) -> None:
    import ray.train
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from skillray.models import keep_freed_memory

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    use_gpu = config["use_gpu"]
    if not use_gpu and not config.get("local_final_dir"):
        torch.set_num_threads(max(1, int(config["threads"])))  # Ray sets OMP_NUM_THREADS=1 in workers

    tok = AutoTokenizer.from_pretrained(config["model_path"], revision=config["revision"],
                                        trust_remote_code=config["trust_remote_code"])  # fmt: skip
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = getattr(torch, config["dtype"])
    if config.get("fsdp"):
        # Read before the Trainer exists: from_pretrained loads the weights on rank 0 only (the rest on the meta
        # device, filled by FSDP's broadcast) when it sees these (the Trainer would set them too late).
        os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    keep_freed_memory()
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], revision=config["revision"], dtype=dtype,
                                                 trust_remote_code=config["trust_remote_code"])  # fmt: skip
    train = Dataset.from_parquet(config["data"])

    peft_config = None
    if config["method"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                                 target_modules=config["lora_target_modules"], task_type="CAUSAL_LM")  # fmt: skip

    local = Path(tempfile.mkdtemp(prefix=f"skillray-sft-rank{rank}-"))
    fault = config.get("fault")

    class ReportToRay(TrainerCallback):
        """Hand each HF checkpoint to Ray Train (every rank reports: ray.train.report is a barrier)."""

        def on_save(self, args, state, control, **kwargs):
            src = local / f"checkpoint-{state.global_step}"
            loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
            metrics = {"step": state.global_step, "loss": loss, "final": False}
            # The HF checkpoint folder itself is the Ray checkpoint (the ranks' files are merged in storage). It is
            # uploaded in the background (training goes on; Ray deletes the local folder once it is persisted), so
            # the GPUs do not wait on a multi-GB copy to shared storage.
            ckpt = ray.train.Checkpoint.from_directory(src) if src.is_dir() else None
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"step-{state.global_step:07d}",
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)  # fmt: skip

        def on_step_end(self, args, state, control, **kwargs):
            if fault:
                _kill_once(fault, state.global_step, rank)

    args = TrlSFTConfig(
        output_dir=str(local),
        per_device_train_batch_size=config["per_device_batch_size"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        learning_rate=config["learning_rate"],
        num_train_epochs=config["num_epochs"],
        max_steps=config["max_steps"] or -1,
        lr_scheduler_type=config["lr_scheduler"],
        warmup_steps=config["warmup_ratio"],  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config["weight_decay"],
        max_grad_norm=config["max_grad_norm"],
        bf16=config["bf16"],
        # transformers 5's name for it; under FSDP it goes in fsdp_config (the Trainer's own adds an all-gather)
        activation_checkpointing=config["gradient_checkpointing"] and not config.get("fsdp"),
        seed=config["seed"],
        data_seed=config["seed"],
        logging_steps=config["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config["save_steps"],
        report_to="none",
        disable_tqdm=True,
        use_cpu=not use_gpu,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        # The data is already tokenized, cut and masked (skillray.sft.data); TRL only builds labels from
        # the assistant masks, and its own truncation is off so every cut is the one we counted.
        max_length=None,
        assistant_only_loss=False,
        completion_only_loss=None,
        packing=False,
        dataset_num_proc=None,
        **({"fsdp": config["fsdp"], "fsdp_config": fsdp_config(config)} if config.get("fsdp") else {}),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=peft_config,
                         callbacks=[ReportToRay()])  # fmt: skip

    resume, resumed_from = None, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and _final_again(checkpoint, rank):
        return  # a rerun after the final model was already reported (the driver died before copying it)
    # On a local or shared filesystem as_directory() is the stored checkpoint itself (no copy per worker; the HF
    # Trainer reads it all before its first step, long before rotation could delete it); else a download.
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as ckpt_dir:
        if ckpt_dir is not None:
            resume = str(ckpt_dir)
            resumed_from = json.loads(Path(resume, "trainer_state.json").read_text())["global_step"]
        trainer.train(resume_from_checkpoint=resume)

    state = trainer.state
    metrics = {"step": state.global_step, "final": True, "resumed_from_step": resumed_from,
               "log_history": [{k: v for k, v in h.items()} for h in state.log_history]}  # fmt: skip
    if config.get("local_final_dir"):
        # num_workers=0: this process is the only rank and Ray Train keeps no storage; write the model directly.
        _save_final(trainer, tok, config, metrics, Path(config["local_final_dir"]))
        ray.train.report(metrics)
        shutil.rmtree(local, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        full = None
        if config.get("fsdp"):
            # Sharded weights: every rank takes part in gathering the full state dict (onto rank 0's CPU).
            full = trainer.accelerator.get_state_dict(trainer.model)
        if rank == 0:
            _save_final(trainer, tok, config, metrics, Path(tmp, FINAL), full)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name="final")
    shutil.rmtree(local, ignore_errors=True)


def fsdp_config(config: dict) -> dict:
    """The HF Trainer's FSDP tuning for full fine-tuning of large models: checkpoints as one shard per rank,
    written in parallel (a full state dict would be gathered, upcast and written by rank 0 alone: ~128 GB per
    checkpoint for an 8B model with its optimizer state), the pretrained weights read by rank 0 only and
    broadcast (not one full host copy per rank), and activation checkpointing FSDP's way (no extra all-gather)."""
    return {"state_dict_type": "SHARDED_STATE_DICT", "cpu_ram_efficient_loading": True,
            "activation_checkpointing": bool(config["gradient_checkpointing"])}  # fmt: skip


def _save_final(trainer, tok, config: dict, metrics: dict, out: Path, full_state: dict | None = None) -> None:
    """The trained model in Hugging Face format (LoRA merged: eval and steering load it like any model). Under
    FSDP ``full_state`` is the gathered state dict, saved in bfloat16 (16 GB for an 8B model, not 32 in fp32)."""
    if full_state is not None:
        import torch

        full_state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in full_state.items()}
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(out, state_dict=full_state,
                                                                        safe_serialization=True)  # fmt: skip
    else:
        final = trainer.model
        if config["method"] == "lora":
            final = final.merge_and_unload()
        final.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, default=str))
