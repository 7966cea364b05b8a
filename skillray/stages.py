"""The stages of a run, in one table: what each reads of the run config, how it runs, what it writes.

:data:`STAGES` is read by everything that runs a stage: the config (the names ``stages`` may list),
:func:`skillray.pipeline.run_pipeline` (order, outputs, the eval of the fine-tuned model after eval),
the CLI commands and ``jobs/*.py`` (through :func:`skillray.cli.common.run_stage`) and the tracker (the
folders to log). A new stage is one entry here (its run function lives in its own package) plus its
command. This module imports nothing of skillray at import time, so the config can read the names.

    m = STAGES["basis"].run(cfg, False, None)    # the stage's manifest
    [p for p in STAGES["eval"].outputs(cfg)]     # folders it writes, relative to the run dir
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from skillray.artifacts import StageManifest
    from skillray.config import RunConfig

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Stage:
    """One stage: its config slice, run function, outputs and what the CLI prints after it.

    section : the RunConfig section it is configured by (``--set <section>.x=...``).
    run : ``(cfg, force, progress) -> StageManifest``: the stage on a whole RunConfig (the section plus
        what it borrows: the model, eval's benchmarks and prompts, ...); progress is a (done, total)
        callback or None.
    outputs : ``cfg -> folders`` it writes (each with its manifest), relative to the run dir.
    progress : label of its progress bar, or ``cfg -> label`` (None: a spinner, for a stage without progress).
    title : ``cfg -> title`` of its printed summary (None: the stage's name).
    summaries : ``cfg -> [(title, folder)]``: further manifests whose summary is printed after its own.
    digest : ``cfg -> (file, heading)``: a Markdown file of the run printed after the summary, up to
        ``heading`` (None: all of it).
    pipeline : `skillray run` may run it (``stages`` lists it).
    follow : ``(cfg -> bool, stage)``: in the pipeline, the stage run after this one when the test holds.
    """

    section: str
    run: Callable[["RunConfig", bool, ProgressFn | None], "StageManifest"]
    outputs: Callable[["RunConfig"], list[Path]]
    progress: str | Callable[["RunConfig"], str] | None = None
    title: Callable[["RunConfig"], str] | None = None
    summaries: Callable[["RunConfig"], list[tuple[str, Path]]] | None = None
    digest: Callable[["RunConfig"], tuple[Path, str | None]] | None = None
    pipeline: bool = True
    follow: tuple[Callable[["RunConfig"], bool], str] | None = None


def sft_name(cfg: RunConfig) -> str:
    """Folder name of the run's SFT output under ``<run>/sft`` (``sft.name``, else derived from its data)."""
    from skillray.sft import output_name, sft_config_for_run

    return output_name(sft_config_for_run(cfg))


def evaluates_sft(cfg: RunConfig) -> bool:
    """Whether the pipeline's eval also evaluates the fine-tuned model: the run has an sft stage, or a
    finished sft output from an earlier invocation."""
    from skillray.artifacts import read_manifest

    if "sft" in cfg.stages:
        return True
    m = read_manifest(Path(cfg.run_dir) / "sft" / sft_name(cfg))
    return m is not None and m.complete


def stage_dirs(cfg: RunConfig, stage: str) -> list[Path]:
    """The folders a stage writes (each with its own manifest.json), relative to the run dir; for the
    pipeline's eval also its follow-up's (the fine-tuned model's eval)."""
    st = STAGES[stage]
    out = st.outputs(cfg)
    if st.follow is not None and st.follow[0](cfg):
        out += STAGES[st.follow[1]].outputs(cfg)
    return out


# ----------------------------------------------------------------------------- run functions


def _corpus(cfg, force, progress):
    from skillray.corpus import run_corpus

    return run_corpus(cfg.run_dir, cfg.corpus, force=force)


def _extract(cfg, force, progress):
    from skillray.extract import run_extract

    return run_extract(cfg.run_dir, cfg.model, cfg.extract, force=force, progress=progress)


def _basis(cfg, force, progress):
    from skillray.basis import run_basis

    return run_basis(cfg.run_dir, cfg.basis, force=force, progress=progress)


def _interpret(cfg, force, progress):
    from skillray.interpret import run_interpret

    return run_interpret(cfg.run_dir, cfg.interpret, cfg.model, force=force, progress=progress)


def _probe(cfg, force, progress):
    from skillray.probe import run_probe

    return run_probe(cfg.run_dir, cfg.probe, cfg.model, force=force, progress=progress, eval_cfg=cfg.eval)


def _select(cfg, force, progress):
    from skillray.select import run_select

    return run_select(cfg.run_dir, cfg.select, force=force, benchmarks=cfg.eval.benchmarks)


def _sft(cfg, force, progress):
    from skillray.sft import run_sft, sft_config_for_run

    return run_sft(cfg.run_dir, sft_config_for_run(cfg), cfg.model, force=force, progress=progress)


def _eval(cfg, force, progress):
    from skillray.eval import run_eval

    return run_eval(cfg.run_dir, cfg.eval, cfg.model, force=force, progress=progress)


def _eval_sft(cfg, force, progress):
    """The run's fine-tuned model (``<run>/sft/<name>/model``) with the eval settings of the base model (no
    steering sweep) into ``<run>/sft/<name>/eval``, so the report can pair the two."""
    from skillray.config import ModelConfig
    from skillray.eval import run_eval

    sft_dir = Path(cfg.run_dir) / "sft" / sft_name(cfg)
    model = ModelConfig(name_or_path=str(sft_dir / "model"), dtype=cfg.model.dtype)
    return run_eval(cfg.run_dir, cfg.eval.model_copy(update={"sweep": None}), model, force=force, progress=progress,
                    out_dir=sft_dir / "eval")  # fmt: skip


def _ablate(cfg, force, progress):
    """The run's `ablate` grid (the default one when it has none), as one tracking run with a nested run per
    finished cell (logged also when a later cell fails)."""
    from skillray.sft.ablate import run_ablate
    from skillray.tracking import log_ablate, log_run_config, tracked

    ab = _ablate_cfg(cfg)
    with tracked(cfg.tracking, cfg.run_dir, run_name=f"ablate-{ab.name}", tags={"skillray.command": "ablate"}) as tr:
        log_run_config(tr, cfg.model_copy(update={"ablate": ab}))
        try:
            return run_ablate(cfg.run_dir, ab, cfg.model, sft=cfg.sft, eval_cfg=cfg.eval, force=force,
                              progress=progress)  # fmt: skip
        finally:
            log_ablate(tr, cfg.run_dir, ab, cfg.tracking.max_artifact_mb)


def _ablate_cfg(cfg):
    from skillray.config import AblateConfig

    return cfg.ablate or AblateConfig()


def _safety_cfg(cfg):
    from skillray.config import SafetyConfig

    return cfg.safety or SafetyConfig()


def _safety(cfg, force, progress):
    from skillray.safety import run_safety

    return run_safety(cfg.run_dir, _safety_cfg(cfg), cfg.model, force=force, progress=progress)


def _select_dir(cfg) -> list[Path]:
    from skillray.select.stage import default_name

    return [Path("select") / (cfg.select.name or default_name(cfg.select))]


def _sweep(cfg) -> list[tuple[str, Path]]:
    return [("eval sweep", Path("eval") / "sweep")] if cfg.eval.sweep is not None else []


def _one(folder: str) -> Callable[["RunConfig"], list[Path]]:
    return lambda cfg: [Path(folder)]


# The stages `skillray run` runs, in pipeline order, then the commands that are stages of their own (one
# folder of manifests each) but not of the pipeline.
STAGES: dict[str, Stage] = {
    "corpus": Stage("corpus", _corpus, _one("corpus")),
    "extract": Stage("extract", _extract, _one("extract"), progress="extract"),
    "basis": Stage("basis", _basis, _one("basis"), progress="basis"),
    "interpret": Stage("interpret", _interpret, _one("interpret"), progress="interpret calls"),
    "probe": Stage("probe", _probe, _one("probe"), progress="probe",
                   digest=lambda cfg: (Path("probe") / "probe.md", None)),
    "select": Stage("select", _select, _select_dir),
    "sft": Stage("sft", _sft, lambda cfg: [Path("sft") / sft_name(cfg)], progress="sft steps"),
    "eval": Stage("eval", _eval, lambda cfg: [Path("eval")] + [p for _, p in _sweep(cfg)], progress="eval samples",
                  summaries=_sweep,
                  digest=lambda cfg: (Path("eval") / "results.md", "## Samples"),
                  follow=(evaluates_sft, "eval_sft")),
    "eval_sft": Stage("eval", _eval_sft, lambda cfg: [Path("sft") / sft_name(cfg) / "eval"],
                      progress=lambda cfg: f"eval samples (sft/{sft_name(cfg)})",
                      title=lambda cfg: f"eval of sft/{sft_name(cfg)}", pipeline=False),
    "ablate": Stage("ablate", _ablate, lambda cfg: [Path("ablate") / _ablate_cfg(cfg).name], progress="ablate cells done",
                    digest=lambda cfg: (Path("ablate") / _ablate_cfg(cfg).name / "results.md", None), pipeline=False),
    "safety": Stage("safety", _safety, _one("safety"), progress="safety (pool, fine-tunes, replies)",
                    digest=lambda cfg: (Path("safety") / "results.md", "## Attack success by family"), pipeline=False),
}
PIPELINE: tuple[str, ...] = tuple(n for n, s in STAGES.items() if s.pipeline)


def ordered(stages: list[str]) -> list[str]:
    """``stages`` in pipeline order (a config may list them in any order)."""
    return [s for s in PIPELINE if s in stages]


__all__ = ["PIPELINE", "STAGES", "Stage", "evaluates_sft", "ordered", "sft_name", "stage_dirs"]
