"""The eval stage: ``<run>/eval`` (the unsteered model) and ``<run>/eval/sweep`` (steering sweep).

Layout::

    <run>/eval/manifest.json
    <run>/eval/samples/base/<benchmark>/chunk-00000.jsonl   one line per sample (SAMPLE_COLUMNS)
    <run>/eval/results.parquet | results.json | results.md  Pass@k per benchmark and k, bootstrap CI
    <run>/eval/plots/passk_<benchmark>.png
    <run>/eval/sweep/manifest.json, samples/<arm>/..., vectors/<arm>.*, results.*, plots/

Generation (chunks, workers, resume, failure policy, seeds) is :mod:`skillray.eval.generation`;
this module renders the prompts, runs the stages over their arms and analyses the chunk files.

Stage keys: generation settings (benchmarks, prompts, sampling, backend, chunking, model)
decide reuse; table settings (k values, bootstrap) do not: changing them recomputes the
tables from the stored samples.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

from skillray.artifacts import (StageManifest, atomic_write_bytes, atomic_write_json, file_sha256, fingerprint,
                                prepare_stage, read_manifest, same_key)
from skillray.config import CorpusConfig, EvalConfig, ModelConfig
from skillray.eval.benchmarks import Benchmark, load_benchmarks
from skillray.eval.generation import (Arm, EvalContext, ProgressFn, Workers, damaged_chunks, generate_arms, make_workers,
                                      plan_chunks)
from skillray.eval.openai_backend import FAILED
from skillray.eval.passk import default_k_values
from skillray.eval.prompts import build_messages, encode_chat
from skillray.eval.registry import EVAL_BACKENDS

BASE = "base"
SAMPLES = "samples"
RESULTS = "results"

# Settings that change how work is spread, not what is generated: left out of the stage key.
EXECUTION = ("num_actors", "num_cpus_per_actor", "num_gpus_per_actor", "vllm_python", "vllm_gpu_memory_utilization",
             "vllm_env", "vllm_timeout_s", "vllm_inflight_sequences", "vllm_reload_weights", "k_values", "n_bootstrap", "confidence", "sweep", "serve", "base_url", "api_key_env",
             "max_concurrency", "timeout_s", "max_retries")  # fmt: skip


def eval_key_config(cfg: EvalConfig, model_cfg: ModelConfig, dtype: str) -> dict:
    """The config slice that decides the samples (what the manifest records and compares)."""
    ev = {k: v for k, v in cfg.model_dump().items() if k not in EXECUTION}
    for k in EVAL_BACKENDS[cfg.backend].unused:
        ev.pop(k)
    from skillray.models import model_key

    return {"eval": ev, "model": model_key(model_cfg, dtype), "dtype": dtype}


def analysis_config(cfg: EvalConfig) -> dict:
    return {"k_values": resolved_k_values(cfg), "n_bootstrap": cfg.n_bootstrap, "confidence": cfg.confidence,
            "seed": cfg.seed}  # fmt: skip


def resolved_k_values(cfg: EvalConfig) -> list[int]:
    return sorted(set(cfg.k_values)) if cfg.k_values else default_k_values(cfg.n_samples)


def _recheck(stage_dir: Path, arms: list[Arm], ctx: EvalContext, cfg: EvalConfig) -> bool:
    """Whether a finished stage must resume: failed requests to retry, or damaged chunk files (warned)."""
    if _has_failures(read_manifest(stage_dir)):
        return True
    bad = damaged_chunks(stage_dir / SAMPLES, arms, ctx, cfg)
    if bad:
        warnings.warn(f"{stage_dir}: {len(bad)} chunk file(s) of the finished stage are missing or damaged "
                      f"(first: {bad[0]}); regenerating them", stacklevel=3)  # fmt: skip
    return bool(bad)


# ----------------------------------------------------------------------------- context


def _corpus_context(run_dir: Path) -> tuple[CorpusConfig | None, set[str], str | None]:
    """The run's corpus (when there is one): its config if generated, its prompts, its fingerprint."""
    from pydantic import ValidationError

    from skillray.corpus.records import iter_records

    m = read_manifest(run_dir / "corpus")
    if m is None or not m.complete:
        return None, set(), None
    try:
        corpus_cfg = CorpusConfig.model_validate(m.config)
    except ValidationError:
        corpus_cfg = None
    questions = set()
    for r in iter_records(run_dir / "corpus" / m.outputs["records"]):
        if r.messages is not None:
            users = [x["content"] for x in r.messages if x["role"] == "user"]
            questions.update(users[:1])
        elif r.text is not None:
            questions.add(r.text)
    return corpus_cfg, questions, m.outputs.get("fingerprint")


