"""The corpus record: ``{id, text | messages, answer?, skill?, metadata?}``, and its JSONL file.

``metadata`` holds per-record factors (e.g. ``style``, ``check``, ``length`` of a generated trace,
or a source column such as Nemotron's ``category``): flat ``{name: str | int | float | bool}``.
interpret measures how each direction aligns with every factor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

ROLES = ("system", "user", "assistant", "tool")


class CorpusError(ValueError):
    """Bad corpus input; the message names the record and the field."""


@dataclass(frozen=True)
class Record:
    id: str
    text: str | None = None
    messages: tuple[dict, ...] | None = None
    answer: str | None = None
    skill: str | None = None
    metadata: dict | None = None

    def __post_init__(self):
        where = f"record {self.id!r}"
        if self.metadata is not None:
            if not isinstance(self.metadata, dict):
                raise CorpusError(f"{where}: field `metadata` must be a mapping, got {type(self.metadata).__name__}")
            for k, v in self.metadata.items():
                if not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))):
                    raise CorpusError(
                        f"{where}: metadata[{k!r}] must be a string, number or bool (a flat factor), "
                        f"got {type(v).__name__}"
                    )
        if (self.text is None) == (self.messages is None):
            raise CorpusError(f"{where}: exactly one of `text` or `messages` must be set")
        if self.text is not None:
            if not isinstance(self.text, str):
                raise CorpusError(f"{where}: field `text` must be a string, got {type(self.text).__name__}")
            if not self.text.strip():
                raise CorpusError(f"{where}: field `text` is empty")
        else:
            if not self.messages:
                raise CorpusError(f"{where}: field `messages` is empty")
            for j, m in enumerate(self.messages):
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise CorpusError(f"{where}: messages[{j}] must be a {{role, content}} mapping, got {m!r:.80}")
                if m["role"] not in ROLES:
                    raise CorpusError(f"{where}: messages[{j}].role={m['role']!r} is not one of {ROLES}")
                if not isinstance(m["content"], str) or not m["content"].strip():
                    raise CorpusError(f"{where}: messages[{j}].content is empty or not a string")

    def to_json(self) -> dict:
        d = asdict(self)
        if d["messages"] is not None:
            d["messages"] = [dict(m) for m in d["messages"]]
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        msgs = d.get("messages")
        return cls(
            id=str(d["id"]),
            text=d.get("text"),
            messages=tuple({"role": m["role"], "content": m["content"]} for m in msgs) if msgs is not None else None,
            answer=None if d.get("answer") is None else str(d["answer"]),
            skill=None if d.get("skill") is None else str(d["skill"]),
            metadata=d.get("metadata"),
        )


class IdDigests:
    """Refuses a repeated id among millions of records without holding the ids: 8 bytes (a 64-bit BLAKE2b digest)
    per id, sorted once at the end. A repeated digest is then confirmed on the ids themselves (``first_repeat``
    over a second pass), so a digest collision (odds ~1e-7 at 5M ids) is never reported as a duplicate.

    Hand-written: a Python set of the ids costs ~100 bytes a record; no library offers a compact
    exact-membership set for strings."""

    def __init__(self) -> None:
        from array import array

        self._digests = array("Q")

    @staticmethod
    def digest(rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")

    def add(self, rid: str) -> None:
        self._digests.append(self.digest(rid))

    def __len__(self) -> int:
        return len(self._digests)

    def repeated(self) -> set[int]:
        """The digests seen more than once (usually none)."""
        d = np.sort(np.frombuffer(self._digests, dtype=np.uint64))
        return {int(x) for x in d[1:][d[1:] == d[:-1]]}

    @classmethod
    def first_repeat(cls, ids: Iterable[tuple[str, str]], digests: set[int]) -> tuple[str, int, int, str] | None:
        """For ``(id, where)`` pairs: (id, first index, second index, second where) of the first id seen twice
        whose digest is in ``digests``; None when the repeated digests were a collision of different ids."""
        first: dict[str, int] = {}
        for i, (rid, where) in enumerate(ids):
            if cls.digest(rid) in digests:
                if rid in first:
                    return rid, first[rid], i, where
                first[rid] = i
        return None


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records as JSONL atomically, as they come (a temp file renamed at the end); returns the count.
    Ids must be unique (checked without holding them: :class:`IdDigests`)."""
    from skillray.artifacts import atomic_open

    seen = IdDigests()
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            seen.add(r.id)
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        repeated = seen.repeated()
        if repeated:
            f.flush()
            with open(f.name, encoding="utf-8") as g:  # the temp file written so far
                hit = IdDigests.first_repeat(((json.loads(line)["id"], "") for line in g), repeated)
            if hit:
                raise CorpusError(f"record {hit[0]!r}: duplicate id (records {hit[1]} and {hit[2]})")
    return len(seen)


def read_records(path: str | Path) -> list[Record]:
    return list(iter_records(path))


def iter_records(path: str | Path) -> Iterator[Record]:
    from skillray.artifacts import verify_artifact

    verify_artifact(path)  # a corpus stage's records.jsonl: its size, and its checksum on first use
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield record_from_line(line, f"{path}:{lineno}")


def record_from_line(line: str | bytes, where: str) -> Record:
    """One JSONL line as a record; errors name ``where`` (file and line, or byte offset)."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: not valid JSON ({e.msg})") from None
    if "id" not in d:
        raise CorpusError(f"{where}: record has no `id` field")
    return Record.from_json(d)
