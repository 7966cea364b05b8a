"""`skillray run`: every stage of the run config in pipeline order, with a status file and the report.

Each stage skips itself when its manifest says the same work is finished, and resumes when
it is unfinished, so running the pipeline again after a kill recomputes nothing that was
done. The pipeline only orders the stages, times them and records what each did in
``<run>/pipeline.json`` (read by the report's "Pipeline" section); the stage runners are
the CLI's, so `skillray run` prints exactly what the single commands print.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from skillray.artifacts import atomic_write_json, read_manifest
from skillray.config import PIPELINE, RunConfig

STATUS_FILE = "pipeline.json"


@dataclass
class StageStatus:
    """What one stage did in this invocation: ran (computed or resumed), skipped (finished output matched)."""

    stage: str
    status: str = "pending"  # pending | running | ran | skipped | failed
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)  # stage folders, relative to the run dir
    error: str | None = None


def stage_dirs(cfg: RunConfig, stage: str) -> list[Path]:
    """The folders a stage writes (each with its own manifest.json), relative to the run dir."""
    if stage == "select":
        from skillray.select.stage import default_name

        return [Path("select") / (cfg.select.name or default_name(cfg.select))]
    if stage == "sft":
        return [Path("sft") / sft_name(cfg)]
    if stage == "eval":
        out = [Path("eval")] + ([Path("eval") / "sweep"] if cfg.eval.sweep is not None else [])
        if evaluates_sft(cfg):
            out.append(Path("sft") / sft_name(cfg) / "eval")
        return out
    return [Path(stage)]


def sft_name(cfg: RunConfig) -> str:
    """Folder name of the run's SFT output under ``<run>/sft`` (``sft.name``, else derived from its data)."""
    from skillray.sft import output_name, sft_config_for_run

    return output_name(sft_config_for_run(cfg))


def evaluates_sft(cfg: RunConfig) -> bool:
    """Whether the pipeline's eval also evaluates the fine-tuned model: the run has an sft stage, or a
    finished sft output from an earlier invocation."""
    if "sft" in cfg.stages:
        return True
    m = read_manifest(Path(cfg.run_dir) / "sft" / sft_name(cfg))
    return m is not None and m.complete


def eval_sft(cfg: RunConfig, force: bool, progress=None):
    """Evaluate the run's fine-tuned model (``<run>/sft/<name>/model``) with the eval settings of the base
    model (no steering sweep) into ``<run>/sft/<name>/eval``, so the report can pair the two."""
    from skillray.config import ModelConfig
    from skillray.eval import run_eval

    sft_dir = Path(cfg.run_dir) / "sft" / sft_name(cfg)
    model = ModelConfig(name_or_path=str(sft_dir / "model"), dtype=cfg.model.dtype)
    return run_eval(cfg.run_dir, cfg.eval.model_copy(update={"sweep": None}), model, force=force, progress=progress,
                    out_dir=sft_dir / "eval")  # fmt: skip


def ordered(stages: list[str]) -> list[str]:
    """``stages`` in pipeline order (a config may list them in any order)."""
    return [s for s in PIPELINE if s in stages]


def run_pipeline(
    cfg: RunConfig,
    force: bool,
    runners: dict[str, Callable[[RunConfig, bool], None]],
    on_stage: Callable[[int, int, str], None] | None = None,
) -> list[StageStatus]:
    """Run ``cfg.stages`` in order with ``runners[name](cfg, force)``; write ``<run>/pipeline.json`` after
    every stage (also on failure) and the run report at the end. Returns each stage's status."""
    from skillray.eval.seeds import check_disjoint_seeds

    check_disjoint_seeds(cfg)  # before any work: no procedural problem may serve training, dev and test alike
    run_dir = Path(cfg.run_dir)
    names = ordered(cfg.stages)
    missing = [n for n in names if n not in runners]
    if missing:
        raise ValueError(f"stages {missing}: not available in this build of skillray; drop them from `stages`")
    statuses = [StageStatus(n, outputs=[str(p) for p in stage_dirs(cfg, n)]) for n in names]
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
            runners[st.stage](cfg, force)
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
