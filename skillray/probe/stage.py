"""The probe stage: model + ``<run>/basis`` + corpus -> ``<run>/probe/``.

Output in ``<run>/probe/`` (each probe only when it ran, see ``ProbeConfig.probes``):

* ``likelihood.parquet`` / ``.json`` / ``.md``: one row per (direction, sign), ranked by the change
  in mean response log-likelihood of corpus solutions (``rank, direction, sign, alpha, loglik,
  delta_loglik, delta_se, forward_passes``); the JSON also holds the unsteered baseline, the dev
  ids and the cost;
* ``accuracy.parquet`` / ``.json`` / ``.md``: one row per (direction, sign), ranked by the change
  in Pass@k on the procedural dev set (``rank, direction, sign, alpha, pass_at_k, delta_pass_at_k,
  ci_low, ci_high, score, delta_score, forward_passes, generated_tokens, truncated``); the JSON
  also holds the baseline, the dev problems and the cost; ``accuracy/arms/<arm>.json`` holds each
  arm's scored samples (a killed run resumes arm by arm);
* ``probe.parquet`` / ``.json`` / ``.md``: the combined ranked table (ranked by the expensive probe
  that ran: accuracy, else likelihood), each probe's cost (forward passes, generated tokens, input
  tokens, seconds) and, when both ran, the agreement of the cheap ranking with the expensive one
  (Spearman, Kendall, top-1) over (direction, sign) pairs;
* ``manifest.json``: the probe config, input fingerprints (model, basis, corpus), summary.
"""

from __future__ import annotations

import importlib
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import (StageManifest, atomic_write_bytes, atomic_write_json, finished_input, prepare_stage,
                                read_manifest)
from skillray.config import EvalConfig, ModelConfig, ProbeConfig

from skillray.probe.probes import PROBES as REGISTRY

FORMAT = "skillray.probe/2"
PROBES = tuple(REGISTRY)  # cheap -> expensive
SCORE = {name: p.score for name, p in REGISTRY.items()}


def dev_records(records: list, n_dev: int, seed: int) -> list:
    """A seeded sample of ``n_dev`` chat records with an assistant turn, in corpus order."""
    pool = [r for r in records if r.messages is not None and r.messages[-1]["role"] == "assistant"]
    if not pool:
        raise ValueError("probe: no corpus record ends with an assistant turn (a reference solution); "
                         "the likelihood probe needs chat records with responses")
    if n_dev > len(pool):
        raise ValueError(f"probe.n_dev={n_dev} but only {len(pool)} records have a reference solution; "
                         f"use n_dev <= {len(pool)}")
    keep = np.sort(np.random.default_rng(seed).choice(len(pool), size=n_dev, replace=False))
    return [pool[int(i)] for i in keep]


def probe_key_config(cfg: ProbeConfig, eval_cfg: EvalConfig, directions: list[int]) -> dict:
    """The settings that decide the probe's output (execution settings such as threads left out)."""
    d = cfg.model_dump()
    used = {"probes"}.union(*(REGISTRY[p].fields for p in cfg.probes))
    key = {k: v for k, v in d.items() if k in used}
    key["directions"] = directions
    if _uses_eval(cfg):  # prompts and scoring come from the eval section
        key["eval"] = {k: getattr(eval_cfg, k) for k in ("system_prompt", "instruction", "procedural_pass_score",
                                                          "n_bootstrap", "confidence")}  # fmt: skip
    return key


def check_dev_seed(cfg: ProbeConfig, eval_cfg: EvalConfig) -> None:
    """The accuracy probe's dev seed must differ from every procedural held-out seed of the eval section."""
    for b in eval_cfg.benchmarks:
        if b.is_procedural and b.seed == cfg.accuracy_seed:
            raise ValueError(f"probe.accuracy_seed={cfg.accuracy_seed} is the held-out seed of eval benchmark "
                             f"'procedural'; the probe's dev set must be disjoint from the eval set: pick another "
                             f"seed (e.g. {2047 if b.seed != 2047 else 2046})")  # fmt: skip


