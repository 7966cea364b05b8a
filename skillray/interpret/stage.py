"""The interpret stage: ``<run>/basis`` + store + corpus -> ``<run>/interpret`` (skill profile) + ``<run>/report``.

Output in ``<run>/interpret/``:

* ``projections.parquet``: one row per example: ``id``, ``skill``, ``d0`` .. ``d{k-1}`` (float64);
* ``labels.json``: per direction the label, its fidelity with every judgement, the labelled
  top/bottom examples (as sent, with token counts) and the human-skill mix of each pole;
* ``factors.json`` + ``factors.md``: every direction against every factor of the records (skill,
  metadata, template, token length), with intervals and length/template flags
  (:mod:`skillray.interpret.factors`);
* ``manifest.json``: config slice, input fingerprints, summary.

Then the run report (``<run>/report/index.html`` + ``report.md``) is rebuilt.

The labeller and judge are an OpenAI-compatible endpoint (responses cached in
``<run>/llm_cache`` unless ``cache_dir`` says otherwise) or the offline stand-ins. Endpoint
settings that do not change answers (URL, key, timeouts, retries, concurrency, cache
location) are not part of the stage key.
"""

from __future__ import annotations

import collections
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import (StageManifest, atomic_write_bytes, atomic_write_json, finished_input, prepare_stage,
                                read_json, read_manifest)
from skillray.config import InterpretConfig, ModelConfig
from skillray.llm_client import ChatClient, ResponseCache, redact_url
from skillray.interpret.factors import FACTORS_JSON, FACTORS_MD, align, markdown, record_factors
from skillray.interpret.labels import Label, judge_messages, label_messages, parse_judgement, parse_label
from skillray.interpret.offline import ContrastiveKeywords, KeywordJudge
from skillray.interpret.profile import cut_to_tokens, pole_sizes, project, record_text, split_poles

ProgressFn = Callable[[int, int], None]

FORMAT = "skillray.interpret/1"
PROJECTIONS = "projections.parquet"
LABELS = "labels.json"

# Settings that change where/how calls are made, not what they answer: not in the stage key.
_EXECUTION = ("base_url", "api_key_env", "timeout_s", "max_retries", "max_concurrency", "cache_dir")
# Settings that only matter when an endpoint is used.
_LLM_ONLY = ("model", "temperature", "label_max_tokens", "judge_max_tokens", "max_example_tokens")


def resolve_roles(cfg: InterpretConfig) -> tuple[str, str]:
    """(labeller, judge), each "llm" or "offline"; raises ValueError listing every missing setting."""
    labeller = cfg.labeller if cfg.labeller != "auto" else ("llm" if cfg.base_url else "offline")
    judge = cfg.judge if cfg.judge != "auto" else ("llm" if cfg.base_url else "offline")
    problems = []
    if "llm" in (labeller, judge):
        who = " and ".join(f"interpret.{n}=llm" for n, v in (("labeller", labeller), ("judge", judge)) if v == "llm")
        if not cfg.base_url:
            problems.append(f"{who} needs interpret.base_url (e.g. http://127.0.0.1:8000/v1 from `skillray serve`)")
        if not cfg.model:
            problems.append(f"{who} needs interpret.model, the model name at the endpoint (listed at <base_url>/models)")
    if problems:
        raise ValueError("; ".join(problems))
    return labeller, judge


def interpret_key_config(cfg: InterpretConfig, labeller: str, judge: str) -> dict:
    """The config slice that decides the output (what the manifest records and compares)."""
    uses_llm = "llm" in (labeller, judge)
    d = {k: v for k, v in cfg.model_dump().items() if k not in _EXECUTION and (uses_llm or k not in _LLM_ONLY)}
    d.update(labeller=labeller, judge=judge)
    return d


