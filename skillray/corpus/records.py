"""The corpus record: ``{id, text | messages, answer?, skill?, metadata?}``, and its JSONL file.

``metadata`` holds per-record factors (e.g. ``style``, ``check``, ``length`` of a generated trace,
or a source column such as Nemotron's ``category``): flat ``{name: str | int | float | bool}``.
interpret measures how each direction aligns with every factor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

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


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records as JSONL atomically, as they come (a temp file renamed at the end); returns the count.
    Ids must be unique."""
    from skillray.artifacts import atomic_open

    seen: set[str] = set()
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            if r.id in seen:
                raise CorpusError(f"record {r.id!r}: duplicate id")
            seen.add(r.id)
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
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
