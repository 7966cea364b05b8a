"""Accuracy probe: which directions raise Pass@k on a small procedural dev set?

For the unsteered model and for each direction d and sign s (steered by ``s * alpha``), generate
``n`` samples per dev problem with the eval package's backend (:class:`skillray.eval.backends.HFBackend`,
one :class:`~skillray.steer.SteeringVector` per call), extract and score every answer as the eval's
chunks are (:func:`skillray.eval.generation.score_samples`) and compare per-problem unbiased Pass@k
(:func:`skillray.eval.passk.pass_at_k_array`) with the unsteered model's on the same problems and the
same sampling seed (paired; common random numbers).

The dev set is the eval's procedural held-out machinery (:func:`skillray.eval.benchmarks.load_benchmarks`)
with a dev seed of its own: its reasoning-gym seeds are disjoint from the training corpus' and from
any other eval seed's, and questions that occur in the corpus are skipped.

Cost: generation, i.e. one batched forward pass per generated position per generate call, counted
exactly with a forward hook on the model, and the generated tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def count_forward(model) -> Iterator[list[int]]:
    """Count calls of ``model``'s forward (one per batched forward pass) inside the block: ``with ... as n: n[0]``."""
    n = [0]

    def hook(_module, _args):
        n[0] += 1

    h = model.register_forward_pre_hook(hook)
    try:
        yield n
    finally:
        h.remove()


def dev_benchmark(n_dev: int, seed: int, tasks: Sequence[str] | None = None, corpus_cfg=None,
                  corpus_questions: set[str] | frozenset = frozenset()):  # fmt: skip
    """The procedural dev set: ``n_dev`` problems of eval seed ``seed``, round-robin over ``tasks``.

    Loaded with :func:`skillray.eval.benchmarks.load_benchmarks` (``ceil(n_dev / len(tasks))`` items per
    task; corpus questions skipped; a generated corpus' seed range checked), then interleaved task by
    task so any prefix covers the tasks evenly. Returns a :class:`~skillray.eval.benchmarks.Benchmark`.
    """
    from skillray.config import CorpusConfig, EvalBenchmark
    from skillray.eval.benchmarks import load_benchmarks

    task_list = list(tasks) if tasks is not None else list(CorpusConfig().tasks)
    if not task_list:
        raise ValueError("probe.accuracy_tasks is empty; name at least one reasoning-gym task (or leave it unset)")
    per_task = max(1, math.ceil(n_dev / len(task_list)))
    spec = EvalBenchmark(name="procedural", tasks=task_list, size_per_task=per_task, seed=seed)
    bench = load_benchmarks([spec], corpus_cfg, corpus_questions)[0]
    by_task = {t: [p for p in bench.problems if p.task == t] for t in task_list}
    picked = []
    for i in range(per_task):
        for t in task_list:
            if i < len(by_task[t]) and len(picked) < n_dev:
                picked.append(by_task[t][i])
    return dataclasses.replace(bench, name="probe-dev", problems=picked)


def _arm_name(direction: int | None, sign: int = 1) -> str:
    return "base" if direction is None else f"d{direction}{'+' if sign == 1 else '-'}"


def _generate_arm(backend, model, bench, prompts, params, seed, vector, pass_score) -> dict:
    """Generate and score one arm; returns {samples: [...], forward_passes, generated_tokens}."""
    from skillray.eval.generation import score_samples

    with count_forward(model) as calls:
        g = backend.generate(prompts, params, seed, vector)
    # greedy: one answer copied n times, generated once
    gen_tokens = sum(int(toks[0]) if params.temperature == 0 else int(sum(toks)) for toks in g.n_tokens)
    samples = score_samples(bench, range(len(bench.problems)), g.texts, g.n_tokens, g.finish, pass_score)
    return {"samples": samples, "forward_passes": int(calls[0]), "generated_tokens": gen_tokens}


