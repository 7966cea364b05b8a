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
from dataclasses import asdict, dataclass, field
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


def corpus_size(cfg: RunConfig) -> tuple[int, float | None, str]:
    """(records, an estimate of tokens per record or None, where both come from). The estimate is a local
    corpus file's characters / 4, cut at extract.max_tokens."""
    c, cap = cfg.corpus, cfg.extract.max_tokens
    if c.source == "generate":
        n = sum(c.task_sizes.values()) if c.task_sizes else c.size_per_task * len(c.tasks)
        return min(n, c.limit or n), None, "generated"
    if c.path and Path(c.path).is_file():
        lines = Path(c.path).read_text(errors="replace").splitlines()
        n = min(len(lines), c.limit or len(lines))
        sample = [len(x) for x in lines[:500]]
        per = min(cap, sum(sample) / max(len(sample), 1) / 4)  # ~4 characters per token (English, BPE)
        return n, per, f"{c.path}: {n} records"
    if c.limit:
        return c.limit, None, "corpus.limit"
    raise ValueError("corpus: the number of records is unknown before download; set corpus.limit to plan")


@dataclass
class Lengths:
    """Tokens per record and new tokens per eval sample as the run directory (or an option) gives them, each with
    where it comes from; ``None`` where nothing is known (the plan then has only the worst case)."""

    rows: int | None = None  # records of a finished corpus stage
    corpus: float | None = None  # mean tokens of a corpus record (after the cut at extract.max_tokens)
    corpus_how: str = ""
    per_record: dict | None = None  # record id -> tokens: a finished extract stage's counts
    extract_cap: int = 0  # the cut those counts were taken under
    selections: dict = field(default_factory=dict)  # select folder name -> its ordered ids
    new_tokens: float | None = None  # mean generated tokens of an eval sample
    new_tokens_how: str = ""

    def train_lengths(self, cap: int, budget: int, prefix: str | None) -> tuple[list[int] | None, str]:
        """Tokens of each training example (cut at ``cap``) of the first ``budget`` ids of the run's selections
        whose folder names start with ``prefix`` (of the whole corpus where there is none), and how they were
        found; None without per-record counts."""
        if self.per_record is None:
            return None, ""
        sels = [ids[:budget] for name, ids in self.selections.items()
                if prefix is not None and name.startswith(prefix) and len(ids) >= budget]  # fmt: skip
        lens = [min(self.per_record[i], cap) for ids in sels for i in ids if i in self.per_record]
        where = f"the first {budget} ids of {len(sels)} selection(s) {prefix}*"
        if not lens:
            lens, where = [min(t, cap) for t in self.per_record.values()], "the corpus' records (no selection yet)"
        bound = f"; a lower bound: extract cut them at {self.extract_cap}" if cap > self.extract_cap else ""
        return lens, f"measured ({where}{bound})"