def short_labels(run_dir: Path) -> dict[int, str]:
    labels = {}
    if (run_dir / "interpret" / "labels.json").is_file():
        from skillray.interpret import read_labels

        try:
            for j, item in enumerate(read_labels(run_dir / "interpret").get("directions", [])):
                labels[int(item.get("direction", j))] = str((item.get("label") or {}).get("short", ""))
        except (AttributeError, TypeError, KeyError):
            labels = {}
    return labels


def _write_table(stage_dir: Path, name: str, rows: list[dict], cols: list[str], doc: dict, md: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in cols}), buf)
    atomic_write_bytes(stage_dir / f"{name}.parquet", buf.getvalue())
    atomic_write_json(stage_dir / f"{name}.json", {"format": FORMAT, **doc, "rows": rows})
    atomic_write_bytes(stage_dir / f"{name}.md", md.encode())


def _corpus_questions(records: list) -> set[str]:
    """First user turn (or text) of every corpus record: dev problems equal to one are skipped."""
    out = set()
    for r in records:
        if r.messages is not None:
            out.update([m["content"] for m in r.messages if m["role"] == "user"][:1])
        elif r.text is not None:
            out.add(r.text)
    return out


def combine(tables: dict[str, list[dict]], costs: dict[str, dict]) -> tuple[list[dict], dict | None, str]:
    """The combined ranked rows, the agreement of the cheap ranking with the expensive one, and the ranking probe.

    tables : {probe: ranked rows}; rows are merged on (direction, sign) and ranked by the most
    expensive probe present; ties of the accuracy probe (frequent on a small dev set: many pairs
    change Pass@k by exactly 0) go to the mean-score change, then to the likelihood change, so
    the cheap probe orders what the expensive one cannot tell apart. Each row carries
    ``<probe>_rank``, the probe's score and its per-pair cost columns.
    """
    from skillray.probe.agreement import rank_agreement

    ran = [p for p in PROBES if p in tables]
    by = ran[-1]
    merged: dict[tuple[int, int], dict] = {}
    for p in ran:
        for r in tables[p]:
            row = merged.setdefault((r["direction"], r["sign"]), {"direction": r["direction"], "sign": r["sign"]})
            row[f"{p}_rank"] = r["rank"]
            row[SCORE[p]] = r[SCORE[p]]
            row[f"{p}_forward_passes"] = r["forward_passes"]
            row.update({col: r[src] for col, src in REGISTRY[p].merged.items()})
    if by == "accuracy":
        rows = sorted(merged.values(), key=lambda r: (-r["delta_pass_at_k"], -r["delta_score"],
                                                      -r.get("delta_loglik", 0.0), r["direction"], -r["sign"]))  # fmt: skip
    else:
        rows = sorted(merged.values(), key=lambda r: r[f"{by}_rank"])
    for i, r in enumerate(rows):
        r["rank"] = i
    agreement = None
    if len(ran) == 2:
        cheap, dear = ran
        score = {p: {(r["direction"], r["sign"]): r[SCORE[p]] for r in tables[p]} for p in ran}
        agreement = {"cheap": cheap, "expensive": dear, **rank_agreement(score[cheap], score[dear])}
        agreement["cost_ratio_forward_passes"] = costs[dear]["forward_passes"] / max(1, costs[cheap]["forward_passes"])
    return rows, agreement, by


