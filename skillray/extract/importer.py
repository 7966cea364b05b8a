"""Your own activations: a matrix extracted elsewhere becomes ``<run>/extract``, a store that basis,
interpret and select read like one written by ``skillray extract``.

Inputs:

* the matrix, one row per record: ``.npy`` (memory-mapped, never with ``allow_pickle``),
  ``.safetensors`` (one tensor, or the one named by ``tensor``; any float dtype incl. bfloat16,
  read a slice at a time) or Parquet (an id column plus either one list column of the vectors or
  only numeric columns, one per feature); pickles are refused (loading one runs code), with a
  one-line recipe to convert them;
* the record id of each row: a file (``.json`` list, ``.npy`` of strings, or text with one id per
  line) or, for Parquet, a column (``id`` unless named);
* the layer layout: ``layers`` (block indices, in the order their slices appear in a row) and
  ``hidden`` (the width of one slice); ``layers`` alone splits the row evenly; neither = one block;
* optionally the token count of each row's sequence (``n_tokens``: a list, a file like the ids, or
  a Parquet column; a Parquet column named ``n_tokens`` is taken by default): interpret aligns every
  direction with length, and without counts it tokenizes the records with the run's model;
* the records: the run's finished corpus, or a records JSONL (skillray's record format), written
  as the run's corpus. Every row id must be a record id.

The store is written with the extract stage's layout (:mod:`skillray.extract.store`): row shards
in matrix order, each sidecar with its ids, the manifest with layers, slices, shard checksums and
the per-layer RMS. A shape or id mismatch is an error before anything is written; a non-finite
row names its id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from skillray.artifacts import StageManifest, file_sha256, finished_input, prepare_stage, read_manifest

FORMATS = (".npy", ".safetensors", ".parquet")
PICKLE_RECIPE = ("loading a pickle runs code, so skillray never does; convert it where it was made, e.g. "
                 "python -c \"import pickle, numpy as np; np.save('acts.npy', np.asarray(pickle.load(open('{path}', "
                 "'rb')), dtype=np.float32))\" (and save the ids as JSON)")  # fmt: skip


class ActivationImportError(ValueError):
    """A matrix, id list or layout that cannot become a store; the message names the file and the fix."""


# ----------------------------------------------------------------------------- matrix readers


class _Matrix:
    """Rows of a matrix file, read a block at a time: ``shape`` (N, D), ``rows(a, b)`` -> float32 (b - a, D)."""

    shape: tuple[int, int]

    def rows(self, a: int, b: int) -> np.ndarray:
        raise NotImplementedError

    def column_ids(self) -> list[str] | None:
        return None


class _Npy(_Matrix):
    def __init__(self, path: Path):
        try:
            self.x = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "pickle" in str(e).lower() or "Python objects" in str(e):  # an object array: only a pickle loads it
                raise ActivationImportError(f"{path}: an object array that needs allow_pickle; " + PICKLE_RECIPE.format(path=path)) from None
            raise ActivationImportError(f"{path}: not a readable .npy file ({e})") from None
        if self.x.ndim != 2:
            raise ActivationImportError(f"{path}: shape {self.x.shape}; expected a 2-D matrix (rows = records, columns = features)")
        if not np.issubdtype(self.x.dtype, np.number) or np.issubdtype(self.x.dtype, np.complexfloating):
            raise ActivationImportError(f"{path}: dtype {self.x.dtype}; expected real numbers")
        self.shape = tuple(int(v) for v in self.x.shape)

    def rows(self, a, b):
        return np.asarray(self.x[a:b], dtype=np.float32)


class _Safetensors(_Matrix):
    def __init__(self, path: Path, tensor: str | None):
        from safetensors import safe_open

        # framework "pt": numpy has no bfloat16; torch reads every dtype and converts a slice at a time
        self.f = safe_open(str(path), framework="pt")
        names = list(self.f.keys())
        if tensor is None:
            if len(names) != 1:
                raise ActivationImportError(f"{path}: holds {len(names)} tensors {names[:8]}; name one with --tensor")
            tensor = names[0]
        elif tensor not in names:
            raise ActivationImportError(f"{path}: no tensor {tensor!r}; it holds {names[:8]}")
        self.slice = self.f.get_slice(tensor)
        shape = self.slice.get_shape()
        if len(shape) != 2:
            raise ActivationImportError(f"{path}: tensor {tensor!r} has shape {tuple(shape)}; expected a 2-D matrix")
        self.shape = (int(shape[0]), int(shape[1]))
        self.where = f"{path} tensor {tensor!r}"

    def rows(self, a, b):
        import torch

        return self.slice[a:b].to(torch.float32).numpy()


class _Parquet(_Matrix):
    def __init__(self, path: Path, id_column: str | None, vector_column: str | None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        names = t.column_names
        self.id_column = id_column
        if id_column is not None and id_column not in names:
            raise ActivationImportError(f"{path}: no id column {id_column!r}; columns are {names[:12]}; name it with --ids")
        self.n_tokens = [int(v) for v in t.column("n_tokens").to_pylist()] if "n_tokens" in names else None
        rest = [c for c in names if c not in (id_column, "n_tokens")]
        if vector_column is None:
            lists = [c for c in rest if pa.types.is_list(t.schema.field(c).type) or pa.types.is_fixed_size_list(t.schema.field(c).type)
                     or pa.types.is_large_list(t.schema.field(c).type)]  # fmt: skip
            vector_column = lists[0] if len(lists) == 1 else None
            if len(lists) > 1:
                raise ActivationImportError(f"{path}: several list columns {lists}; name the vectors with --vector-column")
        if vector_column is not None:
            if vector_column not in names:
                raise ActivationImportError(f"{path}: no column {vector_column!r}; columns are {names[:12]}")
            col = t.column(vector_column).combine_chunks()
            lengths = np.asarray(col.value_lengths()) if hasattr(col, "value_lengths") else None
            if lengths is not None and len(set(lengths.tolist())) > 1:
                i = int(np.flatnonzero(lengths != lengths[0])[0])
                raise ActivationImportError(f"{path}: column {vector_column!r}: row {i} has {lengths[i]} values, row 0 has "
                                   f"{lengths[0]}; every vector must have the same length")  # fmt: skip
            flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            self.x = flat.reshape(len(col), -1) if len(col) else np.zeros((0, 0), np.float32)
        else:
            bad = [c for c in rest if not (pa.types.is_floating(t.schema.field(c).type) or pa.types.is_integer(t.schema.field(c).type))]
            if bad:
                raise ActivationImportError(f"{path}: column(s) {bad[:5]} are neither the ids nor numbers; give --vector-column "
                                   "(one list column of vectors) or keep only numeric feature columns")  # fmt: skip
            self.x = np.stack([t.column(c).to_numpy().astype(np.float32) for c in rest], axis=1)
        self.shape = tuple(int(v) for v in self.x.shape)
        self.ids = [str(v) for v in t.column(id_column).to_pylist()] if id_column is not None else None

    def rows(self, a, b):
        return self.x[a:b]

    def column_ids(self):
        return self.ids


def open_matrix(path: str | Path, tensor: str | None = None, id_column: str | None = None,
                vector_column: str | None = None) -> _Matrix:  # fmt: skip
    """The matrix of a ``.npy`` / ``.safetensors`` / Parquet file; a pickle is refused with a recipe."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle", ".pt", ".pth", ".joblib"):
        raise ActivationImportError(f"{path}: a pickle-based file; " + PICKLE_RECIPE.format(path=path))
    if not path.is_file():
        raise FileNotFoundError(f"activation matrix not found: {path}")
    if suffix == ".npy":
        return _Npy(path)
    if suffix == ".safetensors":
        return _Safetensors(path, tensor)
    if suffix in (".parquet", ".pq"):
        return _Parquet(path, id_column, vector_column)
    raise ActivationImportError(f"{path}: unknown matrix format {suffix!r}; use one of {FORMATS}")


