"""`skillray import-activations`: a matrix extracted elsewhere (.npy, .safetensors, Parquet) + record ids -> <run>/extract."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import (USER_ERRORS, ConfigOpt, RunDirOpt, SetOpt, csv_list, fail, help_of, load_run_config,
                                 print_summary)
from skillray.config import ExtractConfig


def register(app) -> None:
    """Add the `import-activations` command (not a pipeline stage: it replaces `extract` for a run)."""

    @app.command("import-activations")
    def import_activations_cmd(
        matrix: Path = typer.Argument(..., help="The (rows, features) matrix: .npy, .safetensors or .parquet. "
                                      "Pickles (.pkl, object .npy) are refused: loading one runs code."),
        ids: Optional[str] = typer.Option(None, help="Record id of every row, in row order: a file (.json list, "
                                          ".npy of strings, or one id per line) or, for Parquet, the id column "
                                          "(default 'id')."),
        layers: Optional[str] = typer.Option(None, help="Block indices of the row's layer slices, in row order, "
                                             "comma-separated, e.g. 4,8,12 (default: the whole row is one block)."),
        hidden: Optional[int] = typer.Option(None, help="Width of one layer slice (default: columns / number of layers)."),
        records: Optional[Path] = typer.Option(None, help="Records JSONL (skillray's record format) with the rows' ids, "
                                               "written as the run's corpus (default: the run's finished corpus)."),
        tensor: Optional[str] = typer.Option(None, help=".safetensors: the tensor to read (default: the only one)."),
        vector_column: Optional[str] = typer.Option(None, help="Parquet: the list column holding the vectors (default: "
                                                    "the only list column, else every numeric column but the ids)."),
        model: Optional[str] = typer.Option(None, help="The model the activations came from (recorded for steering)."),
        n_tokens: Optional[str] = typer.Option(None, help="Token count of each row's sequence, a file like --ids "
                                               "(Parquet: the n_tokens column by default); interpret aligns the "
                                               "directions with length (without it, it tokenizes the records)."),
        store_dtype: Optional[str] = typer.Option(None, help=help_of(ExtractConfig, "store_dtype")),
        shard_size: int = typer.Option(1024, help="Rows per store shard."),
        config: Optional[Path] = ConfigOpt,
        run_dir: Optional[Path] = RunDirOpt,
        sets: Optional[list[str]] = SetOpt,
        force: bool = typer.Option(False, "--force", help="Discard an existing <run>/extract made otherwise."),
    ) -> None:
        """Import your own activations as <run>/extract, the store that basis, interpret and select read.

        Example: skillray import-activations gradmat.npy --ids ids.json --layers 4,8,12 --hidden 576
        --records records.jsonl -o runs/mine; then skillray basis -o runs/mine (leave extract out of `stages`).
        """
        from skillray.extract.importer import import_activations

        try:
            cfg = load_run_config(config, run_dir, sets)
            started = time.time()
            m = import_activations(cfg.run_dir, matrix, ids, layers=csv_list(layers, int, "--layers"), hidden=hidden,
                                   records=records, tensor=tensor, vector_column=vector_column, model=model, n_tokens=n_tokens,
                                   shard_size=shard_size, store_dtype=store_dtype or cfg.extract.store_dtype,
                                   force=force)  # fmt: skip
            print_summary("import-activations", m.summary, skipped=m.created < started)
        except USER_ERRORS as e:
            fail(str(e))
