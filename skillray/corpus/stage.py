"""The corpus stage: config -> ``<run>/corpus/records.jsonl`` + manifest."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from skillray.artifacts import StageManifest, file_sha256, prepare_stage, read_manifest
from skillray.config import CorpusConfig
from skillray.corpus.load import iter_corpus
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
    path = stage_dir / RECORDS
    skills: Counter = Counter()
    chat = 0

    def counted(records):  # the summary's counts, taken as the records stream to disk
        nonlocal chat
        for r in records:
            if r.skill is not None:
                skills[r.skill] += 1
            chat += r.messages is not None
            yield r

    n = write_records(path, counted(iter_corpus(cfg)))
    want.outputs = {"records": RECORDS, "fingerprint": file_sha256(path)[:16]}
    want.summary = {
        "rows": n,
        "chat": chat,
        "skills": dict(sorted(skills.items())),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(path),
    }
    want.complete = True
    want.write(stage_dir)
    return want