def _context(run_dir: Path, cfg: EvalConfig, model_cfg: ModelConfig) -> EvalContext:
    from skillray.models import choose_dtype, resolve_model

    corpus_cfg, questions, corpus_fp = _corpus_context(run_dir)
    procedural = any(b.is_procedural for b in cfg.benchmarks)
    benches = load_benchmarks(cfg.benchmarks, corpus_cfg, questions if procedural else set())
    resolved = resolve_model(model_cfg)  # converts a GGUF once, before any actor starts
    device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
    dtype = choose_dtype(model_cfg.dtype, device)  # decided here, so every worker runs the same dtype
    return EvalContext(benches, {b.name: b for b in benches}, resolved, dtype.name, device,
                    corpus_fp if procedural else None, str(dtype))  # fmt: skip


def _prompts(ctx: EvalContext, cfg: EvalConfig, trust_remote_code: bool) -> dict[str, list]:
    """Per benchmark, one prompt per problem: token ids (hf, vllm), or chat messages (openai: the server renders)."""
    if not EVAL_BACKENDS[cfg.backend].local_model:
        return {b.name: [build_messages(p.question, cfg.system_prompt, cfg.instruction) for p in b.problems]
                for b in ctx.benchmarks}  # fmt: skip
    from skillray.models import load_tokenizer

    tok = load_tokenizer(ctx.resolved, trust_remote_code)
    out = {
        b.name: [encode_chat(tok, build_messages(p.question, cfg.system_prompt, cfg.instruction)) for p in b.problems]
        for b in ctx.benchmarks
    }
    check_context(out, ctx, cfg)
    return out


def model_context(resolved, cfg: EvalConfig) -> int | None:
    """Tokens the model can attend to: vllm_max_model_len (vllm), else the config's max_position_embeddings."""
    if cfg.backend == "vllm" and cfg.vllm_max_model_len is not None:
        return int(cfg.vllm_max_model_len)
    from transformers import AutoConfig

    try:
        mc = AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError):
        return None
    n = getattr(mc, "max_position_embeddings", None)
    return int(n) if n else None


def check_context(prompts: dict[str, list], ctx: EvalContext, cfg: EvalConfig) -> None:
    """Before any generation: every prompt plus max_new_tokens fits the model's context; ValueError naming the
    longest offending problem of each benchmark and the fix otherwise (past the context, a model's output is
    garbage or the engine refuses the request after hours of other work)."""
    limit = model_context(ctx.resolved, cfg)
    if limit is None:
        return
    bad = []
    for b in ctx.benchmarks:
        lens = [len(x) for x in prompts[b.name]]
        i = max(range(len(lens)), key=lens.__getitem__) if lens else None
        if i is not None and lens[i] + cfg.max_new_tokens > limit:
            n_over = sum(n + cfg.max_new_tokens > limit for n in lens)
            bad.append(f"{b.name}: {n_over} prompt(s), the longest {b.problems[i].id!r} with {lens[i]} tokens + "
                       f"max_new_tokens {cfg.max_new_tokens} > {limit}")  # fmt: skip
    if bad:
        where = ("eval.vllm_max_model_len" if cfg.backend == "vllm" and cfg.vllm_max_model_len is not None
                 else "the model's max_position_embeddings")  # fmt: skip
        more = (", or raise eval.vllm_max_model_len up to the model's max_position_embeddings"
                if where == "eval.vllm_max_model_len" else "")  # fmt: skip
        raise ValueError(f"eval: prompts do not fit the model's context of {limit} tokens ({where}):\n  "
                         + "\n  ".join(bad) + f"\nlower eval.max_new_tokens{more}, or limit the benchmark (its "
                         "`limit`), or use a model with a longer context")  # fmt: skip


# ----------------------------------------------------------------------------- analysis


def _arm_files(samples_dir: Path, arms: list[Arm], benchmarks: list[Benchmark], chunk_size: int) -> list[Path]:
    return [c.path(samples_dir) for c in plan_chunks(benchmarks, arms, chunk_size)]