def measured_lengths(cfg: RunConfig) -> Lengths:
    """What the run directory already tells about lengths: a finished extract stage's per-record token counts
    (its shard sidecars), else a finished corpus stage's characters / 4; the run's selections (``ids.json``);
    the new tokens of finished eval samples (the pipeline's eval and the ablation cells'). Loads no model."""
    from skillray.artifacts import read_json, read_manifest

    run = Path(cfg.run_dir)
    out = Lengths()
    cor = read_manifest(run / "corpus") if (run / "corpus" / "manifest.json").is_file() else None
    ext = read_manifest(run / "extract") if (run / "extract" / "manifest.json").is_file() else None
    if cor is not None and cor.complete and "rows" in cor.summary:
        out.rows = int(cor.summary["rows"])
    per: dict | None = None
    if ext is not None and ext.complete and "max_tokens" in ext.config.get("extract", {}):
        from skillray.extract.store import read_sidecar

        per = {}
        for sh in ext.outputs["shards"]:
            side = read_sidecar(run / "extract", sh["index"]) or {}
            if "n_tokens" not in side:  # an imported store: no token counts
                per = None
                break
            per.update(zip(side["ids"], side["n_tokens"]))
    if per:
        out.rows = len(per) if out.rows is None else out.rows
        out.per_record, out.extract_cap = per, int(ext.config["extract"]["max_tokens"])
        out.corpus = sum(per.values()) / max(len(per), 1)
        out.corpus_how = (f"measured by the extract stage ({len(per)} records, cut at extract.max_tokens "
                          f"{out.extract_cap}; {ext.summary.get('truncated', 0)} of them cut)")  # fmt: skip
    elif cor is not None and cor.complete and cor.outputs.get("records"):
        from skillray.corpus.records import iter_records

        n = chars = 0
        for r in iter_records(run / "corpus" / cor.outputs["records"]):
            n += 1
            chars += len(r.text) if r.text is not None else sum(len(m.get("content") or "") for m in r.messages)
        out.corpus = min(chars / max(n, 1) / 4, cfg.extract.max_tokens)
        out.corpus_how = f"estimated from the finished corpus ({n} records, characters / 4; no extract stage yet)"
    for ids_file in sorted((run / "select").glob("*/ids.json")):
        out.selections[ids_file.parent.name] = read_json(ids_file)
    # finished samples: <run>/eval/samples/<arm>/<benchmark>/chunk-*.jsonl, and the same in every ablation cell
    tokens = []
    chunks = sorted(run.glob("eval/samples/*/*/chunk-*.jsonl")) + sorted(run.glob("ablate/*/cells/*/eval/samples/*/*/chunk-*.jsonl"))
    for chunk in chunks:
        for line in chunk.read_text(encoding="utf-8").splitlines():
            t = json.loads(line).get("n_tokens") if line.strip() else None
            if isinstance(t, int):
                tokens.append(t)
    if tokens:
        out.new_tokens = sum(tokens) / len(tokens)
        out.new_tokens_how = f"measured ({len(tokens)} eval samples of the run)"
    return out


def eval_problems(ev: EvalConfig) -> int:
    n = 0
    for b in ev.benchmarks:
        if b.name.startswith("procedural"):
            size = b.size_per_task * len(b.tasks or [1] * 6)
        else:
            size = KNOWN_BENCHMARK_SIZES.get(b.name, 500)
        n += min(size, b.limit or size)
    return n


def padded_tokens(lengths: list[int], batch: int, seed: int = 0) -> int:
    """Tokens a run over ``lengths`` in shuffled micro-batches of ``batch`` computes on, padding included: TRL's
    collator (``packing=False``, not padding-free) pads each micro-batch to its longest sequence."""
    import random

    lens = list(lengths)
    random.Random(seed).shuffle(lens)
    return sum(len(b) * max(b) for b in (lens[a : a + batch] for a in range(0, len(lens), batch)))


def _sft_plan(sft: SFTConfig, shape: ModelShape, examples: int, per_record: float) -> dict:
    """One fine-tuning of ``examples`` examples of ``per_record`` tokens each (computed on, padding included)."""
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
            "disk": ckpt * min(sft.save_total_limit, 2) + 2 * p, "model_disk": 2 * p, "sharded": sharded}  # fmt: skip