def _per_problem(bench, samples: list[dict], k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(Pass@k, mean score) per problem, in benchmark order: ndarrays of shape (P,)."""
    from skillray.eval.passk import pass_at_k_array

    c = {p.id: 0 for p in bench.problems}
    s = {p.id: 0.0 for p in bench.problems}
    for r in samples:
        c[r["problem_id"]] += bool(r["correct"])
        s[r["problem_id"]] += float(r["score"])
    ids = [p.id for p in bench.problems]
    passk = pass_at_k_array(np.full(len(ids), n), np.array([c[i] for i in ids]), k)
    return passk, np.array([s[i] / n for i in ids])


def accuracy_probe(
    backend,
    model,
    bench,
    prompts: list[list[int]],
    vectors: Callable[[int, int], object],
    directions: Sequence[int],
    params,
    seed: int,
    k: int = 1,
    pass_score: float = 1.0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Rank (direction, sign) pairs by the change in Pass@k on a dev benchmark.

    Parameters
    ----------
    backend : eval backend (``generate(prompts, params, seed, vector) -> Generated``), e.g. HFBackend.
    model : the backend's torch model, whose forward calls are counted (None = not counted).
    bench : dev Benchmark (scores its own answers); prompts : its problems' prompt token ids, same order.
    vectors : ``vectors(direction, sign) -> SteeringVector`` (alpha and mode applied).
    params : GenParams (n samples, temperature, top_p, max_tokens); seed : sampling seed of every arm.
    cache_dir : one JSON file per finished arm; a file made with the same settings is reused (resume).

    Returns
    -------
    (rows, base): rows sorted by ``delta_pass_at_k`` descending (ties: ``delta_score`` descending,
    lower direction, + first), each ``{rank, direction, sign, pass_at_k, delta_pass_at_k, ci_low,
    ci_high, score, delta_score, forward_passes, generated_tokens, truncated, reused}``; base =
    ``{pass_at_k, score, forward_passes, generated_tokens, n_dev, n_samples, k, reused}``. The
    interval is a paired bootstrap over problems of the per-problem Pass@k differences.
    """
    from skillray.artifacts import atomic_write_json, fingerprint
    from skillray.eval.backends import vector_key
    from skillray.eval.passk import bootstrap_mean_ci

    if not 1 <= k <= params.n:
        raise ValueError(f"probe.accuracy_k={k}: Pass@k needs 1 <= k <= n_samples={params.n}")
    arms: list[tuple[int | None, int]] = [(None, 1)] + [(int(d), s) for d in directions for s in (1, -1)]
    settings = {"bench": bench.fingerprint, "params": dataclasses.asdict(params), "seed": int(seed),
                "pass_score": pass_score}  # fmt: skip
    results = {}
    for i, (d, s) in enumerate(arms):
        vec = None if d is None else vectors(d, s)
        key = fingerprint({**settings, "vector": vector_key(vec)})
        path = Path(cache_dir) / f"{_arm_name(d, s)}.json" if cache_dir is not None else None
        res = None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                got = json.loads(path.read_text())
                if got.get("key") == key:
                    res = {**got, "reused": True}
        if res is None:
            res = {**_generate_arm(backend, model, bench, prompts, params, seed, vec, pass_score), "key": key,
                   "arm": _arm_name(d, s)}  # fmt: skip
            if path is not None:
                atomic_write_json(path, res)
            res["reused"] = False
        results[(d, s)] = res
        if progress:
            progress(i + 1, len(arms))

    n = params.n
    b = results[(None, 1)]
    vb, sb = _per_problem(bench, b["samples"], k, n)  # (P,)
    rows = []
    for (d, s), res in results.items():
        if d is None:
            continue
        va, sa = _per_problem(bench, res["samples"], k, n)
        lo, hi = bootstrap_mean_ci(va - vb, n_boot, confidence, seed)
        rows.append({"direction": d, "sign": s, "pass_at_k": float(va.mean()), "delta_pass_at_k": float((va - vb).mean()),
                     "ci_low": lo, "ci_high": hi, "score": float(sa.mean()), "delta_score": float((sa - sb).mean()),
                     "forward_passes": res["forward_passes"], "generated_tokens": res["generated_tokens"],
                     "truncated": sum(r["finish_reason"] == "length" for r in res["samples"]),
                     "reused": res["reused"]})  # fmt: skip
    rows.sort(key=lambda r: (-r["delta_pass_at_k"], -r["delta_score"], r["direction"], -r["sign"]))
    for i, r in enumerate(rows):
        r["rank"] = i
    base = {"pass_at_k": float(vb.mean()), "score": float(sb.mean()), "forward_passes": b["forward_passes"],
            "generated_tokens": b["generated_tokens"], "n_dev": len(bench.problems), "n_samples": n, "k": k,
            "truncated": sum(r["finish_reason"] == "length" for r in b["samples"]), "reused": b["reused"]}  # fmt: skip
    return rows, base


def markdown_table(rows: list[dict], base: dict, labels: dict[int, str] | None = None) -> str:
    """The ranked accuracy rows as a Markdown table."""
    k = base["k"]
    lines = [f"Unsteered Pass@{k}: {base['pass_at_k']:.4f} (mean score {base['score']:.4f}) over {base['n_dev']} "
             f"procedural dev problems x {base['n_samples']} samples ({base['forward_passes']} forward passes, "
             f"{base['generated_tokens']} generated tokens).", "",
             f"| rank | direction | sign | label | delta Pass@{k} | CI (bootstrap) | delta score | forward passes | generated tokens |",
             "|---:|---:|:---:|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lab = (labels or {}).get(r["direction"], "")
        lines.append(f"| {r['rank']} | d{r['direction']} | {'+' if r['sign'] == 1 else '-'} | {lab} | "
                     f"{r['delta_pass_at_k']:+.4f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['delta_score']:+.4f} | "
                     f"{r['forward_passes']} | {r['generated_tokens']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
