"""Experiment tracking: a `skillray run` or `skillray ablate` reported to MLflow or Weights & Biases.

One tracking run per invocation of `skillray run` (nested runs, one per cell, under the run of
`skillray ablate`). What is logged, all from the driver and all read back from the stage folders
after each stage (so a stage that skipped its finished work logs the same as one that computed it):

* params: the run config, flattened (``model.name_or_path``, ``sft.learning_rate``, ...), and
  ``config.yaml`` as an artifact;
* per stage folder ``<rel>``: every numeric leaf of its manifest's summary as metric ``<rel>/<key>``,
  the stage time ``<rel>/seconds``, and its top-level files (manifest, tables, plots) as artifacts under
  ``<rel>/``; eval and sweep tables also as Pass@k metrics ``<rel>/pass_<k>/[<arm>/]<benchmark>``
  (MLflow names allow no ``@``);
* SFT: the loss curve of rank 0's trainer (``train_log.json``: rank 0's ``log_history``, which Ray
  Train hands back with the final checkpoint) as metric ``<rel>/train_loss`` with the optimizer step
  as step (and ``learning_rate``, ``grad_norm``). Logging it once, after the stage, means a worker
  restarted by Ray Train cannot log a step twice and workers never need the tracking server or its
  token;
* the report folder (``report/``) and ``pipeline.json`` as artifacts.

Tracking only reports: it is part of no stage key. The server is checked before any stage runs
(:class:`TrackingError`, a ValueError naming ``tracking.uri``); a logging call that fails later is
warned about and counted, and the pipeline carries on (the results are on disk either way). Secrets
come from the environment (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD, WANDB_API_KEY);
the config refuses a URI with a password in it, and nothing here logs the environment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Iterator

from skillray.config import TrackingConfig

_SUFFIXES = (".md", ".html", ".png", ".json", ".jsonl", ".parquet", ".csv", ".yaml")
_PARAM_MAX = 6000  # MLflow's limit on a param value (characters)


class TrackingError(ValueError):
    """The tracking backend cannot be used (unreachable server, missing package, bad setting)."""


# ----------------------------------------------------------------------------- helpers


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric/param key: only letters, digits, ``_ - . / : space`` (others become ``_``),
    no empty path parts (``pass@1`` -> ``pass_1``)."""
    key = re.sub(r"[^\w.\- :/]", "_", name)
    key = re.sub(r"/+", "/", key).strip("/")
    return "/".join(p if p not in (".", "..") else "_" for p in key.split("/"))[:250]


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> one level with dotted keys; lists and other leaves stay as they are."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_params(cfg) -> dict[str, str]:
    """The run config (without its tracking section) as MLflow params: dotted keys, JSON values."""
    flat = flatten(cfg.model_dump(mode="json", exclude={"tracking"}))
    out = {}
    for k, v in flat.items():
        text = v if isinstance(v, str) else json.dumps(v)
        out[metric_key(k)] = text if len(text) <= _PARAM_MAX else text[: _PARAM_MAX - 1] + "…"
    return out


