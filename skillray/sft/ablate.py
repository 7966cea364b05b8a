"""Selection ablations: strategies x budgets x seeds through select -> sft -> eval, with a paired results table.

Layout::

    <run>/select/<ablate>-<label>[-s<seed>]-n<max>/   one selection per strategy (and seed), of the largest budget
    <run>/ablate/<name>/manifest.json
    <run>/ablate/<name>/base/eval/                    the model before fine-tuning (eval_base)
    <run>/ablate/<name>/cells/<label>-n<budget>-s<seed>/   an sft stage (manifest, model/) with eval/ inside
    <run>/ablate/<name>/results.{parquet,json,md}, plots/passk_<benchmark>.png

Selections are nested (the first n ids of a selection are the selection of budget n), so one
selection per strategy and seed serves every budget: the cell trains on its first ``budget`` lines.
Every cell's sft and eval are stages with their own manifests, so a rerun skips finished cells and
resumes an unfinished one.

The table, per strategy, budget, benchmark and k: Pass@k of every seed (mean over problems), their
mean and spread over seeds, a hierarchical bootstrap interval of the mean (seeds, then problems,
resampled), the paired comparison with the baseline strategy (per seed and problem, strategy minus
baseline, averaged; interval and p-value from the same draws, Holm-adjusted across the strategies),
the smallest effect the design can detect, the number of seeds the strategy wins, and the training
tokens of its cells (:mod:`skillray.eval.stats` has the statistics).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import (StageManifest, StageMismatchError, atomic_write_bytes, atomic_write_json, finished_input,
                                prepare_stage, read_manifest)
from skillray.config import AblateConfig, EvalConfig, ModelConfig, SelectConfig, SFTConfig
from skillray.select.strategies import CORPUS_STRATEGIES, strategy, strategy_label

ProgressFn = Callable[[int, int, "CellProgress"], None]  # (cells done, cells total, where the grid is)
POWER = 0.8  # power of the detectable effect (mde) in the table

FORMAT = "skillray.ablate/1"
_EXECUTION = ("keep_models", "n_bootstrap", "confidence", "eval_base", "eval_together")


def _labels(cfg: AblateConfig) -> list[str]:
    return [s.name or strategy_label(s) for s in cfg.strategies]


def cell_name(label: str, budget: int, seed: int) -> str:
    return f"{label}-n{budget}-s{seed}"


def selection_name(ablate: str, label: str, sel: SelectConfig, seed: int, budget: int) -> str:
    """Folder of the selection of one strategy (and seed, when the strategy reads it) for the largest budget."""
    return f"{ablate}-{label}" + (f"-s{seed}" if strategy(sel.strategy).seeded else "") + f"-n{budget}"


def ablate_key(cfg: AblateConfig, s_cfg: SFTConfig, e_cfg: EvalConfig, model_cfg: ModelConfig) -> dict:
    """What decides the grid's results; resources and cadence (workers' CPUs, actors, checkpoints) may change."""
    from skillray.eval.stage import EXECUTION as EVAL_EXECUTION
    from skillray.sft.stage import EXECUTION as SFT_EXECUTION

    ab_key = {k: v for k, v in cfg.model_dump().items() if k not in _EXECUTION and k not in ("sft", "eval")}
    for st in ab_key["strategies"]:  # decontamination that only reports does not change a selection (nor old keys)
        if st.get("decontaminate") != "drop":
            for k in ("decontaminate", "decontam_n", "decontam_max_matches"):
                st.pop(k, None)
    return {"ablate": ab_key, "sft": s_cfg.model_dump(exclude={"budget", "seed", *SFT_EXECUTION}),
            "eval": e_cfg.model_dump(exclude=set(EVAL_EXECUTION)), "model": model_cfg.model_dump()}


GRID_AXES = ("strategies", "budgets", "seeds", "baseline")


def _grows(have: StageManifest | None, want: StageManifest) -> bool:
    """Whether ``have`` differs from ``want`` only in the grid's axes (same model, corpus, SFT and eval)."""
    if have is None or have.inputs != want.inputs:
        return False
    strip = lambda c: {**c, "ablate": {k: v for k, v in c["ablate"].items() if k not in GRID_AXES}}  # noqa: E731
    return strip(have.config) == strip(want.config)


