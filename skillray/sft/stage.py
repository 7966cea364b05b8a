"""The sft stage: a selection's train.jsonl (or any chat JSONL) -> a fine-tuned model in ``<run>/sft/<name>/``.

Layout::

    <out>/manifest.json            config slice, inputs (model, training lines), summary
    <out>/data/train.parquet       tokenized examples (input_ids, assistant_masks) the workers read
    <out>/checkpoints/<name>/...   Ray Train storage (step-NNNNNNN/ checkpoints, final/); storage_path/<name> if set
    <out>/model/                   the final model, Hugging Face format (LoRA merged), + tokenizer
    <out>/train_log.json           per-step training loss and learning rate

The driver reads and tokenizes the data (counting every cut and dropped example), then a Ray Train
``TorchTrainer`` runs :func:`skillray.sft.train.train_loop` on ``num_workers`` workers. A worker
failure restarts the group from the latest checkpoint (``max_failures``); a killed driver that is
run again with the same settings resumes from the checkpoints in storage too (Ray Train restores
its checkpoint list from ``storage_path``). Workers read ``data/train.parquet`` by path, so on a
multi-node cluster the run directory must be on shared storage.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from skillray.artifacts import StageManifest, atomic_write_json, fingerprint, prepare_stage, read_json, read_manifest
from skillray.config import ModelConfig, SFTConfig

ProgressFn = Callable[[int, int], None]  # (optimizer steps done, total steps)

FORMAT = "skillray.sft/1"

# Settings that change how the work is run or kept, not the trained weights: left out of the stage key.
EXECUTION = ("cpus_per_worker", "gpus_per_worker", "storage_path", "save_steps", "save_total_limit", "max_failures",
             "logging_steps", "name", "selection", "fsdp")  # fmt: skip


def resolve_train_file(run_dir: str | Path, cfg: SFTConfig, train_path: str | Path | None = None) -> tuple[Path, str]:
    """(JSONL path, label) of the training data: ``train_path``, a selection name, or a JSONL path."""
    run_dir = Path(run_dir)
    if train_path is not None:
        p = Path(train_path)
        return p, _label(p)
    sel = cfg.selection
    available = sorted(d.name for d in (run_dir / "select").glob("*") if (d / "train.jsonl").is_file())
    if sel is None:
        raise ValueError(f"sft.selection is not set: name a selection under {run_dir / 'select'} "
                         f"(available: {available or 'none; run `skillray select` first'}) or a JSONL path")  # fmt: skip
    if sel.endswith(".jsonl") or os.sep in sel:
        p = Path(sel)
        if not p.is_file():
            raise FileNotFoundError(f"sft.selection={sel!r}: no such file")
        return p, _label(p)
    d = run_dir / "select" / sel
    m = read_manifest(d)
    if m is None or not m.complete or not (d / "train.jsonl").is_file():
        raise FileNotFoundError(f"sft.selection={sel!r}: no finished selection in {d} (available: "
                                f"{available or 'none'}); run `skillray select --name {sel}` first, or give a "
                                "JSONL path")  # fmt: skip
    return d / "train.jsonl", sel


def sft_config_for_run(run_cfg) -> SFTConfig:
    """A RunConfig's sft section, with ``selection`` defaulting to the selection its `select` section makes."""
    if run_cfg.sft.selection is not None:
        return run_cfg.sft
    from skillray.select.stage import default_name

    return run_cfg.sft.model_copy(update={"selection": run_cfg.select.name or default_name(run_cfg.select)})


def default_sft_name(label: str, cfg: SFTConfig) -> str:
    return f"{label}{f'-n{cfg.budget}' if cfg.budget is not None else ''}-{cfg.method}"


def _label(path: Path) -> str:
    return path.parent.name if path.stem == "train" else path.stem


def output_name(cfg: SFTConfig, train_path: str | Path | None = None) -> str:
    """The folder name ``run_sft`` writes under ``<run>/sft/`` (``cfg.name``, else derived from the data),
    without touching any file."""
    if cfg.name:
        return cfg.name
    if train_path is not None:
        return default_sft_name(_label(Path(train_path)), cfg)
    if cfg.selection is None:
        raise ValueError("sft.selection is not set: name a selection under <run>/select or a JSONL path")
    sel = cfg.selection
    label = _label(Path(sel)) if sel.endswith(".jsonl") or os.sep in sel else sel
    return default_sft_name(label, cfg)


