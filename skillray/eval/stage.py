"""The eval stage: ``<run>/eval`` (the unsteered model) and ``<run>/eval/sweep`` (steering sweep).

Layout::

    <run>/eval/manifest.json
    <run>/eval/samples/base/<benchmark>/chunk-00000.jsonl   one line per sample (SAMPLE_COLUMNS)
    <run>/eval/results.parquet | results.json | results.md  Pass@k per benchmark and k, bootstrap CI
    <run>/eval/plots/passk_<benchmark>.png
    <run>/eval/sweep/manifest.json, samples/<arm>/..., vectors/<arm>.*, results.*, plots/

Work is cut into chunks (``chunk_size`` problems of one benchmark, all ``n_samples`` samples,
one arm). The driver renders every prompt with the chat template, sends chunks to Ray actors
(one model each, :class:`~skillray.eval.worker.EvalWorker`), scores what comes back and
writes each chunk as one file, atomically (temp file + rename): a chunk file is whole or
absent, never a half line. A rerun keeps every valid chunk file and generates the rest.

Seeds: chunk ``i`` of benchmark ``b`` is sampled with a seed derived from (eval seed, b, i),
the same for every arm, so steered and unsteered samples share random numbers (common random
numbers make the paired sweep deltas less noisy).

Stage keys: generation settings (benchmarks, prompts, sampling, backend, chunking, model)
decide reuse; table settings (k values, bootstrap) do not: changing them recomputes the
tables from the stored samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from skillray.artifacts import (
    StageManifest,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    fingerprint,
    prepare_stage,
    read_manifest,
)
from skillray.config import CorpusConfig, EvalConfig, ModelConfig, ServeConfig
from skillray.eval.backends import GenParams
from skillray.eval.benchmarks import Benchmark, load_benchmarks
from skillray.eval.openai_backend import FAILED
from skillray.eval.passk import default_k_values
from skillray.eval.prompts import build_messages, encode_chat
from skillray.eval.scoring import extract_answer

ProgressFn = Callable[[int, int], None]  # (samples done, samples total)

BASE = "base"
SAMPLES = "samples"
RESULTS = "results"

# Settings that change how work is spread, not what is generated: left out of the stage key.
EXECUTION = ("num_actors", "num_cpus_per_actor", "num_gpus_per_actor", "vllm_python", "vllm_gpu_memory_utilization",
             "vllm_env", "vllm_timeout_s", "k_values", "n_bootstrap", "confidence", "sweep", "serve", "base_url", "api_key_env",
             "max_concurrency", "timeout_s", "max_retries")  # fmt: skip
_OPENAI = ("model_name", "request_n")  # openai-only settings that change the samples
_VLLM = ("vllm_max_model_len", "vllm_enforce_eager")


@dataclass(frozen=True)
class Arm:
    """One model variant: the unsteered model, or one steering vector of the sweep."""

    name: str
    vector: object | None = None  # SteeringVector
    spec: dict = field(default_factory=dict)
    steering: dict | None = None  # the same vector as a per-request spec for `skillray serve` (openai backend)


@dataclass(frozen=True)
class Chunk:
    arm: str
    benchmark: str
    index: int
    problems: tuple[int, ...]  # indices into the benchmark's problems

    def path(self, samples_dir: Path) -> Path:
        return samples_dir / self.arm / self.benchmark / f"chunk-{self.index:05d}.jsonl"


@dataclass
class _Context:
    benchmarks: list[Benchmark]
    by_name: dict[str, Benchmark]
    resolved: object
    dtype: str
    device: str
    corpus_fingerprint: str | None
    dtype_note: str = ""  # the resolved dtype and why (skillray.models.choose_dtype), for the summary


def eval_key_config(cfg: EvalConfig, model_cfg: ModelConfig, dtype: str) -> dict:
    """The config slice that decides the samples (what the manifest records and compares)."""
    ev = {k: v for k, v in cfg.model_dump().items() if k not in EXECUTION}
    drop = {"hf": _VLLM + _OPENAI, "vllm": ("batch_size",) + _OPENAI, "openai": ("batch_size",) + _VLLM}[cfg.backend]
    for k in drop:
        ev.pop(k)
    return {"eval": ev, "model": model_cfg.model_dump(), "dtype": dtype}


def analysis_config(cfg: EvalConfig) -> dict:
    return {"k_values": resolved_k_values(cfg), "n_bootstrap": cfg.n_bootstrap, "confidence": cfg.confidence,
            "seed": cfg.seed}  # fmt: skip


def resolved_k_values(cfg: EvalConfig) -> list[int]:
    return sorted(set(cfg.k_values)) if cfg.k_values else default_k_values(cfg.n_samples)


def chunk_seed(seed: int, benchmark: str, index: int) -> int:
    """Sampling seed of chunk ``index`` of ``benchmark`` (independent of the arm)."""
    h = hashlib.sha256(f"{seed}/{benchmark}/{index}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x3FFFFFFF


def plan_chunks(benchmarks: list[Benchmark], arms: list[Arm], chunk_size: int) -> list[Chunk]:
    """Every arm x benchmark x consecutive slice of ``chunk_size`` problems, grouped by arm."""
    out = []
    for arm in arms:
        for b in benchmarks:
            n = len(b.problems)
            for i, a in enumerate(range(0, n, chunk_size)):
                out.append(Chunk(arm.name, b.name, i, tuple(range(a, min(n, a + chunk_size)))))
    return out


def chunk_complete(path: Path, chunk: Chunk, bench: Benchmark, n_samples: int) -> bool:
    """Whether ``path`` holds exactly the samples of ``chunk`` (whole lines, the right ids)."""
    if not path.is_file():
        return False
    try:
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    want = {(bench.problems[i].id, j) for i in chunk.problems for j in range(n_samples)}
    got = {(r.get("problem_id"), r.get("sample")) for r in rows}
    return (text.endswith("\n") and len(rows) == len(want) and got == want
            and all(r.get("arm") == chunk.arm and r.get("benchmark") == chunk.benchmark for r in rows)
            and not any(r.get("finish_reason") == FAILED for r in rows))  # fmt: skip


def damaged_chunks(samples_dir: Path, arms: list[Arm], ctx: "_Context", cfg: EvalConfig) -> list[Path]:
    """Chunk files of a finished stage that are missing or no longer hold exactly their samples.

    A finished stage is re-checked before it is skipped (one read of every chunk file: small JSONL),
    so a damaged chunk is regenerated instead of being analysed. Chunks holding failed requests are
    not counted here (:func:`_has_failures` retries those).
    """
    out = []
    for c in plan_chunks(ctx.benchmarks, arms, cfg.chunk_size):
        p = c.path(samples_dir)
        if not chunk_complete(p, c, ctx.by_name[c.benchmark], cfg.n_samples) and not (p.exists() and chunk_has_failures(p)):
            out.append(p)
    return out


def _recheck(stage_dir: Path, arms: list[Arm], ctx: "_Context", cfg: EvalConfig) -> bool:
    """Whether a finished stage must resume: failed requests to retry, or damaged chunk files (warned)."""
    if _has_failures(read_manifest(stage_dir)):
        return True
    bad = damaged_chunks(stage_dir / SAMPLES, arms, ctx, cfg)
    if bad:
        warnings.warn(f"{stage_dir}: {len(bad)} chunk file(s) of the finished stage are missing or damaged "
                      f"(first: {bad[0]}); regenerating them", stacklevel=3)  # fmt: skip
    return bool(bad)


def chunk_has_failures(path: Path) -> bool:
    """Whether a chunk file holds samples whose requests failed (they are retried on the next run)."""
    try:
        return any(json.loads(line).get("finish_reason") == FAILED for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip())  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


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


def _context(run_dir: Path, cfg: EvalConfig, model_cfg: ModelConfig) -> _Context:
    from skillray.models import choose_dtype, resolve_model

    corpus_cfg, questions, corpus_fp = _corpus_context(run_dir)
    procedural = any(b.is_procedural for b in cfg.benchmarks)
    benches = load_benchmarks(cfg.benchmarks, corpus_cfg, questions if procedural else set())
    resolved = resolve_model(model_cfg)  # converts a GGUF once, before any actor starts
    device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
    dtype = choose_dtype(model_cfg.dtype, device)  # decided here, so every worker runs the same dtype
    return _Context(benches, {b.name: b for b in benches}, resolved, dtype.name, device,
                    corpus_fp if procedural else None, str(dtype))  # fmt: skip


def _prompts(ctx: _Context, cfg: EvalConfig, trust_remote_code: bool) -> dict[str, list]:
    """Per benchmark, one prompt per problem: token ids (hf, vllm), or chat messages (openai: the server renders)."""
    if cfg.backend == "openai":
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


def check_context(prompts: dict[str, list], ctx: "_Context", cfg: EvalConfig) -> None:
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
        raise ValueError("eval: prompts do not fit the model's context of " + str(limit) + " tokens:\n  "
                         + "\n  ".join(bad) + "\nlower eval.max_new_tokens, or limit the benchmark (its `limit`), "
                         "or use a model with a longer context")  # fmt: skip


# ----------------------------------------------------------------------------- generation


def _score_rows(chunk: Chunk, bench: Benchmark, result: dict, pass_score: float) -> list[dict]:
    rows = []
    errors = result.get("errors") or [None] * len(chunk.problems)
    for p_i, texts, toks, fins, err in zip(chunk.problems, result["texts"], result["n_tokens"], result["finish"], errors):
        prob = bench.problems[p_i]
        if err is not None:  # the request failed: no sample to score; reported, not counted as wrong
            rows.extend({"arm": chunk.arm, "benchmark": chunk.benchmark, "problem_id": prob.id, "sample": j, "text": "",
                         "answer": None, "answer_source": None, "gold": prob.gold, "score": 0.0, "correct": False,
                         "n_tokens": 0, "finish_reason": FAILED, "error": err} for j in range(len(texts)))  # fmt: skip
            continue
        for j, (text, nt, fin) in enumerate(zip(texts, toks, fins)):
            ex = extract_answer(text, finished=fin != "length")
            score, ok = bench.score(prob, ex.answer, pass_score)
            rows.append({"arm": chunk.arm, "benchmark": chunk.benchmark, "problem_id": prob.id, "sample": j,
                         "text": text, "answer": ex.answer, "answer_source": ex.source, "gold": prob.gold,
                         "score": float(score), "correct": bool(ok), "n_tokens": int(nt), "finish_reason": fin})  # fmt: skip
    return rows


class Workers:
    """The generation actors of one eval call, started on first use and shared by the eval and its sweep
    (a model load per actor, not per stage). ``close()`` kills them; use as a context manager.

    :func:`generate_arms` talks to any workers through ``slots`` / ``submit`` / ``wait_one`` / ``result``
    (:class:`HTTPWorkers` is the openai backend's).
    """

    def __init__(self, cfg: EvalConfig, ctx: _Context, model_cfg: ModelConfig, log_dir: Path | None = None):
        self.cfg, self.ctx, self.model_cfg, self.log_dir = cfg, ctx, model_cfg, log_dir
        self.actors: list = []
        self.local = cfg.num_actors == 0  # one EvalWorker in this process; tasks run when their result is asked

    def _worker_args(self) -> tuple[tuple, dict]:
        cfg = self.cfg
        # steerable: with a sweep to follow, each vLLM actor runs the eval and every arm on one engine
        vllm = {"python": os.path.abspath(cfg.vllm_python) if cfg.vllm_python else None, "env": dict(cfg.vllm_env),
                "max_model_len": cfg.vllm_max_model_len, "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
                "enforce_eager": cfg.vllm_enforce_eager, "timeout_s": cfg.vllm_timeout_s,
                "log_dir": str(self.log_dir) if self.log_dir else None,
                "steerable": cfg.sweep is not None}  # fmt: skip
        return (cfg.backend, self.ctx.resolved), dict(
            dtype=self.ctx.dtype, device=self.ctx.device,
            num_threads=None if self.local else max(1, int(cfg.num_cpus_per_actor)),  # in-process: leave torch's
            trust_remote_code=self.model_cfg.trust_remote_code, batch_size=cfg.batch_size, vllm=vllm)

    def get(self, n_chunks: int) -> list:
        """The actors, starting more (up to ``num_actors``) when ``n_chunks`` chunks can keep them busy."""
        if self.local:
            if not self.actors:
                from skillray.eval.worker import EvalWorker

                args, kwargs = self._worker_args()
                self.actors = [EvalWorker(*args, **kwargs)]
            return self.actors
        want = min(self.cfg.num_actors, n_chunks)
        if len(self.actors) >= want:
            return self.actors
        import ray

        from skillray.eval.worker import EvalWorker
        from skillray.raytools import ensure_ray

        ensure_ray()
        cfg = self.cfg
        args, kwargs = self._worker_args()
        # a dead actor (OOM, node loss) is restarted and its in-flight chunk retried by Ray, not lost
        remote = ray.remote(EvalWorker).options(num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor,
                                                max_restarts=2, max_task_retries=2)  # fmt: skip
        self.actors += [remote.remote(*args, **kwargs) for _ in range(want - len(self.actors))]
        return self.actors

    def slots(self, n_chunks: int, steered: bool = False) -> list:
        return self.get(n_chunks)

    def counters(self) -> dict:
        return {}

    def submit(self, slot, task: dict):
        task = {k: v for k, v in task.items() if k != "steering"}  # the actors steer with the vector
        if self.local:
            return _LocalTask(slot, task)
        return slot.generate.remote(task)

    def wait_one(self, handles: list):
        if self.local:
            return handles[0]  # first submitted, first run
        import ray

        return ray.wait(handles, num_returns=1)[0][0]

    def result(self, handle) -> dict:
        if self.local:
            return handle.worker.generate(handle.task)
        import ray

        return ray.get(handle)

    def close(self, graceful: bool = True) -> None:
        """Kill the actors; ``graceful`` first lets each close its backend (a vLLM child exits cleanly)."""
        if self.actors and self.local:
            with contextlib.suppress(Exception):
                self.actors[0].close()
            self.actors = []
        if self.actors:
            import ray

            if graceful:
                with contextlib.suppress(Exception):
                    ray.get([a.close.remote() for a in self.actors], timeout=120)
            for a in self.actors:
                ray.kill(a)
            self.actors = []

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)  # after an error, work may still be running: no waiting


@dataclass(frozen=True, eq=False)
class _LocalTask:
    """A chunk for the in-process worker (num_actors=0): generated when its result is asked for."""

    worker: object
    task: dict


def serve_config_for(cfg: EvalConfig, steering_basis: Path | None = None) -> ServeConfig:
    """The `skillray serve` settings ``eval.serve`` starts: loopback, a free port, eval's actors / resources /
    batch size as replicas / resources per replica / batch size, limits that admit eval's requests, and the
    basis steering hook over ``steering_basis`` (the run's basis) when given."""
    hook = {"steering_hook": "skillray.steer.serving:basis_hook",
            "steering_hook_args": {"basis_path": str(Path(steering_basis).resolve())}} if steering_basis else {}  # fmt: skip
    return ServeConfig(host="127.0.0.1", port=0, num_replicas=max(1, cfg.num_actors), num_cpus_per_replica=cfg.num_cpus_per_actor,
                       num_gpus_per_replica=cfg.num_gpus_per_actor, max_batch_size=cfg.batch_size,
                       max_ongoing_requests=max(64, 2 * cfg.max_concurrency), default_max_tokens=cfg.max_new_tokens,
                       max_tokens_limit=max(2048, cfg.max_new_tokens), max_n=max(8, cfg.n_samples),
                       max_prompt_tokens=1 << 20, **hook)  # fmt: skip


class HTTPWorkers:
    """The openai backend's side of :func:`generate_arms`: chunks run in threads of this process, each sending
    its requests through one shared :class:`~skillray.eval.openai_backend.OpenAIBackend` (``max_concurrency``
    requests in flight). With ``eval.serve`` and no ``base_url``, `skillray serve` is started for the model
    under test on first use (with the run's basis as steering hook when ``steering_basis`` exists) and
    stopped by :meth:`close`, so the eval and its sweep share one server.
    """

    def __init__(self, cfg: EvalConfig, ctx: _Context, model_cfg: ModelConfig, steering_basis: Path | None = None):
        self.cfg, self.ctx, self.model_cfg = cfg, ctx, model_cfg
        self.steering_basis = steering_basis
        self.server = None  # ServerInfo of a server we started
        self.backend = None
        self._pool: ThreadPoolExecutor | None = None
        self._checked_steering = False

    def _start(self) -> None:
        from skillray.eval.openai_backend import OpenAIBackend, wait_until_served

        cfg = self.cfg
        url, model = cfg.base_url, cfg.model_name
        if url is None:  # eval.serve: our own server for the model under test
            import uuid

            from skillray.serve.app import start_server

            basis = self.steering_basis if self.steering_basis and (Path(self.steering_basis) / "basis.json").is_file() else None
            name = f"skillray-eval-{uuid.uuid4().hex[:8]}"
            self.server = start_server(self.model_cfg, serve_config_for(cfg, basis), self.ctx.resolved, app_name=name,
                                       route_prefix=f"/{name}", join_running=True)  # fmt: skip
            url, model = self.server.base_url, self.server.model
        self.backend = OpenAIBackend(url, model, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                                     max_retries=cfg.max_retries, max_concurrency=cfg.max_concurrency,
                                     request_n=cfg.request_n)  # fmt: skip
        if self.server is not None:
            wait_until_served(self.backend)
        else:
            self.backend.check()

    def slots(self, n_chunks: int, steered: bool = False) -> list:
        if self.backend is None:
            self._start()
        if steered and not self._checked_steering:
            self.backend.check(steering=True)
            self._checked_steering = True
        # Enough chunks in flight to keep max_concurrency requests busy (each slot holds two).
        n = max(1, -(-self.cfg.max_concurrency // max(1, self.cfg.chunk_size)))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2 * n, thread_name_prefix="skillray-eval-chunk")
        return list(range(min(n, n_chunks)))

    def submit(self, slot, task: dict):
        return self._pool.submit(self._run, task)

    def _run(self, task: dict) -> dict:
        t0 = time.perf_counter()
        g = self.backend.generate(task["prompts"], GenParams(**task["params"]), task["seed"], task.get("steering"))
        return {"key": task["key"], "texts": g.texts, "n_tokens": g.n_tokens, "finish": g.finish, "errors": g.errors,
                "seconds": time.perf_counter() - t0}  # fmt: skip

    def counters(self) -> dict:
        """Request counters so far (requests, retries, failed_requests, repeat_requests, tokens)."""
        return self.backend.stats.as_dict() if self.backend is not None else {}

    def wait_one(self, handles: list):
        done, _ = futures_wait(handles, return_when=FIRST_COMPLETED)
        return next(h for h in handles if h in done)

    def result(self, handle) -> dict:
        return handle.result()

    def close(self, graceful: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=graceful, cancel_futures=True)
            self._pool = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.server is not None:
            from skillray.serve.app import stop_server

            server, self.server = self.server, None
            stop_server(server)

    def __enter__(self) -> "HTTPWorkers":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)


def make_workers(cfg: EvalConfig, ctx: _Context, model_cfg: ModelConfig, run_dir: Path,
                 log_dir: Path | None = None) -> "Workers | HTTPWorkers":  # fmt: skip
    """Ray actors (hf, vllm; vLLM engines log to ``log_dir``) or HTTP requests (openai) for :func:`generate_arms`."""
    if cfg.backend == "openai":
        return HTTPWorkers(cfg, ctx, model_cfg, steering_basis=run_dir / "basis" if cfg.sweep is not None else None)
    return Workers(cfg, ctx, model_cfg, log_dir=log_dir)


def generate_arms(samples_dir: Path, arms: list[Arm], ctx: _Context, prompts: dict[str, list],
                  cfg: EvalConfig, workers: Workers, progress: ProgressFn | None = None) -> dict:  # fmt: skip
    """Generate every missing chunk of ``arms`` into ``samples_dir`` on ``workers``; returns counts.

    Valid chunk files are kept (resume); invalid ones (foreign or damaged) and ones holding failed requests
    are regenerated. A problem whose request failed is written with ``finish_reason = "error"``.
    """
    plan = plan_chunks(ctx.benchmarks, arms, cfg.chunk_size)
    n = cfg.n_samples
    per_chunk = {c: len(c.problems) * n for c in plan}
    total = sum(per_chunk.values())
    todo, invalid, failed_redo = [], 0, 0
    for c in plan:
        p = c.path(samples_dir)
        if not chunk_complete(p, c, ctx.by_name[c.benchmark], n):
            if p.exists():
                if chunk_has_failures(p):
                    failed_redo += 1
                else:
                    invalid += 1
            todo.append(c)
    done = total - sum(per_chunk[c] for c in todo)
    if progress:
        progress(done, total)
    stats = {"chunks": len(plan), "chunks_reused": len(plan) - len(todo), "chunks_invalid": invalid,
             "chunks_failed_redone": failed_redo, "samples_generated": 0, "generate_seconds": 0.0,
             "failed_problems": 0, "http": {}}  # fmt: skip
    if not todo:
        return stats

    steering = {a.name: a.steering for a in arms}
    vectors = {a.name: a.vector for a in arms}
    params = {"n": n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens}
    slots = workers.slots(len(todo), steered=any(vectors[c.arm] is not None for c in todo))
    before = workers.counters()
    queue = deque(todo)  # grouped by arm: a vLLM actor swaps its steering vector only when the arm changes
    pending: dict = {}
    ok_problems, first_error = 0, None
    engines: dict[int, dict] = {}  # per vLLM actor: its latest counters (cumulative over the eval and its sweep)

    def submit(slot) -> None:
        c = queue.popleft()
        task = {"key": (c.arm, c.benchmark, c.index), "prompts": [prompts[c.benchmark][i] for i in c.problems],
                "params": params, "seed": chunk_seed(cfg.seed, c.benchmark, c.index), "vector": vectors[c.arm],
                "steering": steering[c.arm]}  # fmt: skip
        pending[workers.submit(slot, task)] = (c, slot)

    for a in slots:
        for _ in range(2):  # one queued behind the running one keeps the actor busy
            if queue:
                submit(a)
    while pending:
        h = workers.wait_one(list(pending))
        c, slot = pending.pop(h)
        result = workers.result(h)
        if result.get("engine"):
            engines[id(slot)] = result["engine"]
        rows = _score_rows(c, ctx.by_name[c.benchmark], result, cfg.procedural_pass_score)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        atomic_write_bytes(c.path(samples_dir), data)
        errors = [e for e in (result.get("errors") or []) if e is not None]
        stats["failed_problems"] += len(errors)
        ok_problems += len(c.problems) - len(errors)
        first_error = first_error or (errors[0] if errors else None)
        done += per_chunk[c]
        stats["samples_generated"] += per_chunk[c]
        stats["generate_seconds"] += result["seconds"]
        if progress:
            progress(done, total)
        if ok_problems == 0 and stats["failed_problems"] >= min(_FAIL_FAST, sum(len(x.problems) for x in todo)):
            from skillray.llm_client import EndpointError

            raise EndpointError(f"the first {stats['failed_problems']} problems all failed and none succeeded; "
                                f"stopping (first error: {first_error})")  # fmt: skip
        if queue:
            submit(slot)
    after = workers.counters()
    stats["http"] = {k: after[k] - before.get(k, 0) for k in after}
    if stats["failed_problems"]:
        warnings.warn(f"eval: {stats['failed_problems']} problem(s) failed after retries (first error: {first_error}); "
                      "they are left out of Pass@k and retried on the next run", stacklevel=2)  # fmt: skip
    stats["generate_seconds"] = round(stats["generate_seconds"], 2)
    if engines:
        stats["vllm"] = {k: sum(e[k] for e in engines.values()) for k in ("engine_starts", "swaps", "swap_seconds")}
    return stats


_FAIL_FAST = 8  # problems that may fail before the first success stops the run (a dead endpoint)


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


def _dtype_summary(cfg: EvalConfig, ctx: _Context) -> dict:
    """The dtype the model ran in (the openai backend's server decides its own)."""
    return {} if cfg.backend == "openai" else {"dtype": ctx.dtype_note}


def _vllm_summary(stats: dict) -> dict:
    """vLLM engine starts and steering swaps of the actors that generated this stage's chunks, counted since
    each started (so a sweep's count includes its eval's): a sweep starts one engine per actor, not per arm."""
    v = stats.get("vllm")
    if not v:
        return {}
    return {"vllm_engines": f"{v['engine_starts']} engine start(s), {v['swaps']} steering swap(s) "
                            f"({1e3 * v['swap_seconds']:.1f} ms in all)"}  # fmt: skip


def _http_summary(cfg: EvalConfig, stats: dict) -> dict:
    """Request counters of the openai backend (empty for the others)."""
    if cfg.backend != "openai":
        return {}
    h = stats.get("http") or {}
    from skillray.llm_client import redact_url

    return {"endpoint": redact_url(cfg.base_url) if cfg.base_url else "skillray serve (started by eval.serve)",
            "requests": h.get("requests", 0), "retries": h.get("retries", 0),
            "failed_requests": h.get("failed_requests", 0), "repeat_requests": h.get("repeat_requests", 0)}  # fmt: skip


def run_eval(run_dir: str | Path, cfg: EvalConfig, model_cfg: ModelConfig, force: bool = False,
             progress: ProgressFn | None = None, out_dir: str | Path | None = None) -> StageManifest:  # fmt: skip
    """Evaluate the (unsteered) model into ``<run>/eval``; then the steering sweep when ``cfg.sweep`` is set.

    ``out_dir`` puts the results elsewhere (e.g. ``<run>/sft/<name>/eval`` for a fine-tuned model);
    the run's corpus (for the held-out overlap check) and basis (for the sweep) still come from ``run_dir``.

    Resumes an interrupted run chunk by chunk; a finished run with the same settings is
    skipped (its tables are recomputed if only k values / bootstrap settings changed).
    Raises StageMismatchError when ``<run>/eval`` was made differently and ``force`` is off,
    BenchmarkError / ValueError naming a bad benchmark setting.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    ctx = _context(run_dir, cfg, model_cfg)
    stage_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    with make_workers(cfg, ctx, model_cfg, run_dir, log_dir=stage_dir / "logs") as workers:
        m = _run_eval(stage_dir, cfg, model_cfg, force, progress, ctx, workers, t0)
        if cfg.sweep is not None:
            run_sweep(run_dir, cfg, model_cfg, force=force, progress=progress, out_dir=stage_dir,
                      _ctx=ctx, _workers=workers)  # fmt: skip
    return m


def _run_eval(stage_dir: Path, cfg: EvalConfig, model_cfg: ModelConfig, force: bool, progress: ProgressFn | None,
              ctx: _Context, workers: Workers, t0: float) -> StageManifest:  # fmt: skip
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
    name = f"d{direction}{'+' if sign > 0 else '-'}{alpha:g}-{mode}"
    return name if control_seed is None else f"{name}-ctrl{control_seed}"


def sweep_arms(basis, sweep) -> list[Arm]:
    """Directions x signs x alphas x modes as steering arms (vectors from :meth:`SteeringVector.from_basis`),
    each followed by its random controls (``sweep.control_seeds``)."""
    from skillray.steer import SteeringVector

    arms = []
    for d in sweep.directions:
        for s in sweep.signs:
            for a in sweep.alphas:
                for mode in sweep.modes:
                    controls = sweep.control_seeds if sweep.controls_for is None or d in sweep.controls_for else []
                    for c in [None, *controls]:
                        vec = SteeringVector.from_basis(basis, d, sign=s, alpha=a, mode=mode, layers=sweep.layers,
                                                        control_seed=c)  # fmt: skip
                        spec = {"direction": d, "sign": s, "alpha": a, "mode": mode,
                                **({"control_seed": c} if c is not None else {})}  # fmt: skip
                        # What `skillray serve`'s basis hook turns into the same vector (skillray.steer.serving).
                        request = {**spec, **({"layers": list(sweep.layers)} if sweep.layers is not None else {})}
                        arms.append(Arm(arm_name(d, s, a, mode, c), vec, spec, request))
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
              progress: ProgressFn | None = None, out_dir: str | Path | None = None, _ctx: _Context | None = None,
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
    if em is None or not em.complete or em.key != want_eval.key:
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
    want.outputs = {"samples": SAMPLES, "vectors": "vectors", "arms": {a.name: a.spec for a in arms}, **outputs}
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
    spec = pd.DataFrame([{"arm": x.name, **x.spec} for x in arms])
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
