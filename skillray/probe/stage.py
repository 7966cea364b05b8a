"""The probe stage: model + ``<run>/basis`` + corpus -> ``<run>/probe/``.

Output in ``<run>/probe/``:

* ``likelihood.parquet`` and ``likelihood.json``: one row per (direction, sign), ranked by the
  change in mean response log-likelihood (``rank, direction, sign, loglik, delta_loglik,
  delta_se, forward_passes``); the JSON also holds the unsteered baseline and the dev ids;
* ``likelihood.md``: the ranked table;
* ``manifest.json``: the probe config, input fingerprints (model, basis, corpus), summary.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import StageManifest, atomic_write_bytes, atomic_write_json, prepare_stage, read_manifest
from skillray.config import ModelConfig, ProbeConfig

FORMAT = "skillray.probe/1"


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


def run_probe(
    run_dir: str | Path,
    cfg: ProbeConfig,
    model_cfg: ModelConfig | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StageManifest:
    """Likelihood-probe every chosen direction of ``<run>/basis`` with ``model_cfg``; write ``<run>/probe``."""
    import torch

    from skillray.basis import SkillBasis
    from skillray.corpus.records import read_records
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import load_model, load_tokenizer, resolve_dtype, resolve_model
    from skillray.probe.likelihood import likelihood_probe, markdown_table
    from skillray.steer import SteeringVector

    run_dir = Path(run_dir)
    model_cfg = model_cfg or ModelConfig()
    corpus_m = read_manifest(run_dir / "corpus")
    if corpus_m is None or not corpus_m.complete:
        raise FileNotFoundError(f"{run_dir / 'corpus'}: no finished corpus; run `skillray corpus` first")
    basis_m = read_manifest(run_dir / "basis")
    if basis_m is None or not basis_m.complete:
        raise FileNotFoundError(f"{run_dir / 'basis'}: no finished basis; run `skillray basis` first")
    basis = SkillBasis.load(run_dir / "basis")
    k = int(basis.components_.shape[0])
    directions = list(range(k)) if cfg.directions is None else list(cfg.directions)
    bad = [d for d in directions if not 0 <= d < k]
    if bad:
        raise ValueError(f"probe.directions {bad} out of range: the basis has {k} directions (0..{k - 1})")
    resolved = resolve_model(model_cfg)
    inputs = {"model": resolved.fingerprint, "basis": basis_m.key, "corpus": corpus_m.outputs["fingerprint"]}
    key_cfg = {kk: v for kk, v in cfg.model_dump().items() if kk not in ("batch_size", "num_threads")}
    key_cfg["directions"] = directions
    stage_dir = run_dir / "probe"
    want = StageManifest("probe", config={"probe": key_cfg, "dtype": model_cfg.dtype}, inputs=inputs)
    if prepare_stage(stage_dir, want, force) == "skip":
        return read_manifest(stage_dir)
    want.write(stage_dir)

    t0 = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dev = dev_records(read_records(run_dir / "corpus" / corpus_m.outputs["records"]), cfg.n_dev, cfg.seed)
    tokenizer = load_tokenizer(resolved, model_cfg.trust_remote_code)
    model = load_model(resolved, resolve_dtype(model_cfg.dtype, "cpu"), "cpu", model_cfg.trust_remote_code)
    tok = tokenize_records(dev, tokenizer, cfg.max_tokens)
    keep = ~tok.empty_response
    dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError(f"probe: every dev record's response was cut away by max_tokens={cfg.max_tokens}; raise it")
    if dropped:
        import warnings

        warnings.warn(f"probe: {dropped} dev record(s) lost their whole response to max_tokens={cfg.max_tokens}; "
                      "dropped", stacklevel=2)  # fmt: skip
    idx = np.flatnonzero(keep)
    tok.ids = [tok.ids[i] for i in idx]
    tok.input_ids = [tok.input_ids[i] for i in idx]
    tok.response_start, tok.truncated = tok.response_start[idx], tok.truncated[idx]

    def vectors(d: int, s: int):
        return SteeringVector.from_basis(basis, d, sign=s, alpha=cfg.alpha, mode=cfg.mode)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, base = likelihood_probe(model, tok, vectors, directions, cfg.batch_size, pad, progress)
    for r in rows:
        r["alpha"] = cfg.alpha

    labels = {}
    lab_path = run_dir / "interpret" / "labels.json"
    if lab_path.is_file():
        from skillray.interpret import read_labels

        try:
            for j, item in enumerate(read_labels(run_dir / "interpret").get("directions", [])):
                labels[int(item.get("direction", j))] = str((item.get("label") or {}).get("short", ""))
        except (AttributeError, TypeError, KeyError):
            labels = {}

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["rank", "direction", "sign", "alpha", "loglik", "delta_loglik", "delta_se", "forward_passes"]
    buf = io.BytesIO()
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in cols}), buf)
    atomic_write_bytes(stage_dir / "likelihood.parquet", buf.getvalue())
    atomic_write_json(stage_dir / "likelihood.json", {"format": FORMAT, "base": base, "rows": rows, "dev_ids": tok.ids})
    atomic_write_bytes(stage_dir / "likelihood.md", markdown_table(rows, base, labels).encode())
    passes = base["forward_passes"] + sum(r["forward_passes"] for r in rows)
    want.outputs = {"format": FORMAT, "table": "likelihood.parquet", "json": "likelihood.json", "markdown": "likelihood.md"}
    best = rows[0]
    want.summary = {
        "n_dev": len(tok.ids), "dropped_dev_records": dropped, "truncated_dev_records": int(tok.truncated.sum()),
        "directions": len(directions), "base_loglik": round(base["loglik"], 5),
        "best": f"d{best['direction']}{'+' if best['sign'] == 1 else '-'} ({best['delta_loglik']:+.5f})",
        "forward_passes": passes, "seconds": round(time.perf_counter() - t0, 2),
    }  # fmt: skip
    want.complete = True
    want.write(stage_dir)
    return want


def read_probe(stage_dir: str | Path) -> dict:
    """``likelihood.json`` of a probe folder: {format, base, rows (ranked), dev_ids}."""
    from skillray.artifacts import read_json

    p = Path(stage_dir) / "likelihood.json"
    if not p.is_file():
        raise FileNotFoundError(f"no likelihood.json in {stage_dir}; run `skillray probe` first")
    return read_json(p)