def plan(cfg: RunConfig, gpus: int, gpu_memory_gb: float, gpu_tflops: float = 989.0, mfu: float = 0.4,
         decode_mfu: float = 0.1, mean_tokens: float | None = None, mean_new_tokens: float | None = None,
         deadline_hours: float = 24.0, lengths: Lengths | None = None) -> dict:  # fmt: skip
    """The run's cost and checks, per stage (see the module docstring for the rules).

    Every stage is costed twice: at the worst case (every record ``extract.max_tokens`` / ``sft.max_seq_len``
    long, every sample ``max_new_tokens``) and as expected, from the lengths ``lengths`` gives (default: what
    :func:`measured_lengths` finds in the run directory), ``mean_tokens`` / ``mean_new_tokens`` taking
    precedence when given (assumptions, printed as such); a part with neither is expected at its worst."""
    shape = model_shape(cfg.model)
    p = shape.params
    peak = gpus * gpu_tflops * 1e12
    n, estimate, corpus_how = corpus_size(cfg)
    L = measured_lengths(cfg) if lengths is None else lengths
    if L.rows is not None:
        n, corpus_how = L.rows, f"the finished corpus of {cfg.run_dir}"
    cap = cfg.extract.max_tokens
    # expected tokens of a corpus record and of an eval sample, and where each comes from
    if mean_tokens is not None:
        exp_tokens, tokens_how = min(mean_tokens, cap), f"assumed (--mean-tokens {mean_tokens:g})"
    elif L.corpus is not None:
        exp_tokens, tokens_how = L.corpus, L.corpus_how
    elif estimate is not None:
        exp_tokens, tokens_how = estimate, f"estimated from {cfg.corpus.path} (characters / 4, first 500 lines)"
    else:
        exp_tokens, tokens_how = float(cap), "worst case (nothing measured; give --mean-tokens to assume a mean)"
    if mean_new_tokens is not None:
        new_how = f"assumed (--mean-new-tokens {mean_new_tokens:g})"
    elif L.new_tokens is not None:
        new_how = L.new_tokens_how
    else:
        new_how = "worst case (nothing measured; give --mean-new-tokens to assume a mean)"
    stages, checks, notes = [], [], []

    def add(stage: str, flops: float, exp_flops: float, util: float, disk: float = 0.0, memory: float = 0.0,
            note: str = "", n_gpus=None):  # fmt: skip
        g = n_gpus or gpus
        hours = flops / (g * gpu_tflops * 1e12 * util) / 3600 if flops else 0.0
        exp = exp_flops / (g * gpu_tflops * 1e12 * util) / 3600 if exp_flops else 0.0
        stages.append({"stage": stage, "flops": flops, "gpus": g, "wall_hours": hours, "gpu_hours": hours * g,
                       "expected_flops": exp_flops, "expected_wall_hours": exp, "expected_gpu_hours": exp * g,
                       "disk_bytes": disk, "memory_per_gpu_bytes": memory, "note": note})  # fmt: skip

    weights = 2 * p  # bf16
    from skillray.models import normalize_layers

    layers = len(normalize_layers(cfg.extract.layers, shape.n_layers))
    dim = layers * shape.hidden
    store = n * dim * (2 if cfg.extract.store_dtype == "float16" else 4)
    add("extract", 2 * p * n * cap, 2 * p * n * exp_tokens, mfu, store, weights,
        f"{n} records x {cap} tokens at most, {exp_tokens:.0f} expected; {n} x {dim:,} store ({cfg.extract.store_dtype})")  # fmt: skip
    k = cfg.basis.n_components + cfg.basis.oversampling
    add("basis", 0.0, 0.0, mfu, 0.0, 0.0, f"<= {cfg.basis.max_passes} reads of the {store / 1e9:.1f} GB store, "
        f"2 x {n} x {dim:,} x {k} FLOPs each, on CPUs")  # fmt: skip
    dirs = len(cfg.probe.directions) if cfg.probe.directions is not None else cfg.basis.n_components
    probe_seqs = (2 * dirs + 1) * cfg.probe.n_dev
    add("probe", 2 * p * probe_seqs * min(cap, cfg.probe.max_tokens), 2 * p * probe_seqs * min(exp_tokens, cfg.probe.max_tokens),
        mfu, 0.0, weights, f"{2 * dirs} steered arms + base, {cfg.probe.n_dev} dev records")  # fmt: skip

    def sft_cost(s_cfg: SFTConfig, budget: int, prefix: str | None) -> tuple[dict, dict, str]:
        """(worst, expected) :func:`_sft_plan` of one fine-tuning on ``budget`` examples, and how expected was found."""
        examples = min(budget, n)
        worst = _sft_plan(s_cfg, shape, examples, s_cfg.max_seq_len)
        b = s_cfg.per_device_batch_size
        lens, how = (None, "") if mean_tokens is not None else L.train_lengths(s_cfg.max_seq_len, examples, prefix)
        if lens:
            # per_device_batch_size 1: no padding (a micro-batch is one sequence), FLOPs follow the real tokens
            per = padded_tokens(lens, b) / len(lens) if b > 1 else sum(lens) / len(lens)
            if b > 1:
                how += f", padding of micro-batches of {b} included"
        else:
            per, how = min(exp_tokens, s_cfg.max_seq_len), tokens_how
            if b > 1:
                how += f"; micro-batches of {b} pad to their longest sequence, not counted here"
        return worst, _sft_plan(s_cfg, shape, examples, per), how

    def eval_cost(ev: EvalConfig, arms: int) -> tuple[float, float, int]:
        seqs = eval_problems(ev) * ev.n_samples * arms
        new = ev.max_new_tokens if mean_new_tokens is None and L.new_tokens is None else \
            min(ev.max_new_tokens, mean_new_tokens if mean_new_tokens is not None else L.new_tokens)
        return 2 * p * seqs * (PROMPT_TOKENS + ev.max_new_tokens), 2 * p * seqs * (PROMPT_TOKENS + new), seqs

    sft_budget = cfg.sft.budget or cfg.select.budget or n
    s, se, how = sft_cost(cfg.sft, sft_budget, cfg.sft.selection)
    add("sft", s["flops"], se["flops"], mfu, s["disk"], s["memory_per_gpu"],
        f"{s['train_tokens']:.3g} tokens at most, {se['train_tokens']:.3g} expected; {cfg.sft.method}"
        + (", FSDP full_shard" if s["sharded"] else ""), n_gpus=min(s["gpus"], gpus))  # fmt: skip
    if how != tokens_how:
        notes.append(f"sft: {how}")
    arms = 1 + (len(cfg.eval.sweep.directions) * len(cfg.eval.sweep.signs) * len(cfg.eval.sweep.alphas)
                if cfg.eval.sweep else 0)  # fmt: skip
    f, fe, seqs = eval_cost(cfg.eval, arms)
    f2, f2e, _ = eval_cost(cfg.eval, 1)  # the fine-tuned model
    add("eval", f + f2, fe + f2e, decode_mfu, 0.0, weights,
        f"{seqs} sequences x <= {cfg.eval.max_new_tokens} new tokens, {arms} arm(s) + fine-tuned")  # fmt: skip
    evals = [("eval", cfg.eval)]
    if cfg.ablate is not None:
        ab = cfg.ablate
        ev = ab.eval or cfg.eval
        evals.append(("ablate.eval", ev))
        cells = [(b, len(ab.strategies) * len(ab.seeds)) for b in ab.budgets]
        flops = exp = disk = mem = 0.0
        for budget, count in cells:
            c, ce, how = sft_cost(ab.sft or cfg.sft, budget, f"{ab.name}-")
            flops, exp = flops + count * c["flops"], exp + count * ce["flops"]
            mem, disk = max(mem, c["memory_per_gpu"]), max(disk, c["disk"])
            if how != tokens_how:
                notes.append(f"ablate: sft at budget {budget}: {ce['train_tokens'] / min(budget, n):.0f} tokens per "
                             f"example, {how}")  # fmt: skip
        total = sum(c for _, c in cells)
        models = total if (ab.eval_together or ab.keep_models) else 1
        # eval_together keeps every cell's model (bf16 weights) until the evals after the last fine-tuning,
        # keep_models for good; otherwise a cell's files go once it is evaluated, so one cell's worth at a time
        disk += (models - 1) * c["model_disk"]
        add("ablate: sft", flops, exp, mfu, disk, mem, f"{total} fine-tunings ({len(ab.strategies)} strategies x "
            f"{len(ab.budgets)} budget(s) x {len(ab.seeds)} seed(s))" + (
                f"; disk holds all {total} models until their evals "
                f"({'keep_models' if ab.keep_models else 'eval_together'})" if models > 1 else ""))  # fmt: skip
        ef, efe, es = eval_cost(ev, 1)
        add("ablate: eval", ef * total, efe * total, decode_mfu, 0.0, weights, f"{es} sequences per cell")
    notes[:0] = [f"corpus record tokens: {tokens_how}", f"eval new tokens: {new_how}"]
    for where, s_cfg in [("sft", cfg.sft)] + ([("ablate.sft", cfg.ablate.sft)] if cfg.ablate and cfg.ablate.sft else []):
        b = s_cfg.per_device_batch_size
        notes.append(f"{where}: per_device_batch_size {b}: " + (
            "a micro-batch is one sequence, so no padding: training FLOPs follow the real tokens" if b == 1 else
            "TRL pads each micro-batch to its longest sequence (packing off); the expected cost counts that padding "
            "where per-record lengths are measured"))  # fmt: skip

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
    expected = sum(st["expected_wall_hours"] for st in stages)
    return {"model": {**asdict(shape), "params": p}, "corpus": corpus_how, "records": n, "gpus": gpus,
            "gpu_memory_gb": gpu_memory_gb,
            "assumptions": {"gpu_tflops_bf16": gpu_tflops, "mfu": mfu, "decode_mfu": decode_mfu,
                            "prompt_tokens": PROMPT_TOKENS, "peak_flops": peak, "mean_tokens": exp_tokens,
                            "mean_tokens_source": tokens_how, "mean_new_tokens": mean_new_tokens, "new_tokens_source": new_how},
            "notes": notes, "stages": stages, "wall_hours": total, "gpu_hours": sum(st["gpu_hours"] for st in stages),
            "expected_wall_hours": expected, "expected_gpu_hours": sum(st["expected_gpu_hours"] for st in stages),
            "deadline_hours": deadline_hours,
            # a RayJob's activeDeadlineSeconds for this workload: the worst case + 25% (the utilisation is itself an
            # assumption), in whole hours; a job stopped at its deadline resumes from its manifests when resubmitted
            "active_deadline_seconds": 3600 * math.ceil(1.25 * total), "worst_fits_deadline": total <= deadline_hours,
            "expected_fits_deadline": expected <= deadline_hours,
            "disk_bytes": sum(st["disk_bytes"] for st in stages), "checks": checks, "fits": not checks}  # fmt: skip