def summary_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Every finite numeric leaf of a stage summary (booleans left out) as ``<prefix>/<dotted key>``."""
    out = {}
    for k, v in flatten(summary or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[metric_key(f"{prefix}/{k}")] = float(v)
    return out


def _uri_shown(uri: str) -> str:
    """The URI as printed: any user name dropped (the config already refuses passwords)."""
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(uri)
    if p.username:
        return urlunsplit(p._replace(netloc=p.hostname + (f":{p.port}" if p.port else "")))
    return uri


# ----------------------------------------------------------------------------- backends


class Tracker:
    """The no-op tracker (``tracking.backend: none``); the backends override every method."""

    enabled = False

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.skipped_files: list[str] = []

    def _safe(self, what: str, fn, *args, **kwargs):
        """Run one logging call; a failure is warned about and counted, never fatal (results are on disk)."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any client error: tracking must not break a finished stage
            msg = f"{what}: {type(e).__name__}: {str(e)[:300]}"
            self.failures.append(msg)
            warnings.warn(f"tracking: {msg}", stacklevel=2)
            return None

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_series(self, key: str, points: list[tuple[int, float]]) -> None: ...
    def log_file(self, path: Path, artifact_dir: str | None = None) -> None: ...
    def log_dir(self, path: Path, artifact_dir: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def child(self, name: str, tags: dict[str, str] | None = None) -> "Tracker":
        return Tracker()
    def end(self, status: str = "FINISHED") -> None: ...

    def log_file_capped(self, path: Path, artifact_dir: str | None, max_mb: float) -> None:
        if path.stat().st_size > max_mb * 2**20:
            self.skipped_files.append(str(path))
            return
        self.log_file(path, artifact_dir)


class MlflowTracker(Tracker):
    """One MLflow run, through :class:`mlflow.MlflowClient` with an explicit tracking URI (no global state)."""

    enabled = True

    def __init__(self, client, run_id: str, experiment_id: str, uri: str) -> None:
        super().__init__()
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri

    def log_params(self, params):
        from mlflow.entities import Param

        self._safe("log params", self.client.log_batch, self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log_metrics(self, metrics, step=None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if ms:
            self._safe("log metrics", self.client.log_batch, self.run_id, metrics=ms)

    def log_series(self, key, points):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(key, float(v), now, int(s)) for s, v in points if v is not None and math.isfinite(v)]
        if ms:
            self._safe(f"log {key}", self.client.log_batch, self.run_id, metrics=ms)

    def log_file(self, path, artifact_dir=None):
        self._safe(f"upload {path}", self.client.log_artifact, self.run_id, str(path), artifact_dir)

    def log_dir(self, path, artifact_dir=None):
        self._safe(f"upload {path}", self.client.log_artifacts, self.run_id, str(path), artifact_dir)

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        self._safe("set tags", self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def child(self, name, tags=None):
        # A nested run is a run tagged with its parent's id (what mlflow.start_run(nested=True) does).
        run = self._safe(f"start nested run {name}", self.client.create_run, self.experiment_id, run_name=name,
                         tags={"mlflow.parentRunId": self.run_id, **(tags or {})})  # fmt: skip
        if run is None:
            return Tracker()
        return MlflowTracker(self.client, run.info.run_id, self.experiment_id, self.uri)

    def end(self, status="FINISHED"):
        self._safe("end run", self.client.set_terminated, self.run_id, status)


@contextlib.contextmanager
def _mlflow_http_limits(timeout: float) -> Iterator[None]:
    """MLflow retries an HTTP request for minutes by default; the start-up check fails fast instead."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(math.ceil(timeout)))}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_mlflow_uri(cfg: TrackingConfig, run_dir: str | Path) -> str:
    """``tracking.uri``, else $MLFLOW_TRACKING_URI, else the local sqlite store ``<run>/mlflow.db``."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _local_artifacts(uri: str) -> str | None:
    """Artifacts of a local sqlite store go next to its database (MLflow's default is ./mlruns of the current
    directory); a server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def _open_mlflow(cfg: TrackingConfig, run_dir: Path, run_name: str, tags: dict) -> MlflowTracker:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingError("tracking.backend=mlflow needs the MLflow client: pip install 'skillray[track]' "
                            "(mlflow-skinny), or set tracking.backend: none") from None  # fmt: skip
    uri = resolve_mlflow_uri(cfg, run_dir)
    with _mlflow_http_limits(cfg.connect_timeout):
        try:
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(
                cfg.experiment, artifact_location=_local_artifacts(uri))
            run = client.create_run(exp_id, run_name=run_name, tags=tags)
        except Exception as e:  # noqa: BLE001 - connection refused, timeout, 401, bad scheme...
            raise TrackingError(
                f"tracking.uri {_uri_shown(uri)!r}: the MLflow tracking store does not answer "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); start the server "
                "(mlflow server --host 127.0.0.1 --port 5000), fix tracking.uri / $MLFLOW_TRACKING_URI, or set "
                "tracking.backend: none") from None  # fmt: skip
    return MlflowTracker(client, run.info.run_id, exp_id, uri)


class WandbTracker(Tracker):
    """One W&B run (offline by default: files under ``<run>/wandb``, uploaded later with `wandb sync`)."""

    enabled = True

    def __init__(self, run, settings: dict) -> None:
        super().__init__()
        self.run, self.settings = run, settings
        self._series: set[str] = set()

    def log_params(self, params):
        self._safe("log params", self.run.config.update, params, allow_val_change=True)

    def log_metrics(self, metrics, step=None):
        if metrics:
            self._safe("log metrics", self.run.summary.update, dict(metrics))

    def log_series(self, key, points):
        # Each curve gets its own step axis: W&B's global step must only grow, and stages log one after another.
        if key not in self._series:
            self._safe(f"define {key}", self.run.define_metric, key, step_metric=f"{key}_step")
            self._series.add(key)
        for s, v in points:
            if v is not None and math.isfinite(v):
                self._safe(f"log {key}", self.run.log, {key: float(v), f"{key}_step": int(s)})

    def _artifact(self, path: Path, artifact_dir: str | None, is_dir: bool):
        import wandb

        name = metric_key((artifact_dir or path.name).replace("/", "-")).replace(" ", "_") or "files"
        art = wandb.Artifact(re.sub(r"[^\w.\-]", "_", name), type="skillray")
        (art.add_dir if is_dir else art.add_file)(str(path))
        self.run.log_artifact(art)

    def log_file(self, path, artifact_dir=None):
        self._safe(f"upload {path}", self._artifact, path, artifact_dir, False)

    def log_dir(self, path, artifact_dir=None):
        self._safe(f"upload {path}", self._artifact, path, artifact_dir, True)

    def set_tags(self, tags):
        new = set(self.run.tags or ()) | {f"{k}={v}" for k, v in tags.items()}  # W&B tags are plain strings
        self._safe("set tags", setattr, self.run, "tags", tuple(sorted(new)))

    def child(self, name, tags=None):
        import wandb

        # W&B has no nested runs: a cell is its own run in the parent's group.
        run = self._safe(f"start run {name}", wandb.init, name=name, group=self.run.name, job_type="ablate-cell",
                         reinit="create_new", **self.settings)  # fmt: skip
        return WandbTracker(run, self.settings) if run is not None else Tracker()

    def end(self, status="FINISHED"):
        self._safe("finish run", self.run.finish, exit_code=0 if status == "FINISHED" else 1)


def _open_wandb(cfg: TrackingConfig, run_dir: Path, run_name: str, tags: dict) -> WandbTracker:
    try:
        import wandb
    except ImportError:
        raise TrackingError("tracking.backend=wandb needs wandb: pip install 'skillray[track]', or set "
                            "tracking.backend: none") from None  # fmt: skip
    if cfg.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise TrackingError("tracking.mode=online needs WANDB_API_KEY in the environment (never in the config); "
                            "or use tracking.mode: offline")  # fmt: skip
    out = Path(run_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {"project": cfg.experiment, "dir": str(out), "mode": cfg.mode}
    if cfg.mode == "online" and cfg.uri:
        settings["settings"] = wandb.Settings(base_url=cfg.uri)
    try:
        run = wandb.init(name=run_name, tags=[f"{k}={v}" for k, v in tags.items()], reinit="create_new", **settings)
    except Exception as e:  # noqa: BLE001
        raise TrackingError(f"tracking (wandb, mode {cfg.mode}"
                            + (f", tracking.uri {_uri_shown(cfg.uri)!r}" if cfg.uri else "")
                            + f"): cannot start a run ({type(e).__name__}: {str(e)[:300]})") from None  # fmt: skip
    return WandbTracker(run, settings)


def open_tracker(cfg: TrackingConfig, run_dir: str | Path, run_name: str | None = None,
                 tags: dict | None = None) -> Tracker:  # fmt: skip
    """Start the tracking run (checking the backend answers); the no-op tracker when tracking is off."""
    name = cfg.run_name or run_name or Path(run_dir).resolve().name
    tags = {"skillray.run_dir": str(Path(run_dir).resolve()), **(tags or {})}
    if cfg.backend == "mlflow":
        return _open_mlflow(cfg, Path(run_dir), name, tags)
    if cfg.backend == "wandb":
        return _open_wandb(cfg, Path(run_dir), name, tags)
    return Tracker()


@contextlib.contextmanager
def tracked(cfg: TrackingConfig, run_dir: str | Path, run_name: str | None = None,
            tags: dict | None = None) -> Iterator[Tracker]:  # fmt: skip
    """A tracking run around a block: FINISHED, FAILED on an error, KILLED on Ctrl-C; failures printed at the end."""
    tracker = open_tracker(cfg, run_dir, run_name, tags)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
        if tracker.skipped_files:
            warnings.warn(f"tracking: {len(tracker.skipped_files)} file(s) over tracking.max_artifact_mb="
                          f"{cfg.max_artifact_mb} not uploaded, e.g. {tracker.skipped_files[0]}", stacklevel=2)  # fmt: skip
        if tracker.failures:
            warnings.warn(f"tracking: {len(tracker.failures)} logging call(s) failed; first: {tracker.failures[0]}",
                          stacklevel=2)  # fmt: skip


# ----------------------------------------------------------------------------- what is logged


def log_run_config(tracker: Tracker, cfg) -> None:
    """The run config as params, and ``<run>/config.yaml`` as an artifact when it exists."""
    if not tracker.enabled:
        return
    tracker.log_params(config_params(cfg))
    p = Path(cfg.run_dir) / "config.yaml"
    if p.is_file():
        tracker.log_file(p)


def _loss_series(tracker: Tracker, stage_dir: Path, prefix: str) -> None:
    p = stage_dir / "train_log.json"
    if not p.is_file():
        return
    history = json.loads(p.read_text()).get("log_history", [])
    for name, key in (("train_loss", "loss"), ("learning_rate", "learning_rate"), ("grad_norm", "grad_norm")):
        pts = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and "step" in h]
        if pts:
            tracker.log_series(metric_key(f"{prefix}/{name}" if prefix else name), pts)


def _table_metrics(stage_dir: Path, prefix: str) -> dict[str, float]:
    """Pass@k of an eval or sweep results table as ``<prefix>/pass_<k>/[<arm>/]<benchmark>`` (and
    ``delta_pass_<k>``); the unsteered arm ``base`` has no arm part."""
    p = stage_dir / "results.json"
    if not p.is_file():
        return {}
    rows = json.loads(p.read_text()).get("results", [])
    out = {}
    for r in rows:
        if "benchmark" not in r or "k" not in r:
            continue
        arm = f"{r['arm']}/" if r.get("arm") not in (None, "base") else ""  # a sweep's steered arms
        for col in ("pass_at_k", "delta"):
            v = r.get(col)
            if isinstance(v, (int, float)) and math.isfinite(v):
                name = "pass@" if col == "pass_at_k" else "delta_pass@"
                out[metric_key(f"{prefix}/{name}{r['k']}/{arm}{r['benchmark']}")] = float(v)
    return out


def log_stage_dir(tracker: Tracker, run_dir: str | Path, rel: str | Path, max_mb: float,
                  prefix: str | None = None) -> None:  # fmt: skip
    """One stage folder: its summary's numbers, its Pass@k table, the SFT loss curve and its top-level files."""
    if not tracker.enabled:
        return
    from skillray.artifacts import read_manifest

    stage_dir = Path(run_dir) / rel
    m = read_manifest(stage_dir)
    if m is None:
        return
    prefix = Path(rel).as_posix() if prefix is None else prefix
    metrics = summary_metrics(m.summary, prefix)
    metrics.update(_table_metrics(stage_dir, prefix))
    tracker.log_metrics({metric_key(k): v for k, v in metrics.items()})
    _loss_series(tracker, stage_dir, prefix)
    for f in sorted(stage_dir.iterdir()):
        if f.is_file() and f.suffix in _SUFFIXES and not f.name.startswith("."):
            tracker.log_file_capped(f, Path(rel).as_posix(), max_mb)
    plots = stage_dir / "plots"
    if plots.is_dir():
        tracker.log_dir(plots, f"{Path(rel).as_posix()}/plots")


def tracked_runner(runner, tracker: Tracker):
    """``runner(name, cfg, force)`` that logs the stage's folders once the stage returns."""
    if not tracker.enabled:
        return runner
    from skillray.stages import STAGES

    def run(name: str, c, force: bool) -> None:
        runner(name, c, force)
        for rel in STAGES[name].outputs(c):
            log_stage_dir(tracker, c.run_dir, rel, c.tracking.max_artifact_mb)

    return run


def log_pipeline(tracker: Tracker, run_dir: str | Path) -> None:
    """Each stage's status (tag ``pipeline.<stage>``: ran / skipped / failed) and time (``pipeline/<stage>/seconds``)
    from ``<run>/pipeline.json``, with the file itself and the report folder (index.html, report.md, figures)."""
    if not tracker.enabled:
        return
    from skillray.pipeline import read_status

    status = read_status(run_dir) or {}
    stages = status.get("stages", [])
    tracker.set_tags({f"pipeline.{s['stage']}": s["status"] for s in stages})
    tracker.log_metrics({metric_key(f"pipeline/{s['stage']}/seconds"): s["seconds"] for s in stages
                         if isinstance(s.get("seconds"), (int, float))})  # fmt: skip
    if Path(run_dir, "pipeline.json").is_file():
        tracker.log_file(Path(run_dir, "pipeline.json"))
    log_report(tracker, run_dir)


def log_report(tracker: Tracker, run_dir: str | Path) -> None:
    """``<run>/report/`` (index.html, report.md, figures) as artifacts under ``report/``."""
    if not tracker.enabled:
        return
    report = Path(run_dir) / "report"
    if report.is_dir():
        tracker.log_dir(report, "report")


def log_ablate(tracker: Tracker, run_dir: str | Path, ab, max_mb: float) -> None:
    """An ablation: its table and plots on ``tracker``'s run, one nested run per finished cell (strategy, budget,
    seed as params; the cell's SFT summary, loss curve and Pass@k as metrics)."""
    if not tracker.enabled:
        return
    from skillray.artifacts import read_manifest
    from skillray.sft.ablate import cell_name

    rel = Path("ablate") / ab.name
    stage = Path(run_dir) / rel
    log_stage_dir(tracker, run_dir, rel, max_mb)
    res = stage / "results.json"
    if res.is_file():
        metrics = {}
        for r in json.loads(res.read_text()).get("results", []):
            for col in ("mean", "delta_vs_baseline", "p_holm"):
                v = r.get(col)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    name = f"{rel}/{r['strategy']}/n{r['budget']}/{r['benchmark']}/pass@{r['k']}/{col}"
                    metrics[metric_key(name)] = v
        tracker.log_metrics(metrics)
    labels = [s.name or _label(s) for s in ab.strategies]
    for seed in ab.seeds:
        for lab, sel in zip(labels, ab.strategies):
            for budget in ab.budgets:
                cell = rel / "cells" / cell_name(lab, budget, seed)
                m = read_manifest(Path(run_dir) / cell)
                if m is None or not m.complete:
                    continue
                child = tracker.child(cell.name, {"skillray.ablate": ab.name})
                child.log_params({"strategy": lab, "budget": str(budget), "seed": str(seed),
                                  **{metric_key(f"select.{k}"): json.dumps(v) if not isinstance(v, str) else v
                                     for k, v in sel.model_dump(mode="json").items()}})  # fmt: skip
                log_stage_dir(child, run_dir, cell, max_mb, prefix="sft")
                log_stage_dir(child, run_dir, cell / "eval", max_mb, prefix="eval")
                child.end("FINISHED")
                tracker.failures += child.failures
                tracker.skipped_files += child.skipped_files


def _label(sel) -> str:
    from skillray.config import strategy_label

    return strategy_label(sel)
