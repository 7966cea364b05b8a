"""`skillray plan CONFIG --gpus N --gpu-memory GB`: what a run costs before anything runs.

Per stage: FLOPs, GPU-hours at a stated utilisation, disk (store, checkpoints, models), memory per GPU,
and the checks that would otherwise fail hours in (a context too short for prompt + new tokens, a
fine-tuning that does not fit the GPUs). Every number is an estimate from the model's shape and the
config, with its assumptions printed next to it; token counts are upper bounds (``extract.max_tokens`` /
``sft.max_seq_len`` per record) unless a local corpus file is there to be measured.

The FLOP rules are the standard ones (Kaplan et al. 2020; Narayanan et al. 2021): a forward pass costs
2 x params FLOPs per token, training 6 x params (8 x with gradient checkpointing, which reruns the
forward), LoRA ~4 x (no weight gradients of the frozen base). Memory of full fine-tuning with AdamW in
mixed precision: 16 bytes per parameter (bf16 weights and gradients, fp32 master weights, two fp32
moments), sharded over the workers by FSDP's full_shard. Decoding is memory-bound, so generation runs
at a lower utilisation (``--decode-mfu``) than the compute-bound stages (``--mfu``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from skillray.config import EvalConfig, ModelConfig, RunConfig, SFTConfig


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    hidden: int
    intermediate: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    max_positions: int
    tied_embeddings: bool = False
    source: str = ""

    @property
    def params(self) -> int:
        kv = self.hidden * self.n_kv_heads // self.n_heads
        block = 2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        return self.n_layers * block + self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


# Published configs (config.json on the hub) of the recipes' models, for planning on a machine that cannot
# download them; a local folder, a GGUF file or a hub cache is read instead when there is one.
KNOWN_SHAPES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": ModelShape(32, 4096, 14336, 128256, 32, 8, 8192),
    "meta-llama/Llama-3.1-8B-Instruct": ModelShape(32, 4096, 14336, 128256, 32, 8, 131072),
    "Qwen/Qwen2.5-3B-Instruct": ModelShape(36, 2048, 11008, 151936, 16, 2, 32768, tied_embeddings=True),
    "mistralai/Mistral-7B-Instruct-v0.2": ModelShape(32, 4096, 14336, 32000, 32, 8, 32768),
}
# Problems in the hub benchmarks' splits (for sizing eval when they cannot be downloaded here).
KNOWN_BENCHMARK_SIZES = {"math500": 500, "amc": 83, "aime24": 30, "gsm8k": 1319}
PROMPT_TOKENS = 256  # an eval prompt (chat template + instruction + problem): assumed, not measured


def model_shape(cfg: ModelConfig) -> ModelShape:
    """The model's shape from its config (local folder, GGUF, hub cache), else the known recipes' table."""
    from transformers import AutoConfig

    from skillray.models import resolve_model

    name = cfg.name_or_path
    try:
        if name in KNOWN_SHAPES and not Path(name).exists():
            raise OSError
        path = resolve_model(cfg).path
        mc = AutoConfig.from_pretrained(path, revision=cfg.revision, local_files_only=True)
        source = f"config.json of {path}"
    except (OSError, ValueError) as e:
        if name in KNOWN_SHAPES:
            return ModelShape(**{**asdict(KNOWN_SHAPES[name]), "source": "published config (skillray.plan.KNOWN_SHAPES)"})
        raise ValueError(f"model.name_or_path={name!r}: no config.json here to read its shape ({e}); give a local "
                         f"folder or a downloaded hub id, or add it to skillray.plan.KNOWN_SHAPES") from e  # fmt: skip
    heads = getattr(mc, "num_attention_heads", 1)
    return ModelShape(n_layers=mc.num_hidden_layers, hidden=mc.hidden_size, intermediate=mc.intermediate_size,
                      vocab=mc.vocab_size, n_heads=heads, n_kv_heads=getattr(mc, "num_key_value_heads", None) or heads,
                      max_positions=getattr(mc, "max_position_embeddings", 0) or 0,
                      tied_embeddings=bool(getattr(mc, "tie_word_embeddings", False)), source=source)  # fmt: skip


def corpus_size(cfg: RunConfig) -> tuple[int, float, str]:
    """(records, tokens per record, where both come from). Tokens are capped at extract.max_tokens."""
    c, cap = cfg.corpus, cfg.extract.max_tokens
    if c.source == "generate":
        n = sum(c.task_sizes.values()) if c.task_sizes else c.size_per_task * len(c.tasks)
        n, how = min(n, c.limit or n), "generated"
    elif c.path and Path(c.path).is_file():
        lines = Path(c.path).read_text(errors="replace").splitlines()
        n = min(len(lines), c.limit or len(lines))
        sample = [len(x) for x in lines[:500]]
        per = min(cap, sum(sample) / max(len(sample), 1) / 4)  # ~4 characters per token (English, BPE)
        return n, per, f"{c.path}: {n} records, ~{per:.0f} tokens each (characters / 4, first 500 lines)"
    elif c.limit:
        n, how = c.limit, "corpus.limit"
    else:
        raise ValueError("corpus: the number of records is unknown before download; set corpus.limit to plan")
    return n, float(cap), f"{how}: {n} records, at most {cap} tokens each (extract.max_tokens)"


def eval_problems(ev: EvalConfig) -> int:
    n = 0
    for b in ev.benchmarks:
        if b.name.startswith("procedural"):
            size = b.size_per_task * len(b.tasks or [1] * 6)
        else:
            size = KNOWN_BENCHMARK_SIZES.get(b.name, 500)
        n += min(size, b.limit or size)
    return n


def _sft_plan(sft: SFTConfig, shape: ModelShape, examples: int, per_record: float) -> dict:
    workers = max(sft.num_workers, 1)
    per_seq = min(per_record, sft.max_seq_len)
    if sft.max_steps is None:
        tokens = examples * per_seq * sft.num_epochs
    else:
        tokens = sft.max_steps * sft.per_device_batch_size * sft.gradient_accumulation_steps * workers * per_seq
    p = shape.params
    lora = sft.method == "lora"
    flops = (4 if lora else 8 if sft.gradient_checkpointing else 6) * p * tokens
    sharded = bool(sft.fsdp) and not lora
    state = 2 * p if lora else 16 * p / (workers if sharded else 1)  # LoRA: frozen bf16 base (adapters are small)
    # activations of one micro-batch: ~34 x hidden bytes per token per layer in bf16 without checkpointing
    # (Korthikanti et al. 2022, without the attention-score term that flash attention avoids); 2 x hidden per
    # layer with it (only the block inputs are kept)
    act = sft.per_device_batch_size * sft.max_seq_len * shape.hidden * shape.n_layers * (2 if sft.gradient_checkpointing else 34)
    ckpt = 2 * p if lora else 16 * p  # a resumable full checkpoint holds the optimizer state
    return {"train_tokens": tokens, "flops": flops, "gpus": workers, "memory_per_gpu": state + act,
            "disk": ckpt * min(sft.save_total_limit, 2) + 2 * p, "sharded": sharded}  # fmt: skip


def plan(cfg: RunConfig, gpus: int, gpu_memory_gb: float, gpu_tflops: float = 989.0, mfu: float = 0.4,
         decode_mfu: float = 0.1) -> dict:  # fmt: skip
    """The run's cost and checks, per stage (see the module docstring for the rules)."""
    shape = model_shape(cfg.model)
    p = shape.params
    peak = gpus * gpu_tflops * 1e12
    n, per_record, corpus_how = corpus_size(cfg)
    stages, checks = [], []

    def add(stage: str, flops: float, util: float, disk: float = 0.0, memory: float = 0.0, note: str = "", n_gpus=None):
        g = n_gpus or gpus
        hours = flops / (g * gpu_tflops * 1e12 * util) / 3600 if flops else 0.0
        stages.append({"stage": stage, "flops": flops, "gpus": g, "wall_hours": hours, "gpu_hours": hours * g,
                       "disk_bytes": disk, "memory_per_gpu_bytes": memory, "note": note})  # fmt: skip

    weights = 2 * p  # bf16
    from skillray.models import normalize_layers

    layers = len(normalize_layers(cfg.extract.layers, shape.n_layers))
    dim = layers * shape.hidden
    store = n * dim * (2 if cfg.extract.store_dtype == "float16" else 4)
    add("extract", 2 * p * n * per_record, mfu, store, weights, f"{n} x {dim:,} store ({cfg.extract.store_dtype})")
    k = cfg.basis.n_components + cfg.basis.oversampling
    add("basis", 0.0, mfu, 0.0, 0.0, f"<= {cfg.basis.max_passes} reads of the {store / 1e9:.1f} GB store, "
        f"2 x {n} x {dim:,} x {k} FLOPs each, on CPUs")  # fmt: skip
    dirs = len(cfg.probe.directions) if cfg.probe.directions is not None else cfg.basis.n_components
    probe_tokens = (2 * dirs + 1) * cfg.probe.n_dev * min(per_record, cfg.probe.max_tokens)
    add("probe", 2 * p * probe_tokens, mfu, 0.0, weights, f"{2 * dirs} steered arms + base, {cfg.probe.n_dev} dev records")

    def eval_cost(ev: EvalConfig, arms: int) -> tuple[float, int]:
        seqs = eval_problems(ev) * ev.n_samples * arms
        return 2 * p * seqs * (PROMPT_TOKENS + ev.max_new_tokens), seqs

    sft_budget = cfg.sft.budget or cfg.select.budget or n
    s = _sft_plan(cfg.sft, shape, min(sft_budget, n), per_record)
    add("sft", s["flops"], mfu, s["disk"], s["memory_per_gpu"], f"{s['train_tokens']:.3g} tokens, {cfg.sft.method}"
        + (", FSDP full_shard" if s["sharded"] else ""), n_gpus=min(s["gpus"], gpus))  # fmt: skip
    arms = 1 + (len(cfg.eval.sweep.directions) * len(cfg.eval.sweep.signs) * len(cfg.eval.sweep.alphas)
                if cfg.eval.sweep else 0)  # fmt: skip
    f, seqs = eval_cost(cfg.eval, arms)
    f2, _ = eval_cost(cfg.eval, 1)  # the fine-tuned model
    add("eval", f + f2, decode_mfu, 0.0, weights, f"{seqs} sequences x <= {cfg.eval.max_new_tokens} new tokens, {arms} arm(s) + fine-tuned")
    evals = [("eval", cfg.eval)]
    if cfg.ablate is not None:
        ab = cfg.ablate
        ev = ab.eval or cfg.eval
        evals.append(("ablate.eval", ev))
        cells = [(b, len(ab.strategies) * len(ab.seeds)) for b in ab.budgets]
        flops = disk = mem = 0.0
        for budget, count in cells:
            c = _sft_plan(ab.sft or cfg.sft, shape, min(budget, n), per_record)
            flops += count * c["flops"]
            mem, disk = max(mem, c["memory_per_gpu"]), max(disk, c["disk"])
        add("ablate: sft", flops, mfu, disk, mem, f"{sum(c for _, c in cells)} fine-tunings")
        ef, es = eval_cost(ev, 1)
        add("ablate: eval", ef * sum(c for _, c in cells), decode_mfu, 0.0, weights, f"{es} sequences per cell")

    # checks
    for where, ev in evals:
        need = PROMPT_TOKENS + ev.max_new_tokens
        ctx = ev.vllm_max_model_len or shape.max_positions
        if ctx and need > ctx:
            checks.append(f"{where}: a ~{PROMPT_TOKENS}-token prompt + max_new_tokens {ev.max_new_tokens} = {need} > the "
                          f"model's context {ctx}: lower {where}.max_new_tokens to <= {ctx - PROMPT_TOKENS}")  # fmt: skip
    for st in stages:
        if st["memory_per_gpu_bytes"] > gpu_memory_gb * 1e9:
            checks.append(f"{st['stage']}: ~{st['memory_per_gpu_bytes'] / 1e9:.0f} GB per GPU > {gpu_memory_gb:g} GB: "
                          + ("shard with sft.fsdp over more workers, or use gradient checkpointing / LoRA"
                             if "sft" in st["stage"] else "use a GPU with more memory"))  # fmt: skip
    if cfg.sft.num_workers > gpus:
        checks.append(f"sft.num_workers {cfg.sft.num_workers} > --gpus {gpus}")
    total = sum(st["wall_hours"] for st in stages)
    return {"model": {**asdict(shape), "params": p}, "corpus": corpus_how, "gpus": gpus, "gpu_memory_gb": gpu_memory_gb,
            "assumptions": {"gpu_tflops_bf16": gpu_tflops, "mfu": mfu, "decode_mfu": decode_mfu,
                            "prompt_tokens": PROMPT_TOKENS, "peak_flops": peak},
            "stages": stages, "wall_hours": total, "gpu_hours": sum(st["gpu_hours"] for st in stages),
            "disk_bytes": sum(st["disk_bytes"] for st in stages), "checks": checks, "fits": not checks}  # fmt: skip