STAGE_ORDER = ("select", "sft", "eval")  # a cell's stages (select only where its selection is not made yet)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass(frozen=True)
class CellProgress:
    """Where a grid run is, the third argument of every ``progress`` call of :func:`run_ablate`.

    ``cell`` (a cell's name, ``base`` for the model before fine-tuning) is number ``index`` of ``cells`` (base
    first), now in ``stage`` (select / sft / eval; ``reused`` for a cell finished by an earlier run) at
    ``done`` of ``total`` ``unit`` (0 = not known yet); ``cells_done`` cells have every stage finished.
    ``eta_s``: seconds left to the whole grid (see :class:`_Eta`), None until a stage ran to its end; when
    ``untimed`` names stages with work left of which none has finished yet, the ETA leaves them out (a lower
    bound: with eval_together no eval is timed until every training is done).
    """

    cell: str
    index: int
    cells: int
    stage: str
    done: int
    total: int
    unit: str
    cells_done: int
    eta_s: float | None = None
    untimed: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """What a progress line is printed for at once when it changes (the cell and its stage)."""
        return (self.cell, self.stage)

    @property
    def count(self) -> int:
        """The stage's own count, so a printer can tell a moved stage from a repeated call."""
        return self.done

    def __str__(self) -> str:
        s = f"cell {self.index}/{self.cells} {self.cell} | {self.stage} {self.done}/{self.total or '?'} {self.unit}"
        if self.eta_s is not None:
            s += f" | grid ETA {'>= ' if self.untimed else ''}{_duration(self.eta_s)}"
            s += f" ({', '.join(self.untimed)} not timed yet)" if self.untimed else ""
        return s


class _Eta:
    """The grid's seconds left, from the finished work: per stage kind, the seconds of the stages that ran (not
    reused ones) over their weight (sft: its planned optimizer steps, so a larger budget counts more; a
    selection and an eval: one each), times the weight left of that kind; minus the time already spent in the
    running stage (at most its estimate). Kinds with work left and no finished stage are ``untimed``."""

    def __init__(self, left: dict[str, float], clock: Callable[[], float] = time.monotonic):
        self.left = dict(left)
        self.spent = dict.fromkeys(left, 0.0)
        self.weight = dict.fromkeys(left, 0.0)
        self.clock = clock
        self.current: tuple[str, float, float] | None = None  # (kind, weight, started)

    def start(self, kind: str, weight: float) -> None:
        self.current = (kind, weight, self.clock())

    def finish(self, ran: bool) -> None:
        kind, weight, started = self.current
        if ran:  # a reused stage took ~no time: it would make the rate look fast
            self.spent[kind] += self.clock() - started
            self.weight[kind] += weight
        self.skip(kind, weight)
        self.current = None

    def skip(self, kind: str, weight: float) -> None:
        self.left[kind] = max(0.0, self.left[kind] - weight)

    def estimate(self) -> tuple[float | None, tuple[str, ...]]:
        rate = {k: self.spent[k] / w for k, w in self.weight.items() if w > 0}
        if not rate:
            return None, ()
        eta = sum(rate[k] * self.left[k] for k in rate)
        if self.current is not None and self.current[0] in rate:
            kind, weight, started = self.current
            eta -= min(self.clock() - started, rate[kind] * weight)
        return max(eta, 0.0), tuple(k for k in STAGE_ORDER if self.left.get(k, 0) > 0 and k not in rate)


class _Stage:
    """One running stage of :class:`_GridProgress`: ``update`` is the stage's own (done, total) callback; the body
    sets ``ran`` False when the stage found its finished output (not timed)."""

    def __init__(self, grid: "_GridProgress", cell: str, stage: str, unit: str, total: int):
        self.grid, self.cell, self.stage, self.unit = grid, cell, stage, unit
        self.done, self.total, self.ran = 0, total, True
        self.wall = time.time()  # to compare with a returned manifest's `created` (a skipped stage's is older)

    def update(self, done: int, total: int) -> None:
        with self.grid.lock:
            if self.grid.current is not self:  # the SFT poll thread may report once more as its stage ends
                return
            self.done, self.total = done, total
            self.grid.emit(self)


