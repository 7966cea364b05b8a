"""Shared CLI pieces: config loading with overrides, progress bars, stage summaries, and :func:`run_stage`,
the one way the commands, `skillray run` and the Ray job entry points (:func:`job`) run a stage."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from skillray.artifacts import StageMismatchError, read_manifest
from skillray.config import RunConfig, config_from_mapping, load_config
from skillray.corpus.records import CorpusError
from skillray.llm_client import EndpointError
from skillray.stages import STAGES

console = Console(stderr=True)

# What a command reports as a clean error (exit 2) instead of a traceback: bad settings or inputs (pydantic's
# ValidationError and SteeringError are ValueErrors), a stage output made by another config, and an endpoint
# (labeller, judge, eval server) that failed after its retries.
USER_ERRORS = (CorpusError, StageMismatchError, FileNotFoundError, ValueError, EndpointError)

in_job = False  # set by job(): summaries go to stdout as JSON lines (the tables and digests to stderr)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def help_of(model, field: str) -> str:
    """Option help text = the pydantic field description (one source of truth)."""
    return model.model_fields[field].description or ""


ConfigOpt = typer.Option(None, "--config", "-c", help="Run config YAML (default: configs/demo.yaml).")
RunDirOpt = typer.Option(None, "--run-dir", "-o", help="Run directory (overrides run_dir in the config).")
ForceOpt = typer.Option(False, "--force", help="Discard existing output made by another config and recompute.")
SetOpt = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                      help="Override one config value (repeatable), validated like the YAML: --set extract.num_actors=8 "
                      "--set sft.learning_rate=1e-5; the value is read as YAML. Options of this command win over it.")  # fmt: skip


def load_run_config(config: Path | None, run_dir: Path | None, sets: list[str] | None = None) -> RunConfig:
    """The run config (``config``, default configs/demo.yaml) with ``--set`` overrides and ``--run-dir`` applied."""
    if config is None:
        cfg = load_config(DEMO_CONFIG, sets or ()) if DEMO_CONFIG.is_file() else config_from_mapping({}, "defaults", sets or ())
    else:
        cfg = load_config(config, sets or ())
    if run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    return cfg


def csv_list(value: str | None, kind, option: str) -> list | None:
    """'0,2,5' -> [0, 2, 5] (None stays None); the error names the option and the bad item."""
    if value is None:
        return None
    out = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise ValueError(f"{option} {value!r}: expected comma-separated values ({item!r} is not a "
                             f"{kind.__name__})") from None  # fmt: skip
    return out


def fail(msg: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(msg)}")  # messages hold [brackets] (rows, lists)
    raise typer.Exit(2)


PLAIN_PROGRESS_EVERY_S = 30.0  # without a TTY (a Ray job's log): one progress line per 30 s at most
PROGRESS_EVERY_ENV = "SKILLRAY_PROGRESS_EVERY_S"  # ... or this many seconds


def plain_progress_every_s() -> float:
    """Seconds between two plain progress lines: ``$SKILLRAY_PROGRESS_EVERY_S``, else 30."""
    raw = os.environ.get(PROGRESS_EVERY_ENV)
    if raw is None or not raw.strip():
        return PLAIN_PROGRESS_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise ValueError(f"{PROGRESS_EVERY_ENV}={raw!r}: expected seconds >= 0 between progress lines without a "
                         f"TTY (e.g. 30; unset it for the default {PLAIN_PROGRESS_EVERY_S:g})")  # fmt: skip
    return every


class _StageRemaining(TimeRemainingColumn):
    """Rich's time-remaining column, blank where the task shows a detail: a detail (an ablate cell) carries
    its own estimate for the whole grid, and rich's, from the cells' rate, would say something else."""

    def render(self, task):
        from rich.text import Text

        return Text("") if task.fields.get("detail") else super().render(task)


@contextlib.contextmanager
def rows_progress(description: str, every_s: float | None = None, clock=time.monotonic) -> Iterator:
    """A progress display driven by a ``(done, total[, detail])`` callback, the one every stage's progress goes
    through. ``detail`` (optional) says where inside the stage the work is (ablate: a
    :class:`skillray.sft.ablate.CellProgress`): its ``str`` is shown after the count, its ``key`` (the cell
    and stage) decides what counts as a new phase, its ``count`` whether it moved.

    On a TTY a rich live line. Without one (a Ray job's log; ``SKILLRAY_PROGRESS=1`` forces the live line)
    plain lines ``<description>: done/total[ | detail]``: the first, one at once whenever the detail's key
    changes (a new cell or stage), the last (done reaches total), and otherwise one when something moved and
    ``every_s`` (default :func:`plain_progress_every_s`: ``$SKILLRAY_PROGRESS_EVERY_S`` or 30) passed since the
    last line, so callers may call as often as they like (the SFT poll calls every 2 s). ``clock`` times that
    interval (a test passes a fake one).
    """
    every_s = plain_progress_every_s() if every_s is None else every_s
    disable = not sys.stderr.isatty() and not os.environ.get("SKILLRAY_PROGRESS")
    printed: dict = {"at": None, "key": None, "moved": None}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        _StageRemaining(),
        console=console,
        disable=disable,
    ) as prog:
        task = prog.add_task(description, total=None, detail="")

        def update(done: int, total: int, detail=None) -> None:
            prog.update(task, completed=done, total=total, detail=str(detail) if detail is not None else "")
            if not disable:
                return
            now, at = clock(), printed["at"]
            key = getattr(detail, "key", None)
            moved = (done, getattr(detail, "count", None))
            if at is None or key != printed["key"] or (
                    moved != printed["moved"] and (done >= total or now - at >= every_s)):
                line = f"{description}: {done}/{total}" + (f" | {detail}" if detail is not None else "")
                console.print(line, markup=False, highlight=False, soft_wrap=True)  # one log line, not wrapped at 80
                printed.update(at=now, key=key, moved=moved)

        yield update


def print_summary(stage: str, summary: dict, skipped: bool = False) -> None:
    """A stage summary as a table on stdout, or under a Ray job one JSON line ``{stage: summary}``."""
    if in_job:
        print(json.dumps({stage: summary}, default=str), flush=True)
        return
    t = Table(title=f"{stage} {'(skipped: finished output matches)' if skipped else 'summary'}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in summary.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        t.add_row(k, str(v))
    Console().print(t)


def run_stage(name: str, cfg: RunConfig, force: bool):
    """Run stage ``name`` of the table (:data:`skillray.stages.STAGES`) on ``cfg`` with its progress bar, then
    print its summary (and its further ones) and its digest. Returns its manifest."""
    st = STAGES[name]
    started = time.time()
    label = st.progress(cfg) if callable(st.progress) else st.progress
    if label is None:
        with console.status(f"{name} ..."):
            m = st.run(cfg, force, None)
    else:
        with rows_progress(label) as progress:
            m = st.run(cfg, force, progress)
    print_summary(st.title(cfg) if st.title else name, m.summary, skipped=m.created < started)
    for title, folder in st.summaries(cfg) if st.summaries else []:
        more = read_manifest(Path(cfg.run_dir) / folder)
        if more is not None:
            print_summary(title, more.summary, skipped=more.created < started)
    if st.digest is not None:
        path, heading = st.digest(cfg)
        path = Path(cfg.run_dir) / path
        if path.is_file():
            text = path.read_text()
            console.print(text.split(heading)[0].strip() if heading else text, markup=False, highlight=False)
    return m


def job(command: list[str], argv: list[str] | None = None) -> int:
    """A Ray job entry point (``jobs/*.py``): the CLI command ``command`` with the job's arguments (default
    ``sys.argv[1:]``), its summaries printed as JSON lines on stdout. Returns the exit status: 0, 2 on a
    configuration or input error (printed on stderr)."""
    from typer.exceptions import TyperException

    from skillray.cli.main import app

    global in_job
    in_job = True
    try:
        return int(app([*command, *(sys.argv[1:] if argv is None else argv)], standalone_mode=False) or 0)
    except TyperException as e:  # a bad option: said as the command line says it
        if not hasattr(e, "show"):  # Abort (Ctrl-C)
            raise
        e.show()
        return e.exit_code
    finally:
        in_job = False