def _write_tables(out_dir: Path, table, stats, md_title: str, md_extra: str = "") -> dict:
    """``results.parquet`` / ``.json`` / ``.md`` of a result table (DataFrame) and its sample stats (DataFrame)."""
    from skillray.eval.tables import markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    buf = table.to_parquet(index=False)
    atomic_write_bytes(out_dir / f"{RESULTS}.parquet", buf)
    atomic_write_json(out_dir / f"{RESULTS}.json", {"results": table.to_dict(orient="records"),
                                                    "samples": stats.to_dict(orient="records")})  # fmt: skip
    md = f"# {md_title}\n\n" + md_extra + markdown(table) + "\n## Samples\n\n" + markdown(stats)
    atomic_write_bytes(out_dir / f"{RESULTS}.md", md.encode())
    return {"parquet": f"{RESULTS}.parquet", "json": f"{RESULTS}.json", "markdown": f"{RESULTS}.md"}


def _plots(out_dir: Path, table, benchmarks: list[str], draw) -> list[str]:
    names = []
    for b in benchmarks:
        name = f"plots/{draw.__name__.removesuffix('_png')}_{b}.png"
        atomic_write_bytes(out_dir / name, draw(table, b))
        names.append(name)
    return names


def _fmt(row) -> str:
    return f"{row['pass_at_k']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def analyze_eval(stage_dir: Path, cfg: EvalConfig, benchmarks: list[Benchmark]) -> tuple[dict, dict]:
    """Tables and plots of ``<run>/eval`` from its sample files; returns (outputs, summary numbers)."""
    from skillray.eval.tables import passk_png, passk_table, problem_counts, read_sample_files, sample_stats

    a = analysis_config(cfg)
    samples = read_sample_files(_arm_files(stage_dir / SAMPLES, [Arm(BASE)], benchmarks, cfg.chunk_size))
    table = passk_table(problem_counts(samples), a["k_values"], cfg.n_bootstrap, cfg.confidence, cfg.seed)
    stats = sample_stats(samples)
    names = [b.name for b in benchmarks]
    extra = (f"Unbiased Pass@k (Chen et al. 2021), mean over problems; [ci_low, ci_high] = {cfg.confidence:.0%} "
             f"bootstrap over problems ({cfg.n_bootstrap} resamples). {cfg.n_samples} samples per problem, "
             f"temperature {cfg.temperature}, top_p {cfg.top_p}, max_new_tokens {cfg.max_new_tokens}.\n\n")  # fmt: skip
    outputs = _write_tables(stage_dir, table, stats, "Eval: Pass@k", extra)
    outputs["plots"] = _plots(stage_dir, table, names, passk_png)
    outputs["analysis"] = a
    summary = {}
    for k in a["k_values"]:
        summary[f"pass@{k}"] = {r["benchmark"]: _fmt(r) for _, r in table[table["k"] == k].iterrows()}
    failed = samples["finish_reason"] == FAILED
    summary["truncated"] = int((samples["finish_reason"] == "length").sum())
    summary["no_answer"] = int((samples["answer"].isna() & ~failed).sum())
    summary["failed_problems"] = _failed_problems(samples)
    return outputs, summary


def _failed_problems(samples) -> dict:
    """Per benchmark (per arm/benchmark with several arms): problems with a failed request."""
    bad = samples[samples["finish_reason"] == FAILED]
    arms = samples["arm"].unique()
    out = {}
    for (arm, bench), g in samples.groupby(["arm", "benchmark"], sort=False):
        key = bench if len(arms) == 1 else f"{arm}/{bench}"
        out[key] = int(bad[(bad["arm"] == arm) & (bad["benchmark"] == bench)]["problem_id"].nunique())
    return out


def _has_failures(m: StageManifest | None) -> bool:
    f = (m.summary or {}).get("failed_problems") if m is not None else None
    return bool(sum(f.values()) if isinstance(f, dict) else f)


def _chunks_line(stats: dict) -> str:
    line = f"{stats['chunks'] - stats['chunks_reused']} generated, {stats['chunks_reused']} reused"
    if stats["chunks_invalid"]:
        line += f", {stats['chunks_invalid']} invalid redone"
    if stats.get("chunks_failed_redone"):
        line += f", {stats['chunks_failed_redone']} with failed requests redone"
    return line


def _dtype_summary(cfg: EvalConfig, ctx: EvalContext) -> dict:
    """The dtype the model ran in (the openai backend's server decides its own)."""
    return {"dtype": ctx.dtype_note} if EVAL_BACKENDS[cfg.backend].local_model else {}


