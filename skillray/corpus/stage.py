"""The corpus stage: config -> ``<run>/corpus/records.jsonl`` + manifest."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from skillray.artifacts import StageManifest, file_sha256, prepare_stage, read_manifest
from skillray.config import CorpusConfig
from skillray.corpus.load import load_corpus
from skillray.corpus.records import write_records

RECORDS = "records.jsonl"


def run_corpus(run_dir: str | Path, cfg: CorpusConfig, force: bool = False) -> StageManifest:
    """Materialise the corpus as JSONL; skipped when an identical one is already there."""
    stage_dir = Path(run_dir) / "corpus"
    # task_sizes unset leaves the key of runs made before the field existed unchanged
    want = StageManifest("corpus", config=cfg.model_dump(exclude={"task_sizes"} if cfg.task_sizes is None else None),
                         inputs={})  # fmt: skip
    if cfg.source == "local":
        want.inputs["file"] = file_sha256(cfg.path)
    if prepare_stage(stage_dir, want, force) == "skip":
        return read_manifest(stage_dir)
    t0 = time.perf_counter()
    records = load_corpus(cfg)
    path = stage_dir / RECORDS
    n = write_records(path, records)
    skills = Counter(r.skill for r in records if r.skill is not None)
    want.outputs = {"records": RECORDS, "fingerprint": file_sha256(path)[:16]}
    want.summary = {
        "rows": n,
        "chat": sum(r.messages is not None for r in records),
        "skills": dict(sorted(skills.items())),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(path),
    }
    want.complete = True
    want.write(stage_dir)
    return want