def combined_markdown(rows: list[dict], costs: dict, agreement: dict | None, by: str,
                      labels: dict[int, str] | None = None) -> str:  # fmt: skip
    """The combined table, the costs and the rank agreement as Markdown."""
    ran = [p for p in PROBES if p in costs]
    lines = [f"# Probe: (direction, sign) pairs ranked by {by} ({SCORE[by]})", ""]
    head = ["rank", "direction", "sign", "label"]
    if "likelihood" in ran:
        head += ["delta loglik", "likelihood rank"]
    if "accuracy" in ran:
        head += ["delta Pass@k", "CI", "delta score", "accuracy rank"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h != "label" else "---" for h in head) + "|"]
    for r in rows:
        cells = [str(r["rank"]), f"d{r['direction']}", "+" if r["sign"] == 1 else "-", (labels or {}).get(r["direction"], "")]
        if "likelihood" in ran:
            cells += [f"{r['delta_loglik']:+.5f}", str(r["likelihood_rank"])]
        if "accuracy" in ran:
            cells += [f"{r['delta_pass_at_k']:+.4f}", f"[{r['accuracy_ci_low']:+.3f}, {r['accuracy_ci_high']:+.3f}]",
                      f"{r['delta_score']:+.4f}", str(r["accuracy_rank"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "", "| probe | forward passes | generated tokens | input tokens | seconds |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for p in ran:
        c = costs[p]
        lines.append(f"| {p} | {c['forward_passes']} | {c['generated_tokens']} | {c['input_tokens']} | {c['seconds']:.1f} |")
    if agreement is not None:
        def num(x):
            return "undefined" if x is None else f"{x:+.3f}"

        lines += ["", "## Agreement of the likelihood ranking with the accuracy ranking", "",
                  f"Over {agreement['n_pairs']} (direction, sign) pairs: Spearman {num(agreement['spearman'])}, "
                  f"Kendall tau-b {num(agreement['kendall'])}; top-1 {'agrees' if agreement['top1_agree'] else 'differs'} "
                  f"(likelihood best {agreement['cheap_top']}, accuracy best {agreement['expensive_top']})."
                  + (f" {agreement['note']}." if agreement["note"] else "")]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_probe(
    run_dir: str | Path,
    cfg: ProbeConfig,
    model_cfg: ModelConfig | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    eval_cfg: EvalConfig | None = None,
    device: str = "cpu",
) -> StageManifest:
    """Probe every chosen direction of ``<run>/basis`` with ``model_cfg`` by ``cfg.probes``; write ``<run>/probe``.

    With ``cfg.num_gpus`` > 0 the work runs in one Ray task holding those GPUs (``device`` cuda there, when
    the task sees one); ``progress`` is then not called.

    ``eval_cfg`` (the run's eval section; default EvalConfig()) gives the accuracy probe its prompt
    (system prompt, instruction), its pass score and bootstrap settings, and the held-out seeds the
    dev seed must avoid. Raises FileNotFoundError (no corpus / basis), ValueError naming the bad
    field, StageMismatchError when ``<run>/probe`` was made differently (use ``force``).
    """
    import torch

    from skillray.basis import SkillBasis
    from skillray.corpus.records import read_records
    from skillray.models import choose_dtype, load_model, load_tokenizer, resolve_model
    from skillray.steer import SteeringSpec, SteeringVector

    run_dir = Path(run_dir)
    model_cfg = model_cfg or ModelConfig()
    eval_cfg = eval_cfg or EvalConfig()
    corpus_m = finished_input(run_dir, "corpus")
    basis_m = finished_input(run_dir, "basis")
    basis = SkillBasis.load(run_dir / "basis")
    k = int(basis.components_.shape[0])
    directions = list(range(k)) if cfg.directions is None else list(cfg.directions)
    bad = [d for d in directions if not 0 <= d < k]
    if bad:
        raise ValueError(f"probe.directions {bad} out of range: the basis has {k} directions (0..{k - 1})")
    if _uses_eval(cfg):
        check_dev_seed(cfg, eval_cfg)
    if cfg.num_gpus > 0:
        return _run_as_task(run_dir, cfg, model_cfg, force, eval_cfg)
    resolved = resolve_model(model_cfg)
    dtype = choose_dtype(model_cfg.dtype, device)
    inputs = {"model": resolved.fingerprint, "basis": basis_m.key, "corpus": corpus_m.outputs["fingerprint"]}
    stage_dir = run_dir / "probe"
    want = StageManifest("probe", config={"probe": probe_key_config(cfg, eval_cfg, directions), "dtype": dtype.name},
                         inputs=inputs)  # fmt: skip
    if prepare_stage(stage_dir, want, force) == "skip":
        return read_manifest(stage_dir)
    want.write(stage_dir)

    t0 = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    records = read_records(run_dir / "corpus" / corpus_m.outputs["records"])
    backend = None
    if _uses_eval(cfg):  # one model for every probe: the eval backend's
        from skillray.eval.backends import HFBackend

        backend = HFBackend(resolved, dtype=dtype.name, device=device, num_threads=cfg.num_threads,
                            trust_remote_code=model_cfg.trust_remote_code, batch_size=cfg.batch_size)  # fmt: skip
        model, tokenizer = backend.engine.model, backend.engine.tokenizer
    else:
        tokenizer = load_tokenizer(resolved, model_cfg.trust_remote_code)
        model = load_model(resolved, dtype.torch_dtype, device, model_cfg.trust_remote_code)

    def vectors(d: int, s: int):
        return SteeringVector.from_spec(basis, SteeringSpec(d, s, cfg.alpha, cfg.mode))

    arms_per_probe = 1 + 2 * len(directions)
    total = arms_per_probe * len(cfg.probes)

    def stepper(offset: int):
        return (lambda done, _t: progress(offset + done, total)) if progress else None

    labels = short_labels(run_dir)
    tables, costs, summary = {}, {}, {}
    offset = 0
    ctx = _Context(cfg, eval_cfg, corpus_m, records, backend, model, tokenizer, vectors, directions, stage_dir)
    for probe in [p for p in PROBES if p in cfg.probes]:
        t1 = time.perf_counter()
        rows, base, info = _RUN[probe](ctx, stepper(offset))
        offset += arms_per_probe
        for r in rows:
            r["alpha"] = cfg.alpha
        cost = {"forward_passes": base["forward_passes"] + sum(r["forward_passes"] for r in rows),
                "generated_tokens": base.get("generated_tokens", 0) + sum(r.get("generated_tokens", 0) for r in rows),
                "input_tokens": info.pop("input_tokens"), "seconds": round(time.perf_counter() - t1, 2)}  # fmt: skip
        tables[probe], costs[probe] = rows, cost
        doc, best = info.pop("_doc"), info.pop("_best")
        summary.update(info)
        markdown_table = importlib.import_module(REGISTRY[probe].module).markdown_table
        _write_table(stage_dir, probe, rows, list(REGISTRY[probe].columns), {"base": base, "cost": cost, **doc},
                     markdown_table(rows, base, labels))  # fmt: skip
        summary[f"{probe}_best"] = f"d{rows[0]['direction']}{'+' if rows[0]['sign'] == 1 else '-'} ({best})"
        summary[f"{probe}_cost"] = f"{cost['forward_passes']} forward passes, {cost['generated_tokens']} generated tokens"
    if backend is not None:
        backend.close()

    rows, agreement, by = combine(tables, costs)
    cols = list(dict.fromkeys(["rank", "direction", "sign"] + [c for r in rows for c in r]))
    _write_table(stage_dir, "probe", rows, cols, {"ranked_by": by, "costs": costs, "agreement": agreement,
                                                  "probes": list(tables)},
                 combined_markdown(rows, costs, agreement, by, labels))  # fmt: skip
    want.outputs = {"format": FORMAT, "table": "probe.parquet", "json": "probe.json", "markdown": "probe.md",
                    "ranked_by": by, **{p: f"{p}.json" for p in tables}}  # fmt: skip
    want.summary = {"probes": list(tables), "directions": len(directions), "ranked_by": by,
                    "best": f"d{rows[0]['direction']}{'+' if rows[0]['sign'] == 1 else '-'}", **summary}  # fmt: skip
    if agreement is not None:
        def num(x):
            return None if x is None else round(x, 4)

        want.summary.update(spearman=num(agreement["spearman"]), kendall=num(agreement["kendall"]),
                            top1_agree=agreement["top1_agree"])  # fmt: skip
    want.summary["forward_passes"] = sum(c["forward_passes"] for c in costs.values())
    want.summary["dtype"] = str(dtype)
    want.summary["seconds"] = round(time.perf_counter() - t0, 2)
    want.complete = True
    want.write(stage_dir)
    return want


def _run_as_task(run_dir: Path, cfg: ProbeConfig, model_cfg: ModelConfig, force: bool, eval_cfg: EvalConfig) -> StageManifest:
    """``run_probe`` in one Ray task holding ``cfg.num_gpus`` GPUs (and ``num_threads`` CPUs) on the cluster.

    An error raised there comes back as an instance of its own class (Ray's RayTaskError subclasses the
    cause), so a config error is still a ValueError to the CLI.
    """
    import ray

    from skillray.raytools import ensure_ray

    ensure_ray()
    local = cfg.model_copy(update={"num_gpus": 0})
    run_dir = Path(run_dir).resolve()

    @ray.remote(num_gpus=cfg.num_gpus, num_cpus=cfg.num_threads or 1, max_retries=0)
    def probe_task() -> None:
        import torch

        run_probe(run_dir, local, model_cfg, force=force, eval_cfg=eval_cfg,
                  device="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip

    ray.get(probe_task.remote())
    return read_manifest(run_dir / "probe")


def _uses_eval(cfg: ProbeConfig) -> bool:
    return any(REGISTRY[p].uses_eval for p in cfg.probes)


@dataclass
class _Context:
    """What a probe's run reads: the settings, the corpus, the one model (and the eval backend holding it when a
    probe generates), the steering vectors ``(direction, sign) -> SteeringVector`` and the stage folder."""

    cfg: ProbeConfig
    eval_cfg: EvalConfig
    corpus_m: StageManifest
    records: list
    backend: object
    model: object
    tokenizer: object
    vectors: Callable
    directions: list[int]
    stage_dir: Path


def _likelihood(ctx: _Context, progress):
    """rows, base, info (summary entries, plus ``_doc`` for its table and ``_best`` for the summary)."""
    from skillray.extract.tokenize import tokenize_records
    from skillray.probe.likelihood import likelihood_probe

    cfg, tokenizer, directions = ctx.cfg, ctx.tokenizer, ctx.directions
    dev = dev_records(ctx.records, cfg.n_dev, cfg.seed)
    tok = tokenize_records(dev, tokenizer, cfg.max_tokens)
    keep = ~tok.empty_response
    dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError(f"probe: every dev record's response was cut away by max_tokens={cfg.max_tokens}; raise it")
    if dropped:
        warnings.warn(f"probe: {dropped} dev record(s) lost their whole response to max_tokens={cfg.max_tokens}; "
                      "dropped", stacklevel=3)  # fmt: skip
    idx = np.flatnonzero(keep)
    tok.ids = [tok.ids[i] for i in idx]
    tok.input_ids = [tok.input_ids[i] for i in idx]
    tok.response_start, tok.truncated = tok.response_start[idx], tok.truncated[idx]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, base = likelihood_probe(ctx.model, tok, ctx.vectors, directions, cfg.batch_size, pad, progress)
    tokens = sum(len(s) for s in tok.input_ids) * (1 + 2 * len(directions))
    info = {"n_dev": base["n_dev"], "base_loglik": round(base["loglik"], 5), "dropped_dev_records": dropped,
            "truncated_dev_records": int(tok.truncated.sum()), "input_tokens": tokens,
            "_doc": {"dev_ids": tok.ids}, "_best": f"{rows[0]['delta_loglik']:+.5f}"}  # fmt: skip
    return rows, base, info


def _accuracy(ctx: _Context, progress):
    """rows, base, info (as :func:`_likelihood`)."""
    from pydantic import ValidationError

    from skillray.config import CorpusConfig
    from skillray.eval.backends import GenParams
    from skillray.eval.prompts import build_messages, encode_chat
    from skillray.probe.accuracy import accuracy_probe, dev_benchmark

    cfg, eval_cfg, tokenizer, directions = ctx.cfg, ctx.eval_cfg, ctx.tokenizer, ctx.directions
    try:
        corpus_cfg = CorpusConfig.model_validate(ctx.corpus_m.config)
    except ValidationError:
        corpus_cfg = None  # not a generated corpus' config: questions are still checked
    seen = _corpus_questions(ctx.records)
    # dev problems never repeat a test question either (small question spaces repeat texts across seeds), so no
    # test problem informs the ranking; only the offline procedural sets are loaded for this
    from skillray.eval.benchmarks import load_benchmarks

    procedural = [b for b in eval_cfg.benchmarks if b.is_procedural]
    test_questions = {p.question for b in load_benchmarks(procedural, corpus_cfg, seen) for p in b.problems}
    bench = dev_benchmark(cfg.accuracy_n_dev, cfg.accuracy_seed, cfg.accuracy_tasks, corpus_cfg, seen | test_questions)
    prompts = [encode_chat(tokenizer, build_messages(p.question, eval_cfg.system_prompt, eval_cfg.instruction))
               for p in bench.problems]  # fmt: skip
    params = GenParams(n=cfg.accuracy_n_samples, temperature=cfg.accuracy_temperature, top_p=cfg.accuracy_top_p,
                       max_tokens=cfg.accuracy_max_new_tokens)  # fmt: skip
    rows, base = accuracy_probe(ctx.backend, ctx.model, bench, prompts, ctx.vectors, directions, params,
                                cfg.accuracy_sample_seed, k=cfg.accuracy_k, pass_score=eval_cfg.procedural_pass_score,
                                n_boot=eval_cfg.n_bootstrap, confidence=eval_cfg.confidence,
                                cache_dir=ctx.stage_dir / "accuracy" / "arms", progress=progress)  # fmt: skip
    reused = int(base.pop("reused")) + sum(r.pop("reused") for r in rows)
    tokens = sum(len(p) for p in prompts) * (1 + 2 * len(directions))
    info = {f"accuracy_base_pass@{cfg.accuracy_k}": round(base["pass_at_k"], 4), "accuracy_n_dev": len(bench.problems), "accuracy_heldout_duplicates_skipped": bench.dropped,
            "accuracy_truncated_samples": base["truncated"] + sum(r["truncated"] for r in rows),
            "accuracy_arms_reused": reused, "input_tokens": tokens,
            "_doc": {"dev_problems": [{"id": p.id, "task": p.task, "gold": p.gold} for p in bench.problems],
                     "dev_source": bench.source}, "_best": f"{rows[0]['delta_pass_at_k']:+.4f}"}  # fmt: skip
    return rows, base, info


_RUN = {"likelihood": _likelihood, "accuracy": _accuracy}  # each probe of the registry: (ctx, progress) -> rows, base, info


def read_probe(stage_dir: str | Path, probe: str | None = None) -> dict:
    """A probe folder's table: the combined one (``probe.json``: rows ranked, costs, agreement) or, with
    ``probe="likelihood"`` / ``"accuracy"``, that probe's own (rows ranked, base, cost)."""
    from skillray.artifacts import read_json, verify_artifact

    name = probe or "probe"
    if name not in ("probe",) + PROBES:
        raise ValueError(f"probe {probe!r}: expected one of {list(PROBES)} or None (the combined table)")
    p = Path(stage_dir) / f"{name}.json"
    if not p.is_file():
        hint = f"add {probe!r} to probe.probes and rerun" if probe else "run `skillray probe` first"
        raise FileNotFoundError(f"no {name}.json in {stage_dir}; {hint}")
    verify_artifact(p)
    return read_json(p)


def probe_ranking(stage_dir: str | Path, by: str = "auto") -> tuple[list[tuple[int, int, float]], str, str]:
    """The ranked (direction, sign, score) triples of a finished probe folder, best first.

    ``by``: "likelihood" or "accuracy" (that probe's own table), or "auto" (the combined table:
    its order and its ranking probe's score). Returns (triples, probe used, the probe manifest's key).
    """
    m = read_manifest(stage_dir)
    if m is None or not m.complete:
        raise FileNotFoundError(f"{stage_dir}: no finished probe; run `skillray probe` first")
    if by == "auto":
        doc = read_probe(stage_dir)
        by, rows = doc["ranked_by"], doc["rows"]
    else:
        rows = read_probe(stage_dir, by)["rows"]
    return [(int(r["direction"]), int(r["sign"]), float(r[SCORE[by]])) for r in rows], by, m.key