def _vllm_summary(stats: dict) -> dict:
    """What this stage cost the vLLM actors that generated its chunks: engine starts, weight reloads (an ablation
    cell's model loaded into the engine of the cell before) and steering swaps. A sweep after its eval starts no
    engine (its actors are the eval's), nor does a cell whose weights were reloaded."""
    v = stats.get("vllm")
    if not v:
        return {}
    return {"vllm_engines": f"{v['engine_starts']} engine start(s), {v.get('reloads', 0)} weight reload(s) "
                            f"({v.get('reload_seconds', 0.0):.1f} s), {v['swaps']} steering swap(s) "
                            f"({1e3 * v['swap_seconds']:.1f} ms in all)"}  # fmt: skip


def _http_summary(cfg: EvalConfig, stats: dict) -> dict:
    """Request counters of the openai backend (empty for the others)."""
    if EVAL_BACKENDS[cfg.backend].local_model:
        return {}
    h = stats.get("http") or {}
    from skillray.llm_client import redact_url

    return {"endpoint": redact_url(cfg.base_url) if cfg.base_url else "skillray serve (started by eval.serve)",
            "requests": h.get("requests", 0), "retries": h.get("retries", 0),
            "failed_requests": h.get("failed_requests", 0), "repeat_requests": h.get("repeat_requests", 0)}  # fmt: skip


def run_eval(run_dir: str | Path, cfg: EvalConfig, model_cfg: ModelConfig, force: bool = False,
             progress: ProgressFn | None = None, out_dir: str | Path | None = None,
             _workers: Workers | None = None) -> StageManifest:  # fmt: skip
    """Evaluate the (unsteered) model into ``<run>/eval``; then the steering sweep when ``cfg.sweep`` is set.

    ``out_dir`` puts the results elsewhere (e.g. ``<run>/sft/<name>/eval`` for a fine-tuned model);
    the run's corpus (for the held-out overlap check) and basis (for the sweep) still come from ``run_dir``.
    ``_workers``: actors to generate on (left running), pointed at this model (`skillray ablate` passes one set
    to every cell, so a vLLM engine is started once and each cell's weights are reloaded into it).

    Resumes an interrupted run chunk by chunk; a finished run with the same settings is
    skipped (its tables are recomputed if only k values / bootstrap settings changed).
    Raises StageMismatchError when ``<run>/eval`` was made differently and ``force`` is off,
    BenchmarkError / ValueError naming a bad benchmark setting.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    ctx = _context(run_dir, cfg, model_cfg)
    stage_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    if _workers is not None:
        _workers.use(ctx, model_cfg)
    with contextlib.nullcontext(_workers) if _workers is not None else make_workers(
            cfg, ctx, model_cfg, run_dir, log_dir=stage_dir / "logs") as workers:  # fmt: skip
        m = _run_eval(stage_dir, cfg, model_cfg, force, progress, ctx, workers, t0)
        if cfg.sweep is not None:
            run_sweep(run_dir, cfg, model_cfg, force=force, progress=progress, out_dir=stage_dir,
                      _ctx=ctx, _workers=workers)  # fmt: skip
    return m


def _run_eval(stage_dir: Path, cfg: EvalConfig, model_cfg: ModelConfig, force: bool, progress: ProgressFn | None,
              ctx: EvalContext, workers: Workers, t0: float) -> StageManifest:  # fmt: skip
    inputs = {"model": ctx.resolved.fingerprint, **{f"benchmark:{b.name}": b.fingerprint for b in ctx.benchmarks}}
    want = StageManifest("eval", config=eval_key_config(cfg, model_cfg, ctx.dtype), inputs=inputs)
    action = prepare_stage(stage_dir, want, force, repair=True)  # a resume redoes damaged chunks and rewrites the tables
    if action == "skip" and _recheck(stage_dir, [Arm(BASE)], ctx, cfg):
        action = "resume"  # failed requests to retry, or damaged chunks: redo just those chunks
    if action == "skip":
        m = read_manifest(stage_dir)
        if m.outputs.get("analysis") != analysis_config(cfg):
            outputs, numbers = analyze_eval(stage_dir, cfg, ctx.benchmarks)
            m.outputs.update(outputs)
            m.summary.update(numbers)
            m.write(stage_dir)
    else:
        want.write(stage_dir)  # unfinished: a rerun with the same key resumes
        prompts = _prompts(ctx, cfg, model_cfg.trust_remote_code)
        stats = generate_arms(stage_dir / SAMPLES, [Arm(BASE)], ctx, prompts, cfg, workers, progress)
        outputs, numbers = analyze_eval(stage_dir, cfg, ctx.benchmarks)
        want.outputs = {"samples": f"{SAMPLES}/{BASE}", **outputs,
                        "benchmarks": {b.name: {"problems": len(b.problems), "kind": b.kind, **b.source}
                                       for b in ctx.benchmarks}}  # fmt: skip
        dropped = sum(b.dropped for b in ctx.benchmarks)
        want.summary = {
            "problems": {b.name: len(b.problems) for b in ctx.benchmarks},
            "samples": sum(len(b.problems) for b in ctx.benchmarks) * cfg.n_samples,
            "backend": cfg.backend,
            "chunks": _chunks_line(stats),
            "samples_generated": stats["samples_generated"],
            **_dtype_summary(cfg, ctx),
            **_http_summary(cfg, stats),
            **_vllm_summary(stats),
            **numbers,
            **({"heldout_duplicates_skipped": dropped} if any(b.kind == "procedural" for b in ctx.benchmarks) else {}),
            "seconds": round(time.perf_counter() - t0, 2),
            "output": str(stage_dir),
        }  # fmt: skip
        want.complete = True
        want.write(stage_dir)
        m = want
    return m


# ----------------------------------------------------------------------------- sweep


def arm_name(direction: int, sign: int, alpha: float, mode: str, control_seed: int | None = None) -> str:
    """``d<direction><+|-><alpha>-<mode>[-ctrl<seed>]``: the arm's folder and row name."""
    name = f"d{direction}{'+' if sign > 0 else '-'}{alpha:g}-{mode}"
    return name if control_seed is None else f"{name}-ctrl{control_seed}"