def sft_key_config(cfg: SFTConfig, model_cfg: ModelConfig, dtype: str, bf16: bool) -> dict:
    """The config slice that decides the trained weights (what the manifest records and compares)."""
    sft = {k: v for k, v in cfg.model_dump().items() if k not in EXECUTION}
    if cfg.method == "full":
        for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
            sft.pop(k)
    sft["bf16"] = bf16
    from skillray.models import model_key

    return {"sft": sft, "model": model_key(model_cfg, dtype), "dtype": dtype}


def total_steps(examples: int, cfg: SFTConfig) -> int:
    """Optimizer steps the HF Trainer will run (max_steps, or epochs over the per-rank batches)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_rank = math.ceil(examples / max(1, cfg.num_workers))  # DistributedSampler pads to equal shards
    batches = math.ceil(per_rank / cfg.per_device_batch_size)
    per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.num_epochs))


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder by hard links where the filesystem allows (model weights are large), else by copying."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _latest_step(train_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in train_dir.glob("step-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


def run_sft(run_dir: str | Path, cfg: SFTConfig, model_cfg: ModelConfig, force: bool = False,
            progress: ProgressFn | None = None, *, train_path: str | Path | None = None,
            out_dir: str | Path | None = None, _fault: dict | None = None) -> StageManifest:  # fmt: skip
    """Fine-tune ``model_cfg`` on a selection (or ``train_path``) with Ray Train + TRL; return the manifest.

    Parameters
    ----------
    run_dir : the run directory (selections are looked up in ``<run>/select/``).
    cfg : SFTConfig; ``cfg.selection`` names the data unless ``train_path`` is given.
    model_cfg : the base model.
    train_path : a chat JSONL of another stage (``{"messages": [...]}`` per line) to train on instead.
    out_dir : output folder (default ``<run>/sft/<name>``); the model lands in ``<out_dir>/model``.
    _fault : test hook, ``{"step": N, "rank": R, "marker": path}``: SIGKILL worker R at step N once.

    A finished folder with the same settings is skipped, an unfinished one resumes from its
    checkpoints; one made differently raises StageMismatchError unless ``force``. Raises
    SFTDataError / ValueError naming a bad line or setting, ray.train.TrainingFailedError when
    the workers fail more than ``max_failures`` times.
    """
    from skillray.eval.decontam import training_overlaps
    from skillray.models import choose_dtype, load_tokenizer, resolve_model
    from skillray.sft.data import read_train_lines, tokenize_lines, write_parquet

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    src, label = resolve_train_file(run_dir, cfg, train_path)
    name = output_name(cfg, train_path)
    assert cfg.name or name == default_sft_name(label, cfg)
    stage_dir = Path(out_dir) if out_dir is not None else run_dir / "sft" / name
    lines = read_train_lines(src, cfg.budget)
    resolved = resolve_model(model_cfg)
    device = "cuda" if cfg.use_gpu else "cpu"
    dtype_choice = choose_dtype(model_cfg.dtype, device)
    bf16 = (cfg.use_gpu or dtype_choice.name == "bfloat16") if cfg.bf16 is None else cfg.bf16
    # On CPU, bf16 is autocast over float32 master weights (optimizer updates below bf16's 8-bit mantissa would be
    # lost on bf16 weights); GPUs keep loading the weights in the resolved dtype, as before.
    dtype = "float32" if bf16 and device == "cpu" else dtype_choice.name
    inputs = {"model": resolved.fingerprint, "train": fingerprint(lines)}
    want = StageManifest("sft", config=sft_key_config(cfg, model_cfg, dtype, bf16), inputs=inputs)
    action = prepare_stage(stage_dir, want, force)
    if action == "skip":
        return read_manifest(stage_dir)
    storage = Path(cfg.storage_path).resolve() if cfg.storage_path else (stage_dir / "checkpoints").resolve()
    train_dir = storage / name  # the Ray Train run (its name = the stage's name, so runs can share a storage_path)
    if action == "fresh" and train_dir.exists():
        shutil.rmtree(train_dir)  # checkpoints of another config must not be resumed
    want.write(stage_dir)

    tok = load_tokenizer(resolved, model_cfg.trust_remote_code)
    data = tokenize_lines(lines, tok, cfg.max_seq_len, source=str(src))
    stats = data.stats()
    if data.truncated or data.dropped:
        import warnings

        warnings.warn(f"sft {name}: {data.truncated} of {len(lines)} examples cut at max_seq_len={cfg.max_seq_len} "
                      f"({data.tokens_cut} tokens), {data.dropped} dropped (no assistant token left)", stacklevel=2)  # fmt: skip
    data_path = (stage_dir / "data" / "train.parquet").resolve()
    write_parquet(data, data_path)
    n_steps = total_steps(data.examples, cfg)

    result = _fit(cfg, model_cfg, resolved, dtype, bf16, data_path, train_dir, n_steps, progress, _fault)
    metrics = result["metrics"]
    model_dir = stage_dir / "model"
    tmp = stage_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(result["final_dir"], tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)

    losses = [(h["step"], h["loss"]) for h in metrics["log_history"] if "loss" in h]
    atomic_write_json(stage_dir / "train_log.json", {"log_history": metrics["log_history"]})
    want.outputs = {"format": FORMAT, "name": name, "model": "model", "train_log": "train_log.json",
                    "data": "data/train.parquet", "storage": str(train_dir), "source": str(src)}  # fmt: skip
    want.summary = {
        "name": name, "source": str(src), "method": cfg.method, "workers": cfg.num_workers,
        "global_batch": max(1, cfg.num_workers) * cfg.per_device_batch_size * cfg.gradient_accumulation_steps,
        **stats,
        "steps": metrics["step"], "planned_steps": n_steps,
        "train_loss_first": losses[0][1] if losses else None, "train_loss_last": losses[-1][1] if losses else None,
        "resumed_from_step": metrics.get("resumed_from_step"),
        "decontamination": training_overlaps(src.parent, len(lines)),  # the selection's overlaps, lines trained on
        "dtype": f"weights {dtype}, bf16 autocast {'on' if bf16 else 'off'} ({dtype_choice.reason})",
        "model": str(model_dir),
        "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    want.complete = True
    want.write(stage_dir)
    return want


def _fit(cfg: SFTConfig, model_cfg: ModelConfig, resolved, dtype: str, bf16: bool, data_path: Path, train_dir: Path,
         n_steps: int, progress: ProgressFn | None, fault: dict | None) -> dict:  # fmt: skip
    """Run the TorchTrainer; return the final metrics and the folder of the final model."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from skillray.raytools import ensure_ray
    from skillray.sft.train import FINAL, train_loop

    ensure_ray()
    loop_config = {
        "model_path": resolved.path, "revision": resolved.revision, "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": dtype, "bf16": bf16, "data": str(data_path), "use_gpu": cfg.use_gpu,
        "threads": int(cfg.cpus_per_worker), "fault": fault,
        **{k: getattr(cfg, k) for k in (
            "method", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "num_epochs",
            "max_steps", "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "per_device_batch_size",
            "gradient_accumulation_steps", "gradient_checkpointing", "seed", "save_steps", "logging_steps", "fsdp")},
    }  # fmt: skip
    local = cfg.num_workers == 0
    if local:  # Ray Train's local mode: the loop runs in this process, without storage or failure recovery
        loop_config["local_final_dir"] = str(train_dir / "final-local" / FINAL)
        shutil.rmtree(train_dir / "final-local", ignore_errors=True)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=train_dir.name, storage_path=str(train_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.save_total_limit + 1),  # + the final model
        ),
    )  # fmt: skip
    done = threading.Event()
    if progress is not None:
        def poll() -> None:
            while not done.wait(2.0):
                progress(min(_latest_step(train_dir), n_steps), n_steps)

        threading.Thread(target=poll, daemon=True).start()
    threads = None
    if local:
        import torch

        threads = torch.get_num_threads()
    try:
        result = trainer.fit()
    finally:
        done.set()
        if threads is not None:
            torch.set_num_threads(threads)
    if local:
        final = Path(loop_config["local_final_dir"])
    elif result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a final checkpoint in {train_dir}")
    else:
        final = Path(result.checkpoint.path) / FINAL
    if not final.is_dir():
        raise RuntimeError(f"{final.parent}: the last checkpoint holds no final model ({FINAL}/)")
    metrics = read_json(final / "metrics.json")
    if progress is not None:
        progress(metrics["step"], n_steps)
    return {"metrics": metrics, "final_dir": final}
