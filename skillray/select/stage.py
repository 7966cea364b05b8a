"""The select stage: corpus (+ basis and store) -> ``<run>/select/<name>/``.

Output in ``<run>/select/<name>/``:

* ``selection.parquet``: one row per selected record, best first: ``rank``, ``id``, ``skill``,
  ``score`` (strategy-specific: signed projection, farthest-point distance at pick time, the
  quantile bin (stratified); NaN where there is none) and ``source`` (the direction that picked
  it for ``directions`` and ``stratified``, else -1);
* ``ids.json``: the ordered ids (the first n are the selection of budget n);
* ``train.jsonl``: the selected records as SFT data, ``{"messages": [...]}`` per line (plain-text
  records as ``{"text": ...}``, counted in the summary);
* ``manifest.json``: the select config, input fingerprints and a summary.

Pools: basis strategies (``BASIS_STRATEGIES``: direction, directions, coverage, ...) rank the
activation store's rows (store order); baselines (``CORPUS_STRATEGIES``: random, skill_balanced, ...)
rank the corpus records (file order). Each strategy's pool, order, settings and name come from the
registry :data:`skillray.select.strategies.STRATEGIES`.

``from_probe`` (directions, stratified) takes the directions, signs and weights from the ranking
of ``<run>/probe`` (:func:`directions_from_probe`); the probe's manifest key becomes an input, so a
new probe run never silently reuses a selection made from the old ranking.
"""

from __future__ import annotations

import collections
import io
import json
import time
from pathlib import Path

import numpy as np

from skillray.artifacts import (StageManifest, atomic_write_bytes, atomic_write_json, finished_input, prepare_stage, read_json,
                                read_manifest, verify_artifact)
from skillray.config import SelectConfig
from skillray.select.strategies import (
    BASIS_STRATEGIES,
    CORPUS_STRATEGIES,
    EMBEDDER,
    Pool,
    embed_texts,
    strategy,
    strategy_label,
)

FORMAT = "skillray.select/1"


def default_name(cfg: SelectConfig) -> str:
    """Folder name from the strategy and the settings that matter, e.g. ``direction-d0-pos-n100``.

    With ``from_probe`` it is named by the config alone (not by the pairs the probe picked), so later stages
    (sft) know the folder before the probe has run; the picked pairs are in the manifest's summary.
    """
    st = strategy(cfg.strategy)
    s = strategy_label(cfg, auto_by=False)
    if st.seeded:
        s += f"-s{cfg.seed}"
    if st.named_budget:
        s += f"-n{cfg.budget}" if cfg.budget is not None else "-all"
    return s


def _key_config(cfg: SelectConfig) -> dict:
    """Only the settings the strategy reads (so an unused field never forces a recompute)."""
    used = {"strategy", "budget"} | strategy(cfg.strategy).fields
    if cfg.from_probe is not None:
        used |= {"from_probe", "from_probe_by"}
    if cfg.decontaminate == "drop":  # changes the pool; report (the default) only adds to the summary
        used |= {"decontaminate", "decontam_n", "decontam_max_matches"}
    return {k: v for k, v in cfg.model_dump().items() if k in used}