def sweep_arms(basis, sweep) -> list[Arm]:
    """Directions x signs x alphas x modes as steering arms (one :class:`~skillray.steer.SteeringSpec` each, its
    vector from :meth:`SteeringVector.from_spec`), each followed by its random controls (``sweep.control_seeds``)."""
    from skillray.steer import SteeringSpec, SteeringVector

    arms = []
    for d in sweep.directions:
        for s in sweep.signs:
            for a in sweep.alphas:
                for mode in sweep.modes:
                    controls = sweep.control_seeds if sweep.controls_for is None or d in sweep.controls_for else []
                    for c in [None, *controls]:
                        spec = SteeringSpec(d, s, a, mode, sweep.layers, c)
                        arms.append(Arm(arm_name(d, s, a, mode, c), spec, SteeringVector.from_spec(basis, spec)))
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"eval.sweep: repeated settings give duplicate arms {sorted(n for n in names if names.count(n) > 1)}")
    return arms


def _basis_fingerprint(basis_dir: Path) -> str:
    m = read_manifest(basis_dir)
    if m is not None and m.complete:
        return m.key
    return fingerprint([file_sha256(basis_dir / f)[:16] for f in ("basis.safetensors", "basis.json")])


def run_sweep(run_dir: str | Path, cfg: EvalConfig, model_cfg: ModelConfig, force: bool = False,
              progress: ProgressFn | None = None, out_dir: str | Path | None = None, _ctx: EvalContext | None = None,
              _workers: Workers | None = None) -> StageManifest:  # fmt: skip
    """Steering sweep into ``<eval>/sweep``: every arm of ``cfg.sweep`` on the eval's problems and seeds,
    compared with the unsteered samples of ``<eval>`` (paired over problems); ``<eval>`` is
    ``out_dir`` or ``<run>/eval``."""
    from skillray.basis import SkillBasis

    if cfg.sweep is None:
        raise ValueError("eval.sweep is not set; add e.g. `sweep: {directions: [0], signs: [1, -1], alphas: [1.0]}`")
    run_dir = Path(run_dir)
    eval_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    stage_dir = eval_dir / "sweep"
    t0 = time.perf_counter()
    ctx = _ctx or _context(run_dir, cfg, model_cfg)
    em = read_manifest(eval_dir)
    want_eval = StageManifest("eval", config=eval_key_config(cfg, model_cfg, ctx.dtype), inputs={
        "model": ctx.resolved.fingerprint, **{f"benchmark:{b.name}": b.fingerprint for b in ctx.benchmarks}})  # fmt: skip
    if em is None or not em.complete or not same_key(em, want_eval):
        raise FileNotFoundError(f"{eval_dir}: no finished eval with these settings; run `skillray eval` first")
    basis_dir = run_dir / "basis"
    basis = SkillBasis.load(basis_dir)
    b_model = ((basis.spec_ or {}).get("model") or {}).get("name_or_path")
    if b_model and b_model != model_cfg.name_or_path:
        warnings.warn(f"eval.sweep: the basis was fitted on {b_model!r}, the evaluated model is "
                      f"{model_cfg.name_or_path!r}; steering with another model's directions", stacklevel=2)  # fmt: skip
    arms = sweep_arms(basis, cfg.sweep)
    # no controls leaves the key of sweeps made before control_seeds existed unchanged
    sweep_key = cfg.sweep.model_dump(exclude=set() if cfg.sweep.control_seeds else {"control_seeds", "controls_for"})
    want = StageManifest("eval-sweep", config={"sweep": sweep_key},
                         inputs={"eval": em.key, "basis": _basis_fingerprint(basis_dir)})  # fmt: skip
    action = prepare_stage(stage_dir, want, force, repair=True)
    if action == "skip" and _recheck(stage_dir, arms, ctx, cfg):
        action = "resume"
    if action == "skip":
        m = read_manifest(stage_dir)
        if m.outputs.get("analysis") != analysis_config(cfg):
            outputs, numbers = analyze_sweep(stage_dir, cfg, ctx.benchmarks, arms)
            m.outputs.update(outputs)
            m.summary.update(numbers)
            m.write(stage_dir)
        return m
    want.write(stage_dir)
    for a in arms:
        a.vector.save(stage_dir / "vectors" / a.name)
    prompts = _prompts(ctx, cfg, model_cfg.trust_remote_code)
    with contextlib.nullcontext(_workers) if _workers else make_workers(cfg, ctx, model_cfg, run_dir,
                                                                        log_dir=stage_dir / "logs") as workers:  # fmt: skip
        stats = generate_arms(stage_dir / SAMPLES, arms, ctx, prompts, cfg, workers, progress)
    outputs, numbers = analyze_sweep(stage_dir, cfg, ctx.benchmarks, arms)
    want.outputs = {"samples": SAMPLES, "vectors": "vectors", "arms": {a.name: a.spec.describe() for a in arms}, **outputs}
    want.summary = {
        "arms": len(arms),
        "chunks": _chunks_line(stats),
        "samples_generated": stats["samples_generated"],
        **_dtype_summary(cfg, ctx),
        **_http_summary(cfg, stats),
        **_vllm_summary(stats),
        **numbers,
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(stage_dir),
    }
    want.complete = True
    want.write(stage_dir)
    return want


