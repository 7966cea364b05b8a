"""Arm generation: the eval's work cut into chunks, sent to workers, scored and written; resumed chunk by chunk.

An arm is one model variant (the unsteered model, or one steering vector of the sweep). Work is cut
into chunks (``chunk_size`` problems of one benchmark, all ``n_samples`` samples, one arm). The
driver sends chunks to workers (Ray actors holding one model each,
:class:`~skillray.eval.worker.EvalWorker`, or HTTP requests for the openai backend), scores what
comes back (:func:`score_samples`) and writes each chunk as one file, atomically (temp file +
rename): a chunk file is whole or absent, never a half line. A rerun keeps every valid chunk file
and generates the rest; a chunk holding failed requests (``finish_reason = "error"``) is retried.

Seeds: chunk ``i`` of benchmark ``b`` is sampled with a seed derived from (eval seed, b, i),
the same for every arm, so steered and unsteered samples share random numbers (common random
numbers make the paired sweep deltas less noisy).

The stages that read and analyse the chunks are in :mod:`skillray.eval.stage`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from skillray.artifacts import atomic_write_bytes
from skillray.config import EvalConfig, ModelConfig, ServeConfig
from skillray.eval.backends import GenParams
from skillray.eval.benchmarks import Benchmark
from skillray.eval.openai_backend import FAILED
from skillray.eval.registry import EVAL_BACKENDS
from skillray.eval.scoring import extract_answer

ProgressFn = Callable[[int, int], None]  # (samples done, samples total)

@dataclass(frozen=True)
class Arm:
    """One model variant: the unsteered model (no spec), or one steering spec of the sweep with its vector.

    ``vector`` is ``SteeringVector.from_spec(basis, spec)`` (the hf and vllm actors steer with it); the openai
    backend sends ``spec.request()`` to `skillray serve`, whose basis hook builds the same vector from it.
    """

    name: str
    spec: object | None = None  # SteeringSpec
    vector: object | None = None  # SteeringVector


@dataclass(frozen=True)
class Chunk:
    arm: str
    benchmark: str
    index: int
    problems: tuple[int, ...]  # indices into the benchmark's problems

    def path(self, samples_dir: Path) -> Path:
        return samples_dir / self.arm / self.benchmark / f"chunk-{self.index:05d}.jsonl"


@dataclass
class EvalContext:
    """What generation reads of an eval call: the benchmarks (by name too), the resolved model, its dtype and device."""

    benchmarks: list[Benchmark]
    by_name: dict[str, Benchmark]
    resolved: object
    dtype: str
    device: str
    corpus_fingerprint: str | None
    dtype_note: str = ""  # the resolved dtype and why (skillray.models.choose_dtype), for the summary


def chunk_seed(seed: int, benchmark: str, index: int) -> int:
    """Sampling seed of chunk ``index`` of ``benchmark`` (independent of the arm)."""
    h = hashlib.sha256(f"{seed}/{benchmark}/{index}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x3FFFFFFF


def chunks_in_flight(cfg: EvalConfig) -> int:
    """Chunks each actor is sent before its first comes back: on vllm, enough for ``vllm_inflight_sequences``
    sequences (the engine batches them all), at least 2 and at most 128 (a thread of the actor each); elsewhere
    2 (one queued behind the running one)."""
    if cfg.backend != "vllm":
        return 2
    per_chunk = cfg.chunk_size * (1 if cfg.temperature == 0 else cfg.n_samples)  # greedy: one sequence, n copies
    return min(_MAX_IN_FLIGHT, max(2, -(-cfg.vllm_inflight_sequences // per_chunk)))


_MAX_IN_FLIGHT = 128


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


def damaged_chunks(samples_dir: Path, arms: list[Arm], ctx: EvalContext, cfg: EvalConfig) -> list[Path]:
    """Chunk files of a finished stage that are missing or no longer hold exactly their samples.

    A finished stage is re-checked before it is skipped (one read of every chunk file: small JSONL),
    so a damaged chunk is regenerated instead of being analysed. Chunks holding failed requests are
    not counted here (a rerun retries those, :func:`chunk_has_failures`).
    """
    out = []
    for c in plan_chunks(ctx.benchmarks, arms, cfg.chunk_size):
        p = c.path(samples_dir)
        if not chunk_complete(p, c, ctx.by_name[c.benchmark], cfg.n_samples) and not (p.exists() and chunk_has_failures(p)):
            out.append(p)
    return out


def chunk_has_failures(path: Path) -> bool:
    """Whether a chunk file holds samples whose requests failed (they are retried on the next run)."""
    try:
        return any(json.loads(line).get("finish_reason") == FAILED for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip())  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def score_samples(bench: Benchmark, problems: Sequence[int], texts: list[list[str]], n_tokens: list[list[int]],
                  finish: list[list[str]], pass_score: float, errors: Sequence[str | None] | None = None) -> list[dict]:
    """One row per sample of ``problems`` (indices into ``bench.problems``; ``texts`` etc. of shape (P, n)), its
    answer extracted and scored by ``bench``: ``problem_id, sample, text, answer, answer_source, gold, score,
    correct, n_tokens, finish_reason``. A problem whose request failed (``errors[p]`` set) gets rows with
    ``finish_reason = "error"`` and the error: no sample to score, reported, not counted as wrong."""
    rows = []
    for p_i, txts, toks, fins, err in zip(problems, texts, n_tokens, finish, errors or [None] * len(problems)):
        prob = bench.problems[p_i]
        if err is not None:
            rows.extend({"problem_id": prob.id, "sample": j, "text": "", "answer": None, "answer_source": None,
                         "gold": prob.gold, "score": 0.0, "correct": False, "n_tokens": 0, "finish_reason": FAILED,
                         "error": err} for j in range(len(txts)))  # fmt: skip
            continue
        for j, (text, nt, fin) in enumerate(zip(txts, toks, fins)):
            ex = extract_answer(text, finished=fin != "length")
            score, ok = bench.score(prob, ex.answer, pass_score)
            rows.append({"problem_id": prob.id, "sample": j, "text": text, "answer": ex.answer,
                         "answer_source": ex.source, "gold": prob.gold, "score": float(score), "correct": bool(ok),
                         "n_tokens": int(nt), "finish_reason": fin})  # fmt: skip
    return rows


def _chunk_rows(chunk: Chunk, bench: Benchmark, result: dict, pass_score: float) -> list[dict]:
    """The rows of a chunk file: each sample's row led by its arm and benchmark."""
    rows = score_samples(bench, chunk.problems, result["texts"], result["n_tokens"], result["finish"], pass_score,
                         result.get("errors"))  # fmt: skip
    return [{"arm": chunk.arm, "benchmark": chunk.benchmark, **r} for r in rows]