class _GridProgress:
    """The progress calls of one grid run: ``progress(cells done, cells, CellProgress)`` at each stage's start,
    at each of its own progress calls and at its end. Serialized by a lock (the SFT progress comes from a
    thread)."""

    def __init__(self, progress: ProgressFn | None, order: list[str], left: dict[str, float]):
        self.progress = progress
        self.index = {name: i + 1 for i, name in enumerate(order)}
        self.cells_done = 0
        self.eta = _Eta(left)
        self.lock = threading.RLock()
        self.current: _Stage | None = None

    def emit(self, st: _Stage) -> None:
        if self.progress is None:
            return
        eta, untimed = self.eta.estimate()
        n = len(self.index)
        self.progress(self.cells_done, n, CellProgress(st.cell, self.index[st.cell], n, st.stage, st.done, st.total,
                                                       st.unit, self.cells_done, eta, untimed))  # fmt: skip

    @contextlib.contextmanager
    def stage(self, cell: str, stage: str, unit: str, weight: float, total: int = 0, ends_cell: bool = False):
        st = _Stage(self, cell, stage, unit, total)
        with self.lock:
            self.current = st
            self.eta.start(stage, weight)
            self.emit(st)
        try:
            yield st
        except BaseException:
            with self.lock:
                self.current = None
            raise
        with self.lock:
            self.current = None
            self.eta.finish(st.ran)
            self.cells_done += ends_cell
            st.done = st.total = max(st.total, st.done, 1)  # its end: the last count (a skipped stage had none)
            self.emit(st)

    def reused(self, cell: str, weights: dict[str, float]) -> None:
        """A cell finished by an earlier run: its work leaves the estimate untimed."""
        with self.lock:
            for kind, w in weights.items():
                self.eta.skip(kind, w)
            self.cells_done += 1
            st = _Stage(self, cell, "reused", "cell", 1)
            st.done = 1
            self.emit(st)


def run_ablate(run_dir: str | Path, cfg: AblateConfig, model_cfg: ModelConfig, *, sft: SFTConfig | None = None,
               eval_cfg: EvalConfig | None = None, force: bool = False,
               progress: ProgressFn | None = None) -> StageManifest:  # fmt: skip
    """Run the grid of ``cfg`` on the run's corpus (and basis, for basis strategies); return the manifest.

    ``sft`` / ``eval_cfg`` are the run's sections, used where ``cfg.sft`` / ``cfg.eval`` are None.
    Raises ValueError when neither gives an SFT or eval config, StageMismatchError when
    ``<run>/ablate/<name>`` was made by other settings and ``force`` is off.
    """
    from skillray.models import resolve_model

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    s_cfg = cfg.sft or sft
    e_cfg = cfg.eval or eval_cfg
    if s_cfg is None or e_cfg is None:
        raise ValueError("ablate needs SFT and eval settings: set ablate.sft / ablate.eval or the run's sft / eval")
    e_cfg = e_cfg.model_copy(update={"sweep": None})
    corpus_m = finished_input(run_dir, "corpus")
    needs_basis = sorted({s.strategy for s in cfg.strategies if strategy(s.strategy).pool == "basis"})
    if needs_basis:  # before any cell or the base eval runs
        finished_input(run_dir, "basis", f"strategy {needs_basis[0]!r} needs one: run `skillray basis` first "
                       f"(or pick {', '.join(CORPUS_STRATEGIES)})")
    stage_dir = run_dir / "ablate" / cfg.name
    key = ablate_key(cfg, s_cfg, e_cfg, model_cfg)
    inputs = {"corpus": corpus_m.outputs["fingerprint"], "model": resolve_model(model_cfg).fingerprint}
    want = StageManifest("ablate", config=key, inputs=inputs)
    grown_from = None
    try:
        if prepare_stage(stage_dir, want, force) == "skip":
            return read_manifest(stage_dir)
    except StageMismatchError:
        have = read_manifest(stage_dir)
        if not _grows(have, want):
            raise
        # Only the grid's axes changed (more seeds, budgets or strategies, or fewer): every finished cell is
        # still a cell of this grid (its own selection and sft manifests guard its settings): keep them all.
        grown_from = {k: have.config["ablate"].get(k) for k in GRID_AXES}
    want.write(stage_dir)

    with _eval_workers(run_dir, e_cfg, model_cfg, stage_dir) as workers:
        cells, selections, reused = _run_cells(run_dir, cfg, s_cfg, e_cfg, model_cfg, stage_dir, force, progress, workers)
        engines = workers.engine_counters() if workers is not None else {}

    table = results_table(stage_dir, cfg, e_cfg)
    outputs = _write_results(stage_dir, table, cfg, e_cfg)
    want.outputs = {"format": FORMAT, **outputs, "cells": "cells", "selections": sorted(set(selections.values()))}
    want.summary = {
        "cells": len(cells), "cells_reused": reused, "strategies": _labels(cfg), "budgets": cfg.budgets, "seeds": cfg.seeds,
        "baseline": cfg.baseline, **({"grown_from": grown_from} if grown_from else {}), **_headline(table, cfg),
        **({"vllm_engines": f"{engines['engine_starts']} engine start(s), {engines['reloads']} weight reload(s) for "
                            "the evals of this run (each cell's eval summary has its own)"}
           if engines.get("engine_starts") else {}),
        "seconds": round(time.perf_counter() - t0, 2), "output": str(stage_dir),
    }  # fmt: skip
    want.complete = True
    want.write(stage_dir)
    return want