def read_ids(path: str | Path) -> list[str]:
    """Record ids from a ``.json`` list, a ``.npy`` of strings, or a text file with one id per line."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        raise ActivationImportError(f"{path}: a pickle; " + PICKLE_RECIPE.format(path=path))
    if path.suffix.lower() == ".json":
        ids = json.loads(path.read_text())
        if not isinstance(ids, list):
            raise ActivationImportError(f"{path}: expected a JSON list of ids, got {type(ids).__name__}")
        return [str(i) for i in ids]
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError:
            raise ActivationImportError(f"{path}: an object array that needs allow_pickle; save the ids as a JSON list") from None
        return [str(i) for i in a.reshape(-1).tolist()]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def layer_layout(dim: int, layers: Sequence[int] | None, hidden: int | None, where: str) -> tuple[list[int], int]:
    """(layers, hidden) for a row of ``dim`` values; errors say what would fit."""
    if layers is None and hidden is None:
        return [0], dim
    if layers is None:
        if dim % hidden:
            raise ActivationImportError(f"{where}: {dim} columns are not a multiple of --hidden {hidden}; give the true width")
        raise ActivationImportError(f"{where}: --hidden {hidden} gives {dim // hidden} blocks; name them with --layers "
                           f"(e.g. {','.join(str(i) for i in range(dim // hidden))})")  # fmt: skip
    layers = [int(i) for i in layers]
    if len(set(layers)) != len(layers) or any(i < 0 for i in layers):
        raise ActivationImportError(f"{where}: --layers {layers}: give distinct block indices >= 0 (0 = output of the first block)")
    if hidden is None:
        if dim % len(layers):
            raise ActivationImportError(f"{where}: {dim} columns do not split into {len(layers)} equal layer slices; give --hidden")
        hidden = dim // len(layers)
    if hidden * len(layers) != dim:
        raise ActivationImportError(f"{where}: {len(layers)} layers x hidden {hidden} = {hidden * len(layers)} columns, but the "
                           f"matrix has {dim}")  # fmt: skip
    return layers, int(hidden)


def _records(run_dir: Path, records_path: str | Path | None):
    """(records, corpus fingerprint): from ``records_path`` (written as the run's corpus) or ``<run>/corpus``."""
    from skillray.corpus.records import read_records, write_records

    corpus_dir = run_dir / "corpus"
    if records_path is not None:
        records = read_records(records_path)
        fp = file_sha256(records_path)[:16]
        have = read_manifest(corpus_dir)
        if have is None or have.outputs.get("fingerprint") != fp:
            if have is not None and have.complete and have.config.get("source") != "import":
                raise ActivationImportError(f"{corpus_dir} holds another corpus; use another run dir, or drop --records to "
                                   "use that corpus")  # fmt: skip
            write_records(corpus_dir / "records.jsonl", records)
            m = StageManifest("corpus", config={"source": "import", "path": str(Path(records_path).resolve())}, inputs={})
            m.outputs = {"records": "records.jsonl", "fingerprint": fp}
            m.summary = {"records": len(records), "source": f"imported from {records_path}"}
            m.complete = True
            m.write(corpus_dir)
        return records, fp
    m = finished_input(corpus_dir.parent, "corpus", "give the records with --records FILE (skillray's records "
                       "JSONL) or run `skillray corpus` first")
    return read_records(corpus_dir / m.outputs["records"]), m.outputs["fingerprint"]


def import_activations(run_dir: str | Path, matrix: str | Path, ids: str | Path | Sequence[str] | None = None, *,
                       layers: Sequence[int] | None = None, hidden: int | None = None,
                       records: str | Path | None = None, tensor: str | None = None, vector_column: str | None = None,
                       model: str | None = None, n_tokens: str | Path | Sequence[int] | None = None,
                       shard_size: int = 1024, store_dtype: str = "float32", force: bool = False) -> StageManifest:  # fmt: skip
    """Write ``<run>/extract`` from a user's matrix; return the manifest (skipped when the same import exists).

    Parameters
    ----------
    matrix : path of an (N, D) ``.npy`` / ``.safetensors`` / Parquet file.
    ids : N record ids (a list), a file of them, or (Parquet) the id column's name (default ``id``).
    layers, hidden : the row's layout (see :func:`layer_layout`).
    records : a records JSONL to use as the run's corpus (default: the run's finished corpus).
    model : the model the activations came from (recorded; steering with the basis needs it).
    n_tokens : N token counts (a list or a file like ``ids``; Parquet: its ``n_tokens`` column by default).
    shard_size : rows per store shard; store_dtype : float32 or float16.
    """
    from skillray.extract.store import STORE_DTYPES, ActivationStore, layer_rms, row_sums, write_shard

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if store_dtype not in STORE_DTYPES:
        raise ActivationImportError(f"store dtype {store_dtype!r}: use one of {STORE_DTYPES}")
    if shard_size < 1:
        raise ActivationImportError(f"shard_size={shard_size}: use at least 1")
    matrix = Path(matrix)
    is_parquet = matrix.suffix.lower() in (".parquet", ".pq")
    id_column = None
    if is_parquet and (ids is None or (isinstance(ids, str) and not Path(ids).is_file())):
        id_column = ids or "id"
    src = open_matrix(matrix, tensor, id_column, vector_column)
    n, dim = src.shape
    where = str(matrix)
    if isinstance(ids, (str, Path)) and id_column is None:
        if not Path(ids).is_file():
            raise FileNotFoundError(f"ids file not found: {ids}")
        row_ids, ids_from = read_ids(ids), str(ids)
    elif id_column is not None:
        row_ids, ids_from = src.column_ids(), f"column {id_column!r}"
    elif ids is None:
        raise ActivationImportError(f"{where}: give the record id of every row (--ids FILE: a JSON list or one id per line)")
    else:
        row_ids, ids_from = [str(i) for i in ids], "argument"
    if len(row_ids) != n:
        raise ActivationImportError(f"{where} has {n} rows but {len(row_ids)} ids ({ids_from}); give one id per row, in row order")
    if n == 0 or dim == 0:
        raise ActivationImportError(f"{where}: shape ({n}, {dim}); nothing to import")
    seen: dict[str, int] = {}
    for i, rid in enumerate(row_ids):
        if rid in seen:
            raise ActivationImportError(f"{where}: id {rid!r} is on rows {seen[rid]} and {i}; every row needs its own record id")
        seen[rid] = i
    layers, hidden = layer_layout(dim, layers, hidden, where)
    if isinstance(n_tokens, (str, Path)):
        n_tokens = read_ids(n_tokens)
    elif n_tokens is None and is_parquet:
        n_tokens = src.n_tokens
    if n_tokens is not None:
        try:
            n_tokens = [int(v) for v in n_tokens]
        except ValueError as e:
            raise ActivationImportError(f"{where}: token counts must be integers ({e})") from None
        if len(n_tokens) != n:
            raise ActivationImportError(f"{where} has {n} rows but {len(n_tokens)} token counts; give one per row")
    recs, corpus_fp = _records(run_dir, records)
    known = {r.id for r in recs}
    missing = [rid for rid in row_ids if rid not in known]
    if missing:
        raise ActivationImportError(f"{where}: row id {missing[0]!r} (row {seen[missing[0]]}; {len(missing)} in all) is not a "
                           f"record id of the corpus ({len(recs)} records); the ids must match the records'")  # fmt: skip

    store_dir = run_dir / "extract"
    slices = [[j * hidden, (j + 1) * hidden] for j in range(len(layers))]
    want = StageManifest(
        "extract",
        config={
            "model": {"name_or_path": model} if model else None,
            "extract": {"pooling": "imported", "layers": layers, "shard_size": shard_size,
                        **({"store_dtype": store_dtype} if store_dtype != "float32" else {})},  # fmt: skip
            "import": {"matrix": matrix.name, "tensor": tensor, "vector_column": vector_column, "hidden": hidden},
        },
        inputs={"matrix": file_sha256(matrix)[:16], "ids": _fingerprint(row_ids), "corpus": corpus_fp,
                **({"n_tokens": _fingerprint(n_tokens)} if n_tokens is not None else {})},
    )
    if prepare_stage(store_dir, want, force) == "skip":
        return read_manifest(store_dir)
    want.write(store_dir)

    s1, s2 = np.zeros(dim), np.zeros(dim)
    shards = []
    for index, (a, b) in enumerate(_cuts(n, shard_size)):
        x = src.rows(a, b)  # (b - a, D) float32
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            i = a + int(np.flatnonzero(bad)[0])
            raise ActivationImportError(f"{where}: row {i} (id {row_ids[i]!r}; {int(bad.sum())} such rows in rows {a}..{b - 1}) "
                               "holds NaN or infinite values; fix or drop it (and its id) before importing")  # fmt: skip
        meta = {"index": index, "ids": row_ids[a:b], "source_rows": [a, b],
                **({"n_tokens": n_tokens[a:b]} if n_tokens is not None else {})}  # fmt: skip
        side = write_shard(store_dir, index, x, meta, dtype=store_dtype)
        a1, a2 = row_sums(x.astype(np.float32) if store_dtype == "float32" else x.astype(store_dtype).astype(np.float32))  # as stored
        s1 += a1
        s2 += a2
        shards.append({"index": index, "rows": b - a, "sha256": side["sha256"]})
    want.outputs = {"dim": dim, "hidden_size": hidden, "n_blocks": None, "layers": layers, "layer_slices": slices,
                    "shards": shards, "layer_scales": None, "store_dtype": store_dtype,
                    "layer_rms": layer_rms(s1, s2, n, slices),
                    "skip_prefix": {"mode": "imported", "tokens": 0, "text": ""}}  # fmt: skip
    want.summary = {
        "rows": n, "dim": dim, "layers": ",".join(map(str, layers)) + f" (hidden {hidden})",
        "source": f"{matrix} ({ids_from} ids)", "store_dtype": store_dtype, "shards": len(shards),
        "records_without_row": len(known) - n, "seconds": round(time.perf_counter() - t0, 2), "output": str(store_dir),
    }  # fmt: skip
    want.complete = True
    want.write(store_dir)
    ActivationStore(store_dir)  # opens: every shard's header and size as the manifest says
    return want


def _cuts(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(a + size, n)


def _fingerprint(ids: list[str]) -> str:
    from skillray.artifacts import fingerprint

    return fingerprint(ids)


__all__ = ["ActivationImportError", "import_activations", "layer_layout", "open_matrix", "read_ids"]