class Workers:
    """The generation actors of one eval call, started on first use and shared by the eval and its sweep
    (a model load per actor, not per stage), and by the evals of an ablation's cells (:meth:`use`: each task
    names its model, an actor holding another switches: a vLLM engine reloads the weights in place).
    ``close()`` kills them; use as a context manager.

    :func:`generate_arms` talks to any workers through ``slots`` / ``submit`` / ``wait_one`` / ``result``
    (:class:`HTTPWorkers` is the openai backend's); ``depth`` chunks go to each slot at once.
    """

    def __init__(self, cfg: EvalConfig, ctx: EvalContext, model_cfg: ModelConfig, log_dir: Path | None = None):
        self.cfg, self.ctx, self.model_cfg, self.log_dir = cfg, ctx, model_cfg, log_dir
        self.actors: list = []
        self.local = cfg.num_actors == 0  # one EvalWorker in this process; tasks run when their result is asked
        self.depth = chunks_in_flight(cfg)
        self.engines: dict[int, dict] = {}  # per vLLM actor: its latest counters (since it started)

    def use(self, ctx: EvalContext, model_cfg: ModelConfig) -> None:
        """Generate with ``ctx``'s model from the next task on (the next ablation cell; same eval settings)."""
        if ctx.dtype != self.ctx.dtype or ctx.device != self.ctx.device:
            raise ValueError(f"eval workers of dtype {self.ctx.dtype} on {self.ctx.device} cannot run {ctx.dtype} "
                             f"on {ctx.device}; evaluate with workers of their own")  # fmt: skip
        self.ctx, self.model_cfg = ctx, model_cfg

    def _worker_args(self) -> tuple[tuple, dict]:
        cfg = self.cfg
        # steerable: with a sweep to follow, each vLLM actor runs the eval and every arm on one engine
        vllm = {"python": os.path.abspath(cfg.vllm_python) if cfg.vllm_python else None, "env": dict(cfg.vllm_env),
                "max_model_len": cfg.vllm_max_model_len, "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
                "enforce_eager": cfg.vllm_enforce_eager, "timeout_s": cfg.vllm_timeout_s,
                "log_dir": str(self.log_dir) if self.log_dir else None, "reload_weights": cfg.vllm_reload_weights,
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
        # a dead actor (OOM, node loss) is restarted and its in-flight chunks retried by Ray, not lost (a restarted
        # actor starts on its first model; each task names its own, so a retried chunk is made by the right one).
        # vLLM actors run `depth` chunks at once (threads), so their prompts share the engine's batch.
        remote = ray.remote(EvalWorker).options(num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor,
                                                max_restarts=2, max_task_retries=2,
                                                max_concurrency=self.depth if cfg.backend == "vllm" else 1)  # fmt: skip
        self.actors += [remote.remote(*args, **kwargs) for _ in range(want - len(self.actors))]
        return self.actors

    def slots(self, n_chunks: int, steered: bool = False) -> list:
        return self.get(n_chunks)

    def counters(self) -> dict:
        return {}

    def engine_counters(self) -> dict:
        """vLLM engine starts / weight reloads / swaps of every actor so far (summed over actors)."""
        keys = ("engine_starts", "reloads", "reload_seconds", "swaps", "swap_seconds")
        return {k: sum(e.get(k, 0) for e in self.engines.values()) for k in keys}

    def submit(self, slot, task: dict):
        task = {k: v for k, v in task.items() if k != "steering"}  # the actors steer with the vector
        task["model"] = self.ctx.resolved  # the actor switches to it first if it holds another
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

    def __init__(self, cfg: EvalConfig, ctx: EvalContext, model_cfg: ModelConfig, steering_basis: Path | None = None):
        self.cfg, self.ctx, self.model_cfg = cfg, ctx, model_cfg
        self.steering_basis = steering_basis
        self.server = None  # ServerInfo of a server we started
        self.backend = None
        self._pool: ThreadPoolExecutor | None = None
        self._checked_steering = False
        self.depth = 2

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
        # Enough chunks in flight to keep max_concurrency requests busy (each slot holds `depth`).
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

    def engine_counters(self) -> dict:
        return {}

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


def make_workers(cfg: EvalConfig, ctx: EvalContext, model_cfg: ModelConfig, run_dir: Path,
                 log_dir: Path | None = None) -> "Workers | HTTPWorkers":  # fmt: skip
    """Ray actors (hf, vllm; vLLM engines log to ``log_dir``) or HTTP requests (openai) for :func:`generate_arms`."""
    if not EVAL_BACKENDS[cfg.backend].local_model:
        return HTTPWorkers(cfg, ctx, model_cfg, steering_basis=run_dir / "basis" if cfg.sweep is not None else None)
    return Workers(cfg, ctx, model_cfg, log_dir=log_dir)


def generate_arms(samples_dir: Path, arms: list[Arm], ctx: EvalContext, prompts: dict[str, list],
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

    steering = {a.name: a.spec.request() if a.spec is not None else None for a in arms}
    vectors = {a.name: a.vector for a in arms}
    params = {"n": n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_new_tokens}
    slots = workers.slots(len(todo), steered=any(vectors[c.arm] is not None for c in todo))
    before = workers.counters()
    engines_before = workers.engine_counters()
    queue = deque(todo)  # grouped by arm: a vLLM actor swaps its steering vector only when the arm changes
    pending: dict = {}
    ok_problems, first_error = 0, None

    def submit(slot) -> None:
        c = queue.popleft()
        task = {"key": (c.arm, c.benchmark, c.index), "prompts": [prompts[c.benchmark][i] for i in c.problems],
                "params": params, "seed": chunk_seed(cfg.seed, c.benchmark, c.index), "vector": vectors[c.arm],
                "steering": steering[c.arm]}  # fmt: skip
        pending[workers.submit(slot, task)] = (c, slot)

    # `depth` chunks per slot, dealt round-robin (few chunks still reach every actor): on hf one queued behind the
    # running one keeps the actor busy; on vllm the engine batches all of them, the next one joining as one ends
    for _ in range(workers.depth):
        for a in slots:
            if queue:
                submit(a)
    while pending:
        h = workers.wait_one(list(pending))
        c, slot = pending.pop(h)
        result = workers.result(h)
        if result.get("engine") and hasattr(workers, "engines"):
            workers.engines[id(slot)] = result["engine"]
        rows = _chunk_rows(c, ctx.by_name[c.benchmark], result, cfg.procedural_pass_score)
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
    engines_after = workers.engine_counters()
    if getattr(workers, "engines", None):
        # this call's share (the actors may have served an eval before: the stage, a sweep, an earlier cell); an
        # actor restarted by Ray counts from zero again, so a negative difference means: all of it is new
        d = {k: engines_after[k] - engines_before.get(k, 0) for k in engines_after}
        stats["vllm"] = d if all(v >= 0 for v in d.values()) else engines_after
    return stats


_FAIL_FAST = 8  # problems that may fail before the first success stops the run (a dead endpoint)