def _eval_workers(run_dir: Path, e_cfg: EvalConfig, model_cfg: ModelConfig, stage_dir: Path):
    """One set of eval actors for the base eval and every cell's (started at the first chunk to generate): a vLLM
    engine starts once and each next model's weights are loaded into it; an HF actor loads each model in turn.
    The openai backend's server holds one model: each eval starts its own (None here)."""
    from skillray.eval.generation import EvalContext, Workers
    from skillray.eval.registry import EVAL_BACKENDS
    from skillray.models import choose_dtype, resolve_model

    if not EVAL_BACKENDS[e_cfg.backend].local_model:
        return contextlib.nullcontext(None)
    # each eval points the workers at its own context (run_eval's `_workers`); this one only says the dtype/device
    device = "cuda" if e_cfg.num_gpus_per_actor > 0 else "cpu"
    dtype = choose_dtype(model_cfg.dtype, device)
    ctx = EvalContext([], {}, resolve_model(model_cfg), dtype.name, device, None, str(dtype))
    return Workers(e_cfg, ctx, model_cfg, log_dir=stage_dir / "logs")


def _run_cells(run_dir, cfg, s_cfg, e_cfg, model_cfg, stage_dir, force, progress, workers):
    """Select, fine-tune and evaluate every cell (and the base model); returns (cells, selections, reused).

    ``cfg.eval_together``: all fine-tunings first, then every eval on ``workers`` (the eval actors never hold GPUs
    while a fine-tuning needs them, and one engine serves every model); else cell by cell on new actors each.
    ``progress`` gets (cells done, cells, :class:`CellProgress`) at every stage's start, its own progress and end.
    """
    from skillray.select import run_select
    from skillray.sft.stage import run_sft, total_steps

    labels = _labels(cfg)
    cells = [(lab, sel, b, seed) for seed in cfg.seeds for lab, sel in zip(labels, cfg.strategies) for b in cfg.budgets]
    names = ["base"] * int(cfg.eval_base) + [cell_name(lab, b, seed) for lab, _, b, seed in cells]
    steps = {b: total_steps(b, s_cfg) for b in cfg.budgets}  # planned steps: the budget's lines, before any cut
    left = {"select": len({(lab, seed) for lab, _, _, seed in cells}), "sft": sum(steps[b] for _, _, b, _ in cells),
            "eval": len(names)}  # the ETA's weights: selections, planned steps, evals
    grid = _GridProgress(progress, names, left)
    reused = 0
    together = cfg.eval_together and workers is not None
    to_eval: list[tuple[Path, ModelConfig]] = []  # cells trained, evaluated after all fine-tunings

    def clean(cell: Path, subs: tuple[str, ...]) -> None:
        if not cfg.keep_models and any((cell / sub).exists() for sub in subs):
            for sub in subs:
                shutil.rmtree(cell / sub, ignore_errors=True)
            read_manifest(cell).write(cell)  # the cell's files record: what is left (its eval's samples count)

    def evaluate(name: str, model: ModelConfig, out_dir: Path, on=None) -> int:
        with grid.stage(name, "eval", "samples", 1, ends_cell=True) as st:
            st.ran = not _evaluate(run_dir, e_cfg, model, out_dir, force, on, st.update)
        return int(not st.ran)

    if cfg.eval_base and not together:
        reused += evaluate("base", model_cfg, stage_dir / "base" / "eval")
    selections: dict[tuple[str, int], str] = {}
    for lab, sel, budget, seed in cells:
        sname = selection_name(cfg.name, lab, sel, seed, max(cfg.budgets))
        cell = stage_dir / "cells" / cell_name(lab, budget, seed)
        if (lab, seed) not in selections:
            one = sel.model_copy(update={"budget": max(cfg.budgets), "seed": seed, "name": sname})
            with grid.stage(cell.name, "select", "selection", 1, total=1) as st:
                sm = run_select(run_dir, SelectConfig.model_validate(one.model_dump()), force=force,
                                benchmarks=e_cfg.benchmarks)  # decontamination against the cells' eval
                st.ran = sm.created >= st.wall
            selections[(lab, seed)] = sname
        ev_m = read_manifest(cell / "eval")
        if ev_m is not None and ev_m.complete and read_manifest(cell) is not None and read_manifest(cell).complete:
            reused += 1  # finished cell: its model may be gone (keep_models off), its samples are what counts
            clean(cell, ("model", "checkpoints", "data"))
            grid.reused(cell.name, {"sft": steps[budget], "eval": 1})
            continue
        s_one = s_cfg.model_copy(update={"selection": sname, "budget": budget, "seed": seed, "name": cell.name})
        with grid.stage(cell.name, "sft", "steps", steps[budget], total=steps[budget]) as st:
            m = run_sft(run_dir, s_one, model_cfg, force=force, progress=st.update, out_dir=cell)
            st.ran = m.created >= st.wall
        fine_tuned = model_cfg.model_copy(update={"name_or_path": str(Path(m.summary["model"]).resolve()),
                                                  "gguf_file": None, "revision": None})  # fmt: skip
        if together:
            clean(cell, ("checkpoints", "data"))  # only the model waits for the evals
            to_eval.append((cell, fine_tuned))
            continue
        evaluate(cell.name, fine_tuned, cell / "eval")
        clean(cell, ("model", "checkpoints", "data"))
    if together:
        if cfg.eval_base:
            reused += evaluate("base", model_cfg, stage_dir / "base" / "eval", workers)
        for cell, fine_tuned in to_eval:
            evaluate(cell.name, fine_tuned, cell / "eval", workers)
            clean(cell, ("model", "checkpoints", "data"))
    return cells, selections, reused