def plan_markdown(res: dict) -> str:
    m, a = res["model"], res["assumptions"]
    lines = [f"Model: {m['params'] / 1e9:.2f}B parameters, {m['n_layers']} blocks x {m['hidden']} ({m['source']}); "
             f"context {m['max_positions']}.", f"Corpus: {res['records']} records ({res['corpus']}).",
             f"Cluster: {res['gpus']} GPU(s) x {res['gpu_memory_gb']:g} GB at {a['gpu_tflops_bf16']:g} TFLOP/s bf16; "
             f"utilisation {a['mfu']:.0%} (forward/training), {a['decode_mfu']:.0%} (generation).",
             "Lengths: 'max' costs every record at extract.max_tokens / sft.max_seq_len and every sample at "
             "max_new_tokens; 'expected' uses:"] + [f"- {x}" for x in res["notes"]] + ["",
             "| stage | FLOPs max | FLOPs expected | GPUs | wall h max | wall h expected | GPU h expected | disk GB | memory/GPU GB | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for s in res["stages"]:
        lines.append(f"| {s['stage']} | {s['flops']:.3g} | {s['expected_flops']:.3g} | {s['gpus']} | {s['wall_hours']:.2f} | "
                     f"{s['expected_wall_hours']:.2f} | {s['expected_gpu_hours']:.1f} | {s['disk_bytes'] / 1e9:.1f} | "
                     f"{s['memory_per_gpu_bytes'] / 1e9:.1f} | {s['note']} |")  # fmt: skip
    d = res["deadline_hours"]

    def verdict(h: float) -> str:
        return f"within the {d:g}-hour deadline" if h <= d else f"over the {d:g}-hour deadline by {h - d:.1f} h"

    lines += ["", f"Total, worst case: {res['wall_hours']:.1f} h wall on {res['gpus']} GPU(s), {res['gpu_hours']:.0f} "
              f"GPU-hours: {verdict(res['wall_hours'])}.",
              f"Total, expected: {res['expected_wall_hours']:.1f} h wall, {res['expected_gpu_hours']:.0f} GPU-hours: "
              f"{verdict(res['expected_wall_hours'])}.", f"Disk: {res['disk_bytes'] / 1e9:.0f} GB.",
              f"A RayJob of this workload: activeDeadlineSeconds {res['active_deadline_seconds']} (the worst case + 25%, "
              "whole hours; cluster/kuberay/rayjob.yaml)."]  # fmt: skip
    lines += ["", "Checks: all pass." if res["fits"] else "Checks that fail:"] + [f"- {c}" for c in res["checks"]]
    return "\n".join(lines) + "\n"


def plan_json(res: dict) -> str:
    return json.dumps(res, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
