"""The corpus read and tokenized on Ray workers; the driver keeps a few numbers per record, never the texts.

``scan_corpus`` cuts ``records.jsonl`` into byte ranges on line boundaries and tokenizes each range in a
Ray task. What comes back per record is its id, where its line lies in the file (offset, size) and its token
counts; per range, the token prefix all its sequences share. That is what the driver needs to plan the
shards (longest first) and the shared prefix: the ids as one Arrow string array and the numbers as int32/int64
arrays, about 30 bytes a record plus the id's own bytes (5M records: ~200 MB).
An extraction actor later reads its shard's lines at those offsets (``read_records_at``) and tokenizes them
again (cheap next to the forward), so no token or text passes through the driver.

Hand-written rather than ``ray.data.read_json``: a Ray Data read hands rows over without their place in the
file, and a single JSONL file is one read task; the byte ranges give both the parallelism and the offsets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skillray.corpus.records import CorpusError, Record, record_from_line
from skillray.models import ResolvedModel, load_tokenizer

CHUNK_BYTES = 8 << 20  # per scan task: ~40k short records; a small corpus is one task


@dataclass
class Scan:
    """Per-record numbers of a tokenized corpus (the fields of :class:`~skillray.extract.tokenize.Tokenized`
    without the token ids) and the token prefix every sequence shares."""

    ids: pa.Array  # (N,) large_string, in file order
    offsets: np.ndarray  # (N,) int64: byte offset of the record's line in the file
    sizes: np.ndarray  # (N,) int32: bytes of the line
    lengths: np.ndarray  # (N,) int32: tokens after the cut at max_tokens
    full_lengths: np.ndarray  # (N,) int32
    response_start: np.ndarray  # (N,) int32
    truncated: np.ndarray  # (N,) bool
    prefix: np.ndarray  # tokens every sequence starts with (before the one-token floor of shared_prefix_length)

    @property
    def empty_response(self) -> np.ndarray:
        return self.response_start >= self.lengths

    def __len__(self) -> int:
        return len(self.offsets)

    def shared_prefix_length(self) -> int:
        """:func:`skillray.extract.tokenize.shared_prefix_length` of the whole corpus."""
        if len(self) < 2 or len(self.prefix) == 0:
            return 0
        return int(min(len(self.prefix), int(self.lengths.min()) - 1))


def chunk_ranges(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """[start, end) byte ranges covering the file, each ending just after a newline (or at the end)."""
    size = os.path.getsize(path)
    out, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            end = min(start + chunk_bytes, size)
            if end < size:
                f.seek(end)
                f.readline()  # to the end of the line the cut falls in
                end = min(f.tell(), size)
            out.append((start, end))
            start = end
    return out


def read_records_at(path: str | Path, offsets, sizes) -> list[Record]:
    """The records whose lines start at ``offsets`` (``sizes`` bytes each), in that order."""
    out = []
    with open(path, "rb") as f:
        for off, n in zip(offsets, sizes):
            f.seek(int(off))
            out.append(record_from_line(f.read(int(n)), f"{path} (byte {int(off)})"))
    return out


def _common_prefix(seqs: list[np.ndarray]) -> np.ndarray:
    prefix = np.asarray(seqs[0]) if seqs else np.zeros(0, np.int32)
    for s in seqs[1:]:
        n = min(len(prefix), len(s))
        differ = np.flatnonzero(prefix[:n] != np.asarray(s[:n]))
        prefix = prefix[: differ[0] if len(differ) else n]
        if len(prefix) == 0:
            break
    return np.asarray(prefix, dtype=np.int32)


def scan_chunk(path: str, start: int, end: int, model: ResolvedModel, max_tokens: int,
               trust_remote_code: bool = False) -> dict:  # fmt: skip
    """Tokenize the records whose lines lie in [start, end) of ``path``: their numbers and common prefix."""
    from skillray.extract.tokenize import tokenize_records

    offsets, sizes, records = [], [], []
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            line = f.readline()
            if not line:
                break
            if line.strip():
                offsets.append(pos)
                sizes.append(len(line))
                records.append(record_from_line(line, f"{path} (byte {pos})"))
            pos += len(line)
    tok = tokenize_records(records, load_tokenizer(model, trust_remote_code), max_tokens)
    return {"ids": pa.array(tok.ids, pa.large_string()), "offsets": np.asarray(offsets, np.int64),
            "sizes": np.asarray(sizes, np.int32), "lengths": tok.lengths.astype(np.int32),
            "full_lengths": tok.full_lengths.astype(np.int32), "response_start": tok.response_start.astype(np.int32),
            "truncated": tok.truncated, "prefix": _common_prefix(tok.input_ids)}  # fmt: skip


def first_duplicate(ids: pa.Array) -> str | None:
    """An id that occurs twice in ``ids`` (None if all are unique): sorted, neighbours compared."""
    if len(ids) < 2:
        return None
    s = ids.take(pc.sort_indices(ids))
    same = pc.equal(s.slice(1), s.slice(0, len(s) - 1))
    return s[int(pc.index(same, True).as_py()) + 1].as_py() if pc.any(same).as_py() else None


def scan_corpus(path: str | Path, model: ResolvedModel, max_tokens: int, trust_remote_code: bool = False,
                chunk_bytes: int = CHUNK_BYTES) -> Scan:  # fmt: skip
    """Tokenize ``path`` (a corpus stage's records.jsonl) in parallel Ray tasks, one per byte range."""
    import ray

    task = ray.remote(num_cpus=1)(scan_chunk)
    parts = ray.get([task.remote(str(path), a, b, model, max_tokens, trust_remote_code)
                     for a, b in chunk_ranges(path, chunk_bytes)])  # fmt: skip
    parts = [p for p in parts if len(p["ids"])]

    def cat(k: str, dt) -> np.ndarray:
        return np.concatenate([p[k] for p in parts]).astype(dt, copy=False) if parts else np.zeros(0, dt)

    ids = pa.concat_arrays([p["ids"] for p in parts]) if parts else pa.array([], pa.large_string())
    dup = first_duplicate(ids)
    if dup is not None:
        raise CorpusError(f"record {dup!r}: duplicate id in {path}")
    return Scan(ids=ids, offsets=cat("offsets", np.int64), sizes=cat("sizes", np.int32),
                lengths=cat("lengths", np.int32), full_lengths=cat("full_lengths", np.int32),
                response_start=cat("response_start", np.int32), truncated=cat("truncated", bool),
                prefix=_common_prefix([p["prefix"] for p in parts]))  # fmt: skip