def analyze_sweep(stage_dir: Path, cfg: EvalConfig, benchmarks: list[Benchmark], arms: list[Arm]) -> tuple[dict, dict]:
    """Delta table (arm - unsteered, paired bootstrap) and plots of ``<run>/eval/sweep``."""
    import pandas as pd

    from skillray.eval.tables import delta_png, paired_delta_table, problem_counts, read_sample_files, sample_stats

    a = analysis_config(cfg)
    files = _arm_files(stage_dir.parent / SAMPLES, [Arm(BASE)], benchmarks, cfg.chunk_size)
    files += _arm_files(stage_dir / SAMPLES, arms, benchmarks, cfg.chunk_size)
    samples = read_sample_files(files)
    table = paired_delta_table(problem_counts(samples), BASE, a["k_values"], cfg.n_bootstrap, cfg.confidence, cfg.seed)
    spec = pd.DataFrame([{"arm": x.name, **x.spec.describe()} for x in arms])
    table = spec.merge(table, on="arm", how="right")
    extra = (f"Pass@k of each steered arm minus the unsteered model's on the same problems and seeds; "
             f"[ci_low, ci_high] = {cfg.confidence:.0%} paired bootstrap over problems ({cfg.n_bootstrap} resamples).\n\n")
    outputs = _write_tables(stage_dir, table, sample_stats(samples), "Steering sweep: Pass@k deltas", extra)
    outputs["plots"] = _plots(stage_dir, table, [b.name for b in benchmarks], delta_png)
    outputs["analysis"] = a
    kmax = max(a["k_values"])
    best = table[table["k"] == kmax].sort_values("delta", ascending=False)
    summary = {f"delta_pass@{kmax}": {f"{r['arm']}/{r['benchmark']}": f"{r['delta']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                                      for _, r in best.iterrows()}}  # fmt: skip
    steered = samples[samples["arm"] != BASE]
    summary["failed_problems"] = _failed_problems(steered) if len(steered) else {}
    return outputs, summary