def run_interpret(
    run_dir: str | Path,
    cfg: InterpretConfig,
    model_cfg: ModelConfig | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> StageManifest:
    """Profile, label and score every direction of ``<run>/basis``; write ``<run>/interpret`` and the report.

    ``model_cfg`` is the run's model: its tokenizer counts the tokens of examples sent to an
    endpoint (unused offline). Raises FileNotFoundError / ValueError for missing or unfinished
    inputs and bad settings, :class:`~skillray.llm_client.EndpointError` when the endpoint
    fails after its retries, StageMismatchError when ``<run>/interpret`` was made differently.
    """
    from skillray.basis import SkillBasis
    from skillray.corpus.records import read_records
    from skillray.extract.store import ActivationStore

    run_dir = Path(run_dir)
    labeller, judge = resolve_roles(cfg)
    uses_llm = "llm" in (labeller, judge)
    corpus_m = finished_input(run_dir, "corpus")
    basis_m = finished_input(run_dir, "basis")
    store = ActivationStore(run_dir / "extract")
    store.verify()  # checksums once per shard (cached in verified.json), then cheap
    if basis_m.inputs.get("store") != store.fingerprint:
        raise ValueError(f"{run_dir / 'basis'} was fitted on another activation store; rerun `skillray basis --force`")

    resolved = None
    inputs = {"basis": basis_m.key, "store": store.fingerprint, "corpus": corpus_m.outputs["fingerprint"]}
    if uses_llm:
        from skillray.models import resolve_model

        resolved = resolve_model(model_cfg or ModelConfig())
        inputs["tokenizer"] = resolved.fingerprint
    stage_dir = run_dir / "interpret"
    want = StageManifest("interpret", config={"interpret": interpret_key_config(cfg, labeller, judge)}, inputs=inputs)
    if prepare_stage(stage_dir, want, force) == "skip":
        from skillray.report import write_run_report

        if not (run_dir / "report" / "index.html").is_file():
            write_run_report(run_dir, embed_images=cfg.embed_images)
        return read_manifest(stage_dir)
    want.write(stage_dir)  # unfinished until the end

    t0 = time.perf_counter()
    basis = SkillBasis.load(run_dir / "basis")
    ids = store.ids()
    records = {r.id: r for r in read_records(run_dir / "corpus" / corpus_m.outputs["records"])}
    missing = [i for i in ids if i not in records]
    if missing:
        raise ValueError(f"store row id {missing[0]!r} ({len(missing)} in all) is not in the corpus; re-extract with --force")
    texts = [record_text(records[i]) for i in ids]
    skills = [records[i].skill for i in ids]
    tokens, tokens_source = _token_counts(store, [records[i] for i in ids], model_cfg)
    factors = record_factors([records[i] for i in ids], tokens)  # bad metadata fails before any call

    z = project(basis, store, cfg.projection)  # (N, k)
    n, k = z.shape
    _write_projections(stage_dir / PROJECTIONS, ids, skills, z)
    aligned = align(z, factors, basis.explained_variance_ratio_, cfg.factor_bootstrap, cfg.seed)
    aligned["tokens_source"] = tokens_source
    atomic_write_json(stage_dir / FACTORS_JSON, aligned)
    atomic_write_bytes(stage_dir / FACTORS_MD, markdown(aligned).encode())
    n_label, n_held = pole_sizes(n, cfg.top_n, cfg.n_heldout)
    poles = [split_poles(z[:, j], n_label, n_held) for j in range(k)]

    # Examples as an endpoint sees them: cut to the token budget (only rows that are sent).
    shown = dict.fromkeys(range(n), None)
    cut_rows, tokens_cut = 0, 0
    sent_rows = sorted({int(r) for p in poles for part in (p.top, p.bottom, p.held_top, p.held_bottom) for r in part})
    ntok: dict[int, int] = {}
    if uses_llm:
        from skillray.models import load_tokenizer

        tok = load_tokenizer(resolved, (model_cfg or ModelConfig()).trust_remote_code)
        cut, counts, removed = cut_to_tokens([texts[r] for r in sent_rows], tok, cfg.max_example_tokens)
        for r, t, c, m in zip(sent_rows, cut, counts, removed):
            shown[r], ntok[r] = t, c
            cut_rows += m > 0
            tokens_cut += m
    view = {r: (shown[r] if shown[r] is not None else texts[r]) for r in sent_rows}

    keywords = ContrastiveKeywords(n_keywords=cfg.n_keywords, min_df=cfg.min_df).fit(texts)
    client = None
    if uses_llm:
        cache = ResponseCache(Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "llm_cache")
        client = ChatClient(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            max_concurrency=cfg.max_concurrency,
            cache=cache,
        )
    n_calls = (k if labeller == "llm" else 0) + (k * 2 * n_held if judge == "llm" else 0)
    calls_done = 0

    def step(done: int, _total: int) -> None:
        if progress:
            progress(calls_done + done, max(n_calls, 1))

    # 1. Labels.
    offline_labels = [keywords.label([texts[r] for r in p.top], [texts[r] for r in p.bottom]) for p in poles]
    parse_failures = 0
    if labeller == "llm":
        reqs = [
            client.request(
                label_messages([view[int(r)] for r in p.top], [view[int(r)] for r in p.bottom]),
                cfg.label_max_tokens,
                cfg.temperature,
                cfg.seed,
            )
            for p in poles
        ]
        replies = client.complete_many(reqs, step)
        calls_done += len(reqs)
        labels = []
        for reply, fallback in zip(replies, offline_labels):
            try:
                lab = parse_label(reply)
            except ValueError as e:
                parse_failures += 1
                lab = Label(**{**fallback.__dict__, "source": "llm-unparsed", "raw": reply, "parse_error": str(e)})
            labels.append(lab)
    else:
        labels = offline_labels

    # 2. Fidelity: held-out examples of each pole placed with the label by the judge.
    held = []  # (direction, row, true side, pole-order flag)
    for j, p in enumerate(poles):
        rng = np.random.default_rng([cfg.seed, j])
        rows = [(int(r), "a") for r in p.held_top] + [(int(r), "b") for r in p.held_bottom]
        flips = rng.random(len(rows)) < 0.5  # True: pole A is shown as group 1
        held += [(j, r, side, bool(f)) for (r, side), f in zip(rows, flips)]
    verdicts: list[str | None]
    if judge == "llm" and held:
        reqs = [client.request(judge_messages(labels[j], view[r], a_first), cfg.judge_max_tokens, cfg.temperature, cfg.seed)
                for j, r, _side, a_first in held]
        replies = client.complete_many(reqs, step)
        calls_done += len(reqs)
        verdicts = []
        for (_j, _r, _s, a_first), reply in zip(held, replies):
            g = parse_judgement(reply)
            verdicts.append(None if g is None else ("a" if (g == 1) == a_first else "b"))
    else:
        kj = KeywordJudge(keywords)
        verdicts = [kj.judge(labels[j], texts[r]) for j, r, _s, _f in held]
        replies = [None] * len(held)
    if progress:
        progress(max(n_calls, 1), max(n_calls, 1))

    # 3. Assemble.
    evr = np.asarray(basis.explained_variance_ratio_, dtype=np.float64)
    directions = []
    for j, p in enumerate(poles):
        def ex(r, pole):
            r = int(r)
            d = {"id": ids[r], "skill": skills[r], "projection": round(float(z[r, j]), 6), "pole": pole}
            if uses_llm:
                d.update(sent=view[r], tokens=ntok[r], cut=shown[r] != texts[r])
            return d

        judged = []
        for (jj, r, side, a_first), verdict, reply in zip(held, verdicts, replies):
            if jj != j:
                continue
            judged.append({**ex(r, side), "verdict": verdict, "correct": None if verdict is None else verdict == side,
                           "a_shown_as": 1 if a_first else 2, "reply": reply})
        directions.append({
            "direction": j,
            "explained_variance_ratio": float(evr[j]),
            "label": labels[j].to_json(),
            **fidelity(judged),
            "top": [ex(r, "a") for r in p.top],
            "bottom": [ex(r, "b") for r in p.bottom],
            "judgements": judged,
            "skill_mix": {
                "top": dict(collections.Counter(str(skills[int(r)]) for r in p.top).most_common()),
                "bottom": dict(collections.Counter(str(skills[int(r)]) for r in p.bottom).most_common()),
            },
        })
    atomic_write_json(stage_dir / LABELS, {
        "format": FORMAT,
        "projection": cfg.projection,
        "labeller": labeller if labeller == "offline" else f"llm:{cfg.model}",
        "judge": judge if judge == "offline" else f"llm:{cfg.model}",
        "n_rows": n,
        "n_components": k,
        "per_pole": {"labelled": n_label, "heldout": n_held},
        "snippet_chars": cfg.snippet_chars,
        "explained_variance_ratio": [float(x) for x in evr],
        "directions": directions,
    })

    from skillray.report import write_run_report

    report = write_run_report(run_dir, embed_images=cfg.embed_images)
    fid = [d["fidelity"] for d in directions if d["fidelity"] is not None]
    stats = client.stats.as_dict() if client else {}
    want.outputs = {"projections": PROJECTIONS, "labels": LABELS, "factors": FACTORS_JSON, "n_components": k, "rows": n,
                    "report": str(report)}
    want.summary = {
        "rows": n,
        "directions": k,
        "projection": cfg.projection,
        "labeller": labeller if labeller == "offline" else f"llm:{cfg.model} at {redact_url(cfg.base_url)}",
        "judge": judge if judge == "offline" else f"llm:{cfg.model}",
        "per_pole": f"{n_label} labelled + {n_held} held out",
        "labels": {f"d{j}": lab.short for j, lab in enumerate(labels)},
        "fidelity": {f"d{j}": d["fidelity"] for j, d in enumerate(directions)},
        "mean_fidelity": round(float(np.mean(fid)), 4) if fid else None,
        "aligned_with": {
            f"d{d['direction']}": (f"{d['strongest']['factor']} {d['strongest']['measure']}={d['strongest']['value']:.2f}"
                                   if d["strongest"] else "nothing") + "".join(f" [{f}]" for f in d["flags"])
            for d in aligned["directions"]
        },
        "single_level_factors": [f["name"] for f in aligned["factors"] if f["single_level"]],
        "requests": stats.get("requests", 0),
        "cache_hits": stats.get("cache_hits", 0),
        "retries": stats.get("retries", 0),
        "tokens": f"{stats.get('prompt_tokens', 0)} prompt + {stats.get('completion_tokens', 0)} completion" if client else "0",
        "examples_cut": cut_rows,
        "tokens_cut": tokens_cut,
        "label_parse_failures": parse_failures,
        "judge_abstained": sum(v is None for v in verdicts),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(stage_dir),
        "report": str(report),
    }
    want.complete = True
    want.write(stage_dir)
    return want


def _token_counts(store, records: list, model_cfg: ModelConfig | None) -> tuple[np.ndarray, str]:
    """(N,) tokens per store row and where they come from: the store's sidecars (the tokens each
    pooled vector averages), else, for a store written before they were recorded, the run model's
    tokenizer (whole sequences)."""
    for key, source in (("n_pooled", "store: tokens each pooled vector averages"), ("n_tokens", "store: sequence tokens")):
        counts = store.row_values(key)
        if counts is not None:
            return np.asarray(counts, dtype=np.int64), source
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import load_tokenizer, resolve_model

    model_cfg = model_cfg or ModelConfig()
    tok = load_tokenizer(resolve_model(model_cfg), model_cfg.trust_remote_code)
    max_tokens = store.manifest.config.get("extract", {}).get("max_tokens", 1 << 30)
    return tokenize_records(records, tok, max_tokens).lengths, f"tokenizer of {model_cfg.name_or_path}: sequence tokens"


def fidelity(judged: list[dict]) -> dict:
    """Share of held-out examples placed on their own pole (abstentions count 1/2: chance is 0.5).

    Returns ``fidelity`` (None without held-out examples), ``fidelity_n``, ``fidelity_abstained``
    and ``fidelity_p_value``: one-sided binomial test of the correct count against 0.5
    (abstentions counted as wrong, so the test is conservative).
    """
    from scipy.stats import binomtest

    n = len(judged)
    if n == 0:
        return {"fidelity": None, "fidelity_n": 0, "fidelity_abstained": 0, "fidelity_p_value": None}
    correct = sum(1 for d in judged if d["correct"])
    abstained = sum(1 for d in judged if d["correct"] is None)
    return {
        "fidelity": round((correct + 0.5 * abstained) / n, 4),
        "fidelity_n": n,
        "fidelity_abstained": abstained,
        "fidelity_p_value": round(float(binomtest(correct, n, 0.5, alternative="greater").pvalue), 6),
    }


def _write_projections(path: Path, ids: list[str], skills: list[str | None], z: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"id": pa.array(ids, pa.string()), "skill": pa.array(skills, pa.string())}
    for j in range(z.shape[1]):
        cols[f"d{j}"] = pa.array(z[:, j], pa.float64())
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    atomic_write_bytes(path, buf.getvalue())


def read_projections(stage_dir: str | Path):
    """``projections.parquet`` as a pandas DataFrame: id, skill, d0..d{k-1}."""
    import pandas as pd

    return pd.read_parquet(Path(stage_dir) / PROJECTIONS)


def read_labels(stage_dir: str | Path) -> dict:
    """``labels.json`` of an interpret stage folder."""
    p = Path(stage_dir) / LABELS
    if not p.is_file():
        raise FileNotFoundError(f"no {LABELS} in {stage_dir}; run `skillray interpret` first")
    return read_json(p)


__all__ = ["read_labels", "read_projections", "resolve_roles", "run_interpret", "fidelity"]
