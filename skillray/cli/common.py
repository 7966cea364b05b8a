"""Shared CLI pieces: config loading with overrides, progress bars and stage summaries."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from skillray.config import RunConfig, config_from_mapping, load_config

console = Console(stderr=True)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def help_of(model, field: str) -> str:
    """Option help text = the pydantic field description (one source of truth)."""
    return model.model_fields[field].description or ""


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


@contextlib.contextmanager
def rows_progress(description: str, every_s: float = PLAIN_PROGRESS_EVERY_S) -> Iterator:
    """A rich progress bar driven by a (done, total) callback. Without a TTY (job logs) plain lines instead: the
    first, then one when the count moved and ``every_s`` passed, and the last; callers may call as often as
    they like (the SFT poll calls every 2 s)."""
    import time

    disable = not sys.stderr.isatty() and not os.environ.get("SKILLRAY_PROGRESS")
    printed: dict = {"at": None, "done": None}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    ) as prog:
        task = prog.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)
            if not disable:
                return
            now, at = time.monotonic(), printed["at"]
            moved = done != printed["done"]
            if at is None or (moved and (done >= total or now - at >= every_s)):
                console.print(f"{description}: {done}/{total}")
                printed.update(at=now, done=done)

        yield update


def print_summary(stage: str, summary: dict, skipped: bool = False) -> None:
    t = Table(title=f"{stage} {'(skipped: finished output matches)' if skipped else 'summary'}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in summary.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        t.add_row(k, str(v))
    Console().print(t)