def select_order(cfg: SelectConfig, *, z: np.ndarray | None = None, skills=None, texts=None,
                 n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The selection of one strategy over a pool, as rows of that pool.

    Parameters
    ----------
    cfg : SelectConfig (strategy, budget and its settings).
    z : ndarray of shape (N, k), basis projections (direction, directions, coverage).
    skills : N labels (skill_balanced); texts : N strings (text_diversity); n : pool size (random, full).

    Returns
    -------
    (order, score, source): ndarrays of shape (budget,): pool rows best first, per-row score
    (NaN if none) and picking direction (-1 if none).
    """
    st = strategy(cfg.strategy)
    if st.pool == "basis":
        if z is None:
            raise ValueError(f"strategy {cfg.strategy!r} needs basis projections z")
        z = np.asarray(z, dtype=np.float64)
        pool, k = z.shape
        for d in ([cfg.direction] if "direction" in st.fields else []) + (cfg.directions if "directions" in st.fields else []):
            if not 0 <= d < k:
                raise ValueError(f"select direction {d} out of range: the basis has {k} directions (0..{k - 1})")
    else:
        pool = len(skills) if skills is not None else len(texts) if texts is not None else int(n)
    budget = pool if cfg.budget is None else cfg.budget
    if not 1 <= budget <= pool:
        raise ValueError(f"select.budget={cfg.budget} is larger than the pool of {pool} records; "
                         f"use at most {pool} (or leave budget unset for all)")
    return st.order(cfg, Pool(pool, z=z, skills=skills, texts=texts), budget)


def _train_line(record) -> tuple[dict, bool]:
    if record.messages is not None:
        return {"messages": [dict(m) for m in record.messages]}, True
    return {"text": record.text}, False


def directions_from_probe(probe_dir: str | Path, cfg: SelectConfig) -> tuple[SelectConfig, dict, str]:
    """``cfg`` with directions, signs and weights from the top ``cfg.from_probe`` pairs of a probe ranking.

    Walks the ranking (``cfg.from_probe_by``) best first, one sign per direction (the better one),
    and takes ``from_probe`` pairs. Weights are their scores when every taken score is positive;
    otherwise (a small dev set often gives no pair a positive Pass@k change) equal weights, with a
    warning and the count in the summary. Returns (resolved config, info for the summary, the
    probe manifest's key).
    """
    import warnings

    from skillray.probe import probe_ranking

    ranking, by, key = probe_ranking(probe_dir, cfg.from_probe_by)
    picked: list[tuple[int, int, float]] = []
    other_sign = 0
    for d, s, score in ranking:
        if len(picked) == cfg.from_probe:
            break
        if any(d == p[0] for p in picked):
            other_sign += 1
        else:
            picked.append((d, s, score))
    nonpositive = sum(not w > 0 for _, _, w in picked)
    weights = [w for _, _, w in picked] if nonpositive == 0 else None
    if nonpositive:
        warnings.warn(f"select.from_probe={cfg.from_probe}: {nonpositive} of the top {len(picked)} pairs of the {by} "
                      "probe have a score <= 0 (they did not help on its dev set); using equal weights", stacklevel=3)  # fmt: skip
    if len(picked) < cfg.from_probe:
        warnings.warn(f"select.from_probe={cfg.from_probe}: the probe ranked only {len(picked)} directions; "
                      f"using {len(picked)}", stacklevel=3)  # fmt: skip
    resolved = cfg.model_copy(update={"directions": [p[0] for p in picked], "signs": [p[1] for p in picked],
                                      "weights": weights})  # fmt: skip
    info = {"by": by, "pairs": [f"d{d}{'+' if s == 1 else '-'} ({w:+.4g})" for d, s, w in picked],
            "weights": "scores" if weights is not None else "equal (a score <= 0)",
            "nonpositive_pairs": nonpositive, "skipped_other_sign": other_sign}  # fmt: skip
    return type(cfg).model_validate(resolved.model_dump()), info, key


def _eval_problems(corpus_m: StageManifest, records: list, benchmarks, strict: bool) -> tuple[dict, dict]:
    """The eval problems of ``benchmarks`` as the eval stage loads them (procedural: with the run's corpus)."""
    from pydantic import ValidationError

    from skillray.config import CorpusConfig
    from skillray.eval.decontam import load_eval_problems

    try:
        corpus_cfg = CorpusConfig.model_validate(corpus_m.config)
    except ValidationError:
        corpus_cfg = None
    return load_eval_problems(benchmarks, corpus_cfg, records, strict=strict)


def run_select(run_dir: str | Path, cfg: SelectConfig, force: bool = False, benchmarks=None) -> StageManifest:
    """Select records of ``<run>/corpus`` by ``cfg``; write ``<run>/select/<name>/``; return its manifest.

    ``benchmarks`` (the run's ``eval.benchmarks``, a list of EvalBenchmark) are what
    ``cfg.decontaminate`` checks the training records against (:mod:`skillray.eval.decontam`);
    None = not checked (said in the summary).

    Raises FileNotFoundError for a missing corpus/basis, ValueError for a bad budget or
    direction, StageMismatchError when the folder was made differently (use ``force``).
    """
    from skillray.artifacts import fingerprint
    from skillray.corpus.records import read_records
    from skillray.eval.decontam import find_overlaps

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    corpus_m = finished_input(run_dir, "corpus")
    inputs = {"corpus": corpus_m.outputs["fingerprint"]}
    probe_info = None
    name = cfg.name or default_name(cfg)
    if cfg.from_probe is not None:
        cfg, probe_info, inputs["probe"] = directions_from_probe(run_dir / "probe", cfg)
    store = basis_m = None
    st = strategy(cfg.strategy)
    if st.pool == "basis":
        from skillray.extract.store import ActivationStore

        basis_m = finished_input(run_dir, "basis", f"strategy {cfg.strategy!r} needs one: run `skillray basis` "
                                 f"first (or pick {', '.join(CORPUS_STRATEGIES)})")
        if probe_info is not None and basis_m.key != read_manifest(run_dir / "probe").inputs.get("basis"):
            raise ValueError(f"{run_dir / 'probe'} ranked the directions of another basis; rerun `skillray probe --force`")
        store = ActivationStore(run_dir / "extract")
        store.verify()  # checksums once per shard (cached in verified.json), then cheap
        if basis_m.inputs.get("store") != store.fingerprint:
            raise ValueError(f"{run_dir / 'basis'} was fitted on another activation store; rerun `skillray basis --force`")
        inputs.update(basis=basis_m.key, store=store.fingerprint)
    inputs.update(st.inputs)
    records = read_records(run_dir / "corpus" / corpus_m.outputs["records"])
    decon = cfg.decontaminate if benchmarks else "off"
    problems, not_loaded = _eval_problems(corpus_m, records, benchmarks, decon == "drop") if decon != "off" else ({}, {})
    if decon == "drop":
        inputs["eval_problems"] = fingerprint(problems)
    stage_dir = run_dir / "select" / name
    want = StageManifest("select", config={"select": _key_config(cfg)}, inputs=inputs)
    if prepare_stage(stage_dir, want, force) == "skip":
        return read_manifest(stage_dir)
    want.write(stage_dir)

    by_id = {r.id: r for r in records}
    dropped = None
    if decon == "drop":  # leave overlapping records out of the pool, so the selection still has its budget
        dropped = find_overlaps(records, problems, cfg.decontam_n, cfg.decontam_max_matches)
        bad = dropped.record_ids()
        records = [r for r in records if r.id not in bad]
    if store is not None:
        from skillray.basis import SkillBasis

        pool = store.ids()
        missing = [i for i in pool if i not in by_id]
        if missing:
            raise ValueError(f"store row id {missing[0]!r} ({len(missing)} in all) is not in the corpus; "
                             "re-extract with --force")
        z = SkillBasis.load(run_dir / "basis").transform(store)  # (N, k), store order
        if dropped is not None:
            keep = [i for i, rid in enumerate(pool) if rid not in bad]
            pool, z = [pool[i] for i in keep], z[keep]
        order, score, source = select_order(cfg, z=z)
    else:
        pool = [r.id for r in records]
        from skillray.interpret.profile import record_text

        order, score, source = select_order(
            cfg, skills=[r.skill for r in records],
            texts=[record_text(r) for r in records] if st.texts else None, n=len(pool))  # fmt: skip
    ids = [pool[int(r)] for r in order]
    assert len(set(ids)) == len(ids), "selection has duplicate ids"
    chosen = [by_id[i] for i in ids]

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "rank": pa.array(np.arange(len(ids)), pa.int64()), "id": pa.array(ids, pa.string()),
        "skill": pa.array([r.skill for r in chosen], pa.string()),
        "score": pa.array(np.asarray(score, dtype=np.float64), pa.float64()),
        "source": pa.array(np.asarray(source, dtype=np.int64), pa.int64()),
    })  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(stage_dir / "selection.parquet", buf.getvalue())
    atomic_write_json(stage_dir / "ids.json", ids)
    lines, n_text = [], 0
    for r in chosen:
        line, is_chat = _train_line(r)
        n_text += not is_chat
        lines.append(json.dumps(line, ensure_ascii=False))
    atomic_write_bytes(stage_dir / "train.jsonl", ("\n".join(lines) + "\n").encode())

    if decon == "report":
        report = find_overlaps(chosen, problems, cfg.decontam_n, cfg.decontam_max_matches)
    else:
        report = dropped
    if report is not None:
        report.not_checked.update(not_loaded)
        if not_loaded:
            import warnings

            warnings.warn(f"select.decontaminate: not checked against {sorted(not_loaded)} (cannot be loaded: "
                          f"{next(iter(not_loaded.values()))}); give those benchmarks a local `path`", stacklevel=2)  # fmt: skip
        whole = {k: v for k, v in report.summary().items() if k != "examples"}
        atomic_write_json(stage_dir / "decontam.json", {"mode": decon, **whole,
                                                        "overlaps": [o.__dict__ for o in report.overlaps]})  # fmt: skip
        decon_summary = {"mode": decon, **({"dropped_from_pool": len(report.record_ids())} if decon == "drop" else {}),
                         **report.summary()}  # fmt: skip
    else:
        decon_summary = {"mode": "off" if benchmarks else "off (no eval benchmarks given)"}
    skills = collections.Counter(r.skill for r in chosen)
    want.outputs = {"format": FORMAT, "name": name, "selection": "selection.parquet", "ids": "ids.json",
                    "train": "train.jsonl"}  # fmt: skip
    want.summary = {
        "strategy": cfg.strategy, "name": name, "pool": len(pool), "selected": len(ids),
        "text_records_in_train": n_text, "skills": len(skills),
        "skill_counts": dict(sorted((str(k), v) for k, v in skills.items())),
        **({"from_probe": probe_info} if probe_info is not None else {}),
        "decontamination": decon_summary,
        "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    want.complete = True
    want.write(stage_dir)
    return want


def read_selection(stage_dir: str | Path) -> list[str]:
    """The ordered ids of a select folder (``ids.json``)."""
    p = Path(stage_dir) / "ids.json"
    if not p.is_file():
        raise FileNotFoundError(f"no ids.json in {stage_dir}; run `skillray select` first")
    verify_artifact(p)
    return read_json(p)


__all__ = ["BASIS_STRATEGIES", "EMBEDDER", "default_name", "directions_from_probe", "embed_texts", "read_selection",
           "run_select", "select_order"]
