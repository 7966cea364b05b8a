"""Corpora from local JSON/JSONL/Parquet files or Hugging Face hub datasets, through a field mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from skillray.config import CorpusConfig, FieldMap
from skillray.corpus.records import CorpusError, IdDigests, Record


def _utf8(raw: bytes, path: Path, lineno: int, offset: int) -> str:
    """``raw`` (line ``lineno`` of ``path``, or the whole file from line 1, starting at byte ``offset``) as UTF-8;
    a bad byte is a CorpusError naming the file, line and byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = lineno + before.count(b"\n")
        column = e.start - (before.rfind(b"\n") + 1)
        raise CorpusError(
            f"{path}:{line}: not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} of the file "
            f"(byte {column + 1} of the line); re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def iter_local_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a local JSONL / JSON / Parquet file as (location, row) pairs; the location names the
    line or row for error messages. Also used by eval for local benchmark files."""
    if not path.is_file():
        raise CorpusError(f"file not found: {path}; give a JSON, JSONL or Parquet file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            offset = 0  # of the line's first byte in the file
            for lineno, raw in enumerate(f, 1):
                line = _utf8(raw, path, lineno, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{lineno}", row
    elif suffix == ".json":
        try:
            data = json.loads(_utf8(path.read_bytes(), path, 1, 0))
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise CorpusError(f"{path}: expected a JSON list of records (or {{'key': [records]}})")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise CorpusError(f"{path}[{i}]: expected a JSON object, got {type(row).__name__}")
            yield f"{path}[{i}]", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}[row {i}]", row
    else:
        raise CorpusError(f"{path} has suffix {suffix!r}; expected .jsonl, .json or .parquet")


def _iter_hub(cfg: CorpusConfig) -> Iterator[tuple[str, dict]]:
    import datasets

    ds = datasets.load_dataset(cfg.path, cfg.hub_config, split=cfg.split, streaming=True)
    for i, row in enumerate(ds):
        yield f"{cfg.path}[{cfg.split}][{i}]", row


def _messages(value: Any, where: str, column: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise CorpusError(f"{where}: column {column!r} should hold a list of messages, got a plain string") from None
    if not isinstance(value, list):
        raise CorpusError(f"{where}: column {column!r} should hold a list of messages, got {type(value).__name__}")
    return [m for m in value]


def map_row(row: dict, fields: FieldMap, index: int, where: str, system_prompt: str | None = None) -> Record:
    """One source row -> a :class:`Record`, following the field mapping."""

    def get(attr: str, required: bool) -> Any:
        column = getattr(fields, attr)
        if column is None:
            return None
        if column not in row:
            if required:
                raise CorpusError(
                    f"{where}: mapped field {attr}={column!r} is missing; the record has columns {sorted(row)}"
                )
            return None
        return row[column]

    rid = get("id", required=True)
    rid = str(index) if rid is None else str(rid)
    where = f"{where} (id {rid!r})"
    text = messages = None
    if fields.text is not None:
        text = get("text", required=True)
        if not isinstance(text, str):
            raise CorpusError(f"{where}: field text={fields.text!r} must be a string, got {type(text).__name__}")
    elif fields.messages is not None:
        messages = _messages(get("messages", True), where, fields.messages)
    else:
        prompt = get("prompt", required=True)
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _messages(prompt, where, fields.prompt)
        if fields.response is not None:
            response = get("response", required=True)
            if not isinstance(response, str):
                raise CorpusError(f"{where}: field response={fields.response!r} must be a string")
            messages = messages + [{"role": "assistant", "content": response}]
    if messages is not None:
        messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m for m in messages]
        if system_prompt and messages and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
    answer = get("answer", required=True)
    skill = get("skill", required=True)
    metadata = None
    if fields.metadata:
        missing = [c for c in fields.metadata if c not in row]
        if missing:
            raise CorpusError(
                f"{where}: metadata column(s) {missing} (fields.metadata) missing; the record has columns {sorted(row)}"
            )
        metadata = {c: row[c] for c in fields.metadata}
    try:
        return Record(
            id=rid,
            text=text,
            messages=tuple(messages) if messages is not None else None,
            answer=None if answer is None else str(answer),
            skill=None if skill is None else str(skill),
            metadata=metadata,
        )
    except CorpusError as e:
        raise CorpusError(f"{where}: {e}") from None


def load_corpus(cfg: CorpusConfig) -> list[Record]:
    """Read a local or hub corpus into records (ids unique, content non-empty)."""
    return list(iter_corpus(cfg))


def iter_corpus(cfg: CorpusConfig) -> Iterator[Record]:
    """The records of :func:`load_corpus` one at a time (a local or hub corpus is never held whole: the
    corpus stage writes them as they come). A repeated id is refused after the last record, naming both
    rows; only an 8-byte digest per id is held meanwhile (:class:`~skillray.corpus.records.IdDigests`)."""
    if cfg.source == "generate":
        from skillray.corpus.generate import generate_corpus

        yield from generate_corpus(cfg)
        return

    def mapped() -> Iterator[tuple[str, Record]]:
        rows = iter_local_rows(Path(cfg.path)) if cfg.source == "local" else _iter_hub(cfg)
        for i, (where, row) in enumerate(rows):
            if cfg.limit is not None and i >= cfg.limit:
                break
            yield where, map_row(row, cfg.fields, i, where, cfg.system_prompt)

    seen = IdDigests()
    for _, rec in mapped():
        seen.add(rec.id)
        yield rec
    if not len(seen):
        raise CorpusError(f"corpus {cfg.path!r} has no records")
    repeated = seen.repeated()
    if repeated:  # a second pass over the source finds the two rows (a hub dataset is cached by then)
        hit = IdDigests.first_repeat(((rec.id, where) for where, rec in mapped()), repeated)
        if hit:
            raise CorpusError(f"{hit[3]}: duplicate id {hit[0]!r} (first seen as row {hit[1]})")