def plan_markdown(res: dict) -> str:
    m, a = res["model"], res["assumptions"]
    lines = [f"Model: {m['params'] / 1e9:.2f}B parameters, {m['n_layers']} blocks x {m['hidden']} ({m['source']}); "
             f"context {m['max_positions']}.", f"Corpus: {res['corpus']}.",
             f"Cluster: {res['gpus']} GPU(s) x {res['gpu_memory_gb']:g} GB at {a['gpu_tflops_bf16']:g} TFLOP/s bf16; "
             f"utilisation {a['mfu']:.0%} (forward/training), {a['decode_mfu']:.0%} (generation).", "",
             "| stage | FLOPs | GPUs | wall h | GPU h | disk GB | memory/GPU GB | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for s in res["stages"]:
        lines.append(f"| {s['stage']} | {s['flops']:.3g} | {s['gpus']} | {s['wall_hours']:.2f} | {s['gpu_hours']:.1f} | "
                     f"{s['disk_bytes'] / 1e9:.1f} | {s['memory_per_gpu_bytes'] / 1e9:.1f} | {s['note']} |")  # fmt: skip
    lines += ["", f"Total: {res['wall_hours']:.1f} h wall on {res['gpus']} GPU(s), {res['gpu_hours']:.0f} GPU-hours, "
              f"{res['disk_bytes'] / 1e9:.0f} GB of disk."]  # fmt: skip
    lines += ["", "Checks: all pass." if res["fits"] else "Checks that fail:"] + [f"- {c}" for c in res["checks"]]
    return "\n".join(lines) + "\n"


def plan_json(res: dict) -> str:
    return json.dumps(res, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