def _evaluate(run_dir: Path, e_cfg: EvalConfig, model_cfg: ModelConfig, out_dir: Path, force: bool,
              workers=None, progress=None) -> int:  # fmt: skip
    """Evaluate into ``out_dir`` (on ``workers`` when given) unless a finished eval is there; returns 1 when reused."""
    from skillray.eval import run_eval

    m = read_manifest(out_dir)
    if m is not None and m.complete and not force:
        return 1
    run_eval(run_dir, e_cfg, model_cfg, force=force, progress=progress, out_dir=out_dir, _workers=workers)
    return 0


# ----------------------------------------------------------------------------- table


def _problem_scores(eval_dir: Path, k_values: list[int]):
    """{(benchmark, k): (problem ids, per-problem Pass@k of shape (P,))} from an eval folder's sample files."""
    return problem_scores(eval_dir / "samples" / "base", k_values)


def problem_scores(samples_dir: Path, k_values: list[int]):
    """{(benchmark, k): (problem ids, per-problem Pass@k of shape (P,))} from one arm's sample files
    (``<eval>/samples/base`` or ``<eval>/sweep/samples/<arm>``), problems sorted by id."""
    from skillray.eval.passk import pass_at_k_array
    from skillray.eval.tables import problem_counts, read_sample_files

    files = sorted(Path(samples_dir).rglob("chunk-*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{samples_dir}: no sample files; rerun to evaluate this arm")
    counts = problem_counts(read_sample_files(files))
    if counts["failed"].any():  # failed requests are no result; scoring them 0 would bias the comparison
        bad = counts.loc[counts["failed"], "problem_id"].tolist()
        raise ValueError(f"{samples_dir}: {len(bad)} problem(s) whose generation requests failed (e.g. {bad[0]!r}); "
                         "rerun `skillray ablate`: eval retries their chunks")  # fmt: skip
    out = {}
    for bench, g in counts.groupby("benchmark", sort=True):
        g = g.sort_values("problem_id")
        for k in k_values:
            out[(bench, k)] = (list(g["problem_id"]), pass_at_k_array(g["n"].to_numpy(), g["c"].to_numpy(), k))
    return out


def _train_tokens(cell: Path) -> tuple[float, float]:
    """(tokens, loss tokens) the cell's fine-tuning saw after the max_seq_len cut; NaN when it has no manifest."""
    m = read_manifest(cell)
    if m is None or "tokens" not in m.summary:
        return float("nan"), float("nan")
    return float(m.summary["tokens"]), float(m.summary.get("loss_tokens", float("nan")))


def results_table(stage_dir: Path, cfg: AblateConfig, e_cfg: EvalConfig):
    """One row per (strategy, budget, benchmark, k): seeds' Pass@k, mean, spread, hierarchical bootstrap CI,
    paired delta against the baseline with its p-value (Holm across the strategies of one budget, benchmark and
    k) and detectable effect, and the training tokens. The base model (eval_base) is a row with strategy
    ``base`` and budget 0. See :mod:`skillray.eval.stats` for the statistics."""
    import pandas as pd

    from skillray.eval.stage import resolved_k_values
    from skillray.eval.stats import compare_arms

    ks = resolved_k_values(e_cfg)
    nb, conf = cfg.n_bootstrap, cfg.confidence
    labels = _labels(cfg)
    scores = {}  # (label, budget, seed) -> {(bench, k): (ids, v)}
    tokens = {}  # (label, budget) -> per-seed (tokens, loss tokens)
    for lab in labels:
        for b in cfg.budgets:
            for seed in cfg.seeds:
                cell = stage_dir / "cells" / cell_name(lab, b, seed)
                scores[(lab, b, seed)] = _problem_scores(cell / "eval", ks)
                tokens.setdefault((lab, b), []).append(_train_tokens(cell))
    rows = []
    if cfg.eval_base:
        for (bench, k), (ids, v) in _problem_scores(stage_dir / "base" / "eval", ks).items():
            st = compare_arms({"base": v[None, :]}, None, n_boot=nb, confidence=conf)["base"]
            rows.append({"strategy": "base", "budget": 0, "benchmark": bench, "k": k, "n_seeds": 1,
                         "n_problems": len(ids), "mean": float(v.mean()), "std": float("nan"),
                         "min": float(v.mean()), "max": float(v.mean()), "se": st["se"], "ci_low": st["ci_low"],
                         "ci_high": st["ci_high"], "seeds": [float(v.mean())]})  # fmt: skip
    for b in cfg.budgets:
        for bench, k in sorted(scores[(labels[0], b, cfg.seeds[0])]):
            ids0 = scores[(labels[0], b, cfg.seeds[0])][(bench, k)][0]
            arms = {}
            for lab in labels:
                per_seed = []
                for seed in cfg.seeds:
                    ids, v = scores[(lab, b, seed)][(bench, k)]
                    if ids != ids0:
                        raise ValueError(f"ablate {bench}: cells were evaluated on different problems; "
                                         "rerun with --force")  # fmt: skip
                    per_seed.append(v)
                arms[lab] = np.stack(per_seed)  # (S, P), seeds in cfg.seeds order: the pairing across arms
            stats = compare_arms(arms, cfg.baseline, n_boot=nb, confidence=conf, alpha=1 - conf, power=POWER)
            r_means = arms[cfg.baseline].mean(axis=1) if cfg.baseline is not None else None  # (S,)
            for lab in labels:
                m, st = arms[lab], stats[lab]
                means = m.mean(axis=1)  # (S,)
                tok = np.array(tokens[(lab, b)])  # (S, 2)
                row = {"strategy": lab, "budget": b, "benchmark": bench, "k": k, "n_seeds": len(cfg.seeds),
                       "n_problems": m.shape[1], "mean": float(means.mean()),
                       "std": float(means.std(ddof=1)) if len(means) > 1 else float("nan"),
                       "min": float(means.min()), "max": float(means.max()), "se": st["se"],
                       "ci_low": st["ci_low"], "ci_high": st["ci_high"], "seeds": [float(x) for x in means],
                       "train_tokens": float(tok[:, 0].mean()), "train_loss_tokens": float(tok[:, 1].mean())}  # fmt: skip
                if cfg.baseline is not None and lab != cfg.baseline:
                    row.update(delta_vs_baseline=st["delta"], delta_ci_low=st["delta_ci_low"],
                               delta_ci_high=st["delta_ci_high"], p_value=st["p"], p_holm=st["p_holm"],
                               mde=st["mde"], seeds_won=int((means > r_means).sum()),
                               seeds_lost=int((means < r_means).sum()))  # fmt: skip
                rows.append(row)
    cols = ["strategy", "budget", "benchmark", "k", "n_seeds", "n_problems", "mean", "std", "min", "max", "se",
            "ci_low", "ci_high", "delta_vs_baseline", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "mde",
            "seeds_won", "seeds_lost", "train_tokens", "train_loss_tokens", "seeds"]  # fmt: skip
    order = {lab: i for i, lab in enumerate(["base", *labels])}
    rows.sort(key=lambda r: (order[r["strategy"]], r["budget"], r["benchmark"], r["k"]))
    return pd.DataFrame(rows).reindex(columns=cols)


def _write_results(stage_dir: Path, table, cfg: AblateConfig, e_cfg: EvalConfig) -> dict:
    from skillray.eval.tables import markdown

    buf = io.BytesIO()
    table.assign(seeds=table["seeds"].map(lambda x: [float(v) for v in x])).to_parquet(buf, index=False)
    atomic_write_bytes(stage_dir / "results.parquet", buf.getvalue())
    atomic_write_json(stage_dir / "results.json", {"results": table.to_dict(orient="records")})
    md = (f"# Ablation {cfg.name}: selection strategies x budgets x seeds\n\n{methods_text(cfg, e_cfg)}\n\n"
          + markdown(table.drop(columns=["seeds"])))  # fmt: skip
    atomic_write_bytes(stage_dir / "results.md", md.encode())
    plots = []
    for bench in sorted(set(table["benchmark"])):
        name = f"plots/passk_{bench}.png"
        atomic_write_bytes(stage_dir / name, _plot(table, bench, cfg))
        plots.append(name)
    return {"results": "results.parquet", "results_json": "results.json", "results_md": "results.md", "plots": plots}


def methods_text(cfg: AblateConfig, e_cfg: EvalConfig) -> str:
    """How the table's numbers were made (printed above it)."""
    pct, alpha, m = f"{cfg.confidence:.0%}", 1 - cfg.confidence, len(cfg.strategies) - 1
    if cfg.baseline is None:
        return (f"Pass@k (unbiased, mean over problems) of each fine-tuned model; `mean`/`std`/`min`/`max` over the "
                f"{len(cfg.seeds)} seeds {cfg.seeds}. Intervals: {pct} hierarchical bootstrap ({cfg.n_bootstrap} "
                f"resamples of seeds, then problems). No baseline: no paired comparisons in this table. Eval: "
                f"{e_cfg.n_samples} samples per problem, temperature {e_cfg.temperature}.")  # fmt: skip
    return (f"Pass@k (unbiased, mean over problems) of each fine-tuned model; `mean`/`std`/`min`/`max` over the "
            f"{len(cfg.seeds)} seeds {cfg.seeds}. Intervals: {pct} hierarchical bootstrap ({cfg.n_bootstrap} resamples; "
            f"each resample draws seeds, then problems, with replacement; `se` = its standard deviation). "
            f"`delta_vs_baseline` = mean over seeds and problems of (strategy - {cfg.baseline}) on the same seed and "
            f"problem; its interval and two-sided `p_value` come from the same bootstrap draws for every strategy "
            f"(paired by seed and problem; p = share of centred resamples at least as far from the estimate as it is "
            f"from 0); `p_holm` = Holm-adjusted across the {m} strategies compared with {cfg.baseline} at each "
            f"budget, benchmark and k. `mde` = smallest detectable effect of this design: "
            f"(z_(1 - alpha/(2m)) + z_{POWER:g}) x se(delta), alpha = {alpha:.2g}, m = {m}, i.e. the true difference "
            f"this many seeds and problems would find with {POWER:.0%} power at Holm's strictest level; a |delta| "
            f"below it is no evidence either way. `train_tokens` / `train_loss_tokens` = tokens (all / in the loss) "
            f"the fine-tuning saw, mean over seeds. `seeds_won`/`seeds_lost` count seeds where the strategy's "
            f"Pass@k is above/below {cfg.baseline}'s. Eval: {e_cfg.n_samples} samples per problem, temperature "
            f"{e_cfg.temperature}.")  # fmt: skip


def _plot(table, bench: str, cfg: AblateConfig) -> bytes:
    """Pass@k (smallest k) against budget, one line per strategy with its bootstrap interval; base dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = table[table["benchmark"] == bench]
    k = int(t["k"].min())
    t = t[t["k"] == k]
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    for lab in _labels(cfg):
        g = t[t["strategy"] == lab].sort_values("budget")
        yerr = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]]).clip(min=0)
        ax.errorbar(g["budget"], g["mean"], yerr=yerr, marker="o", capsize=3, label=lab,
                    linestyle="--" if lab == cfg.baseline else "-")  # fmt: skip
    base = t[t["strategy"] == "base"]
    if len(base):
        ax.axhline(float(base["mean"].iloc[0]), color="grey", linestyle=":", label="before SFT")
    ax.set_xscale("log" if len(cfg.budgets) > 2 and max(cfg.budgets) / min(cfg.budgets) >= 10 else "linear")
    ax.set_xlabel("training examples (budget)")
    ax.set_ylabel(f"Pass@{k}")
    ax.set_title(f"{bench}: mean over {len(cfg.seeds)} seeds, {cfg.confidence:.0%} bootstrap CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _headline(table, cfg: AblateConfig) -> dict:
    """The smallest k per benchmark and budget: 'mean ± std (delta vs baseline)' per strategy."""
    out = {}
    for bench in sorted(set(table["benchmark"])):
        t = table[table["benchmark"] == bench]
        k = int(t["k"].min())
        for _, r in t[(t["k"] == k) & (t["strategy"] != "base")].iterrows():
            cell = f"{r['mean']:.3f} ± {r['std']:.3f}" if r["n_seeds"] > 1 else f"{r['mean']:.3f}"
            if cfg.baseline is not None and r["strategy"] != cfg.baseline:
                cell += (f" (vs {cfg.baseline} {r['delta_vs_baseline']:+.3f} [{r['delta_ci_low']:+.3f}, "
                         f"{r['delta_ci_high']:+.3f}], p_holm {r['p_holm']:.3g}, mde {r['mde']:.3f})")  # fmt: skip
            out.setdefault(f"{bench} pass@{k}", {})[f"{r['strategy']} n{r['budget']}"] = cell
        base = t[(t["k"] == k) & (t["strategy"] == "base")]
        if len(base):
            out[f"{bench} pass@{k}"]["base"] = f"{base['mean'].iloc[0]:.3f}"
    return out
