"""`skillray run`: every stage of the run config in pipeline order, with a status file and the report.

Each stage skips itself when its manifest says the same work is finished, and resumes when
it is unfinished, so running the pipeline again after a kill recomputes nothing that was
done. The pipeline only orders the stages of the table (:mod:`skillray.stages`), times them and
records what each did in ``<run>/pipeline.json`` (read by the report's "Pipeline" section). The
runner is passed in: the CLI's (:func:`skillray.cli.common.run_stage`) prints what the single
commands print; the default runs the stages silently. Nothing here imports the CLI.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from skillray.artifacts import atomic_write_json, read_manifest
from skillray.config import RunConfig
from skillray.stages import PIPELINE, STAGES, ordered, stage_dirs

STATUS_FILE = "pipeline.json"


@dataclass
class StageStatus:
    """What one stage did in this invocation: ran (computed or resumed), skipped (finished output matched)."""

    stage: str
    status: str = "pending"  # pending | running | ran | skipped | failed
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)  # stage folders, relative to the run dir
    error: str | None = None


Runner = Callable[[str, RunConfig, bool], None]


def run_stage(name: str, cfg: RunConfig, force: bool) -> None:
    """The plain runner: stage ``name`` of the table, without progress or printing."""
    STAGES[name].run(cfg, force, None)


def run_pipeline(
    cfg: RunConfig,
    force: bool,
    on_stage: Callable[[int, int, str], None] | None = None,
    runner: Runner = run_stage,
) -> list[StageStatus]:
    """Run ``cfg.stages`` in pipeline order with ``runner(name, cfg, force)`` (the CLI passes one that prints
    progress and summaries), each followed by its follow-up stage when that applies (eval: the fine-tuned
    model's eval); write ``<run>/pipeline.json`` after every stage (also on failure). Returns each stage's status."""
    from skillray.eval.seeds import check_disjoint_seeds

    check_disjoint_seeds(cfg)  # before any work: no procedural problem may serve training, dev and test alike
    run_dir = Path(cfg.run_dir)
    statuses = [StageStatus(n, outputs=[str(p) for p in stage_dirs(cfg, n)]) for n in ordered(cfg.stages)]
    t_all = time.perf_counter()

    def save() -> None:
        atomic_write_json(run_dir / STATUS_FILE, {
            "stages": [asdict(s) for s in statuses],
            "seconds": round(time.perf_counter() - t_all, 2),
            "updated": time.time(),
        })  # fmt: skip

    for i, st in enumerate(statuses):
        if on_stage:
            on_stage(i, len(statuses), st.stage)
        st.status = "running"
        save()
        started, t0 = time.time(), time.perf_counter()
        try:
            runner(st.stage, cfg, force)
            follow = STAGES[st.stage].follow
            if follow is not None and follow[0](cfg):
                runner(follow[1], cfg, force)
        except BaseException as e:  # recorded, then re-raised: KeyboardInterrupt too
            st.status, st.error = "failed", f"{type(e).__name__}: {e}"[:500]
            st.seconds = round(time.perf_counter() - t0, 2)
            save()
            raise
        st.seconds = round(time.perf_counter() - t0, 2)
        st.status = "skipped" if _all_older(run_dir, st.outputs, started) else "ran"
        save()
    save()
    return statuses


def _all_older(run_dir: Path, outputs: list[str], started: float) -> bool:
    """True when every output manifest predates this stage's start (the stage reused finished work)."""
    ms = [read_manifest(run_dir / o) for o in outputs]
    return bool(ms) and all(m is not None and m.complete and m.created < started for m in ms)


def read_status(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / STATUS_FILE
    return json.loads(p.read_text()) if p.is_file() else None


# ----------------------------------------------------------------------------- report

_SHOWN = (".md", ".html", ".png", ".json", ".jsonl", ".parquet", ".csv", ".safetensors")
_SKIP_DIRS = {"report", "samples", "shards", "vectors", "checkpoints", "figures", "model", "cache"}


def _stage_folders(run_dir: Path) -> list[Path]:
    """Every folder of the run holding a manifest.json (a stage output), in pipeline order then by path."""
    found = []
    for m in sorted(run_dir.rglob("manifest.json")):
        rel = m.parent.relative_to(run_dir)
        if rel.parts and not (set(rel.parts) & _SKIP_DIRS) and len(rel.parts) <= 3:
            found.append(rel)
    order = {s: i for i, s in enumerate(PIPELINE)}
    return sorted(found, key=lambda p: (order.get(p.parts[0], len(order)), str(p)))


def _headline(summary: dict) -> str:
    keep = []
    for k, v in summary.items():
        if k in ("output", "seconds") or isinstance(v, (dict, list)):
            continue
        keep.append(f"{k}={v}")
    text = ", ".join(keep)
    return text if len(text) <= 160 else text[:159] + "…"


def report_sections(run_dir: str | Path) -> list:
    """The report's "Pipeline" section: every stage output's status, time and headline numbers, with links
    to its files (relative to ``<run>/report/``)."""
    from skillray.report.document import Links, Section, Table, Text

    run_dir = Path(run_dir)
    folders = _stage_folders(run_dir)
    if not folders:
        return []
    status = read_status(run_dir) or {}
    last = {s["stage"]: s for s in status.get("stages", [])}
    rows, links = [], []
    for rel in folders:
        m = read_manifest(run_dir / rel)
        st = last.get(rel.parts[0], {})
        state = "finished" if m.complete else "unfinished"
        if st.get("status") in ("skipped", "ran", "failed") and str(rel) in st.get("outputs", []):
            state += f" ({st['status']} in the last `skillray run`)"
        seconds = m.summary.get("seconds") if isinstance(m.summary, dict) else None
        rows.append([str(rel), state, seconds, _headline(m.summary or {})])
        files = sorted(p for p in (run_dir / rel).iterdir() if p.is_file() and p.suffix in _SHOWN)
        links += [(f"{rel}/{p.name}", f"../{rel.as_posix()}/{p.name}") for p in files]
    sec = Section("Pipeline")
    sec.blocks.append(Text(f"Stage outputs under {run_dir.resolve()}; each folder's manifest.json holds its config, "
                           "input fingerprints and summary. `seconds` = compute time when the output was made."))
    sec.blocks.append(Table(["output", "state", "seconds", "summary"], rows))
    sec.children.append(Section("Files", [Links(links)], anchor="pipeline-files"))
    return [sec]
