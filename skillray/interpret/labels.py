"""Structured labels of a direction, and the two prompts of ours: contrastive labelling and judging.

A direction has two poles: **A** = the examples with the highest projections, **B** = the
lowest. A :class:`Label` names the contrast: up to three axes with each pole's position on
them, and a short "A vs B" keyword pair.

Both prompts are plain functions of their inputs (tested), sent as chat messages; the
parsers accept what small models really answer (JSON inside prose or code fences, a cut-off
reply, a bare "x vs y" line).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

LABEL_SYSTEM = (
    "You are an expert analyst of text datasets. You compare two groups of examples and state precisely "
    "what distinguishes them."
)

LABEL_INSTRUCTIONS = (
    "The two groups of examples below sit at opposite ends of one direction in a language model's "
    "activation space. Find the properties that distinguish group A from group B (topic, task, format, "
    "style, difficulty, length, language...).\n\n"
    "{groups}\n\n"
    "Answer with one JSON object and nothing else, in this form:\n"
    '{{"axes": [{{"axis": "<property that varies>", "a": "<where group A sits>", "b": "<where group B sits>"}}], '
    '"label": "<2-4 words for A> vs <2-4 words for B>"}}\n'
    "Give 1 to 3 axes, the most distinctive first."
)

JUDGE_INSTRUCTIONS = (
    "Two groups of texts differ as follows.\n"
    "Group 1: {one}\n"
    "Group 2: {two}\n\n"
    "Text:\n<<<\n{text}\n>>>\n\n"
    "Which group does the text belong to? Answer with only the number 1 or 2."
)


@dataclass
class Axis:
    axis: str
    a: str
    b: str


@dataclass
class Label:
    """What distinguishes pole A (high projections) from pole B (low).

    Attributes
    ----------
    short : str
        "A vs B" keyword pair, e.g. "word problems vs bare equations".
    side_a, side_b : str
        The two halves of ``short``.
    axes : list of Axis
        Contrastive axes, most distinctive first (may be empty for unparsed replies).
    keywords_a, keywords_b : list of str
        Words that stand for each side (offline labels: the contrastive keywords; LLM labels: the
        words of each side's text); the offline judge uses them.
    source : str
        "llm", "offline", or "llm-unparsed" (the reply could not be parsed; the offline label
        stands in and ``parse_error`` says why).
    raw : str or None
        The endpoint's reply, verbatim.
    scores_a, scores_b : list of float
        Offline labels: each keyword's log-odds z-score (positive = more typical of its side).
    """

    short: str
    side_a: str
    side_b: str
    axes: list[Axis] = field(default_factory=list)
    keywords_a: list[str] = field(default_factory=list)
    keywords_b: list[str] = field(default_factory=list)
    source: str = "offline"
    raw: str | None = None
    parse_error: str | None = None
    scores_a: list[float] = field(default_factory=list)
    scores_b: list[float] = field(default_factory=list)

    def describe(self, side: str) -> str:
        """One line for the judge: the side's short name plus its position on every axis."""
        name = self.side_a if side == "a" else self.side_b
        parts = [f"{ax.axis}: {ax.a if side == 'a' else ax.b}" for ax in self.axes if ax.axis]
        return name + (f" ({'; '.join(parts)})" if parts else "")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Label":
        d = dict(d)
        d["axes"] = [Axis(**a) for a in d.get("axes", [])]
        return cls(**d)


def format_groups(a_texts: list[str], b_texts: list[str]) -> str:
    """The two example groups as prompt text: ``## Group A`` then numbered examples ``[A1] ...``."""
    out = []
    for name, texts in (("A", a_texts), ("B", b_texts)):
        out.append(f"## Group {name}")
        out += [f"[{name}{i + 1}] {t.strip()}" for i, t in enumerate(texts)]
        out.append("")
    return "\n".join(out).strip()


def label_messages(a_texts: list[str], b_texts: list[str]) -> list[dict]:
    """Chat messages asking for the contrastive axes and the "A vs B" pair of two example groups."""
    return [
        {"role": "system", "content": LABEL_SYSTEM},
        {"role": "user", "content": LABEL_INSTRUCTIONS.format(groups=format_groups(a_texts, b_texts))},
    ]


def judge_messages(label: Label, text: str, a_first: bool) -> list[dict]:
    """Ask which side of ``label`` ``text`` is on. ``a_first``: pole A is shown as group 1 (else as group 2)."""
    one, two = (label.describe("a"), label.describe("b")) if a_first else (label.describe("b"), label.describe("a"))
    return [{"role": "user", "content": JUDGE_INSTRUCTIONS.format(one=one, two=two, text=text.strip())}]


_VS = re.compile(r"\s+(?:vs\.?|versus)\s+", re.IGNORECASE)


def _split_vs(s: str) -> tuple[str, str] | None:
    parts = _VS.split(s.strip().strip("\"'`*"), maxsplit=1)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        return None
    return parts[0].strip(" \"'`*.,"), parts[1].strip(" \"'`*.,")


def _json_objects(text: str):
    """Every JSON object that decodes starting at some '{' of ``text`` (outermost first)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text[m.start():])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_label(text: str) -> Label:
    """Parse a labelling reply into a Label (``source="llm"``).

    Tries, in order: a JSON object with ``label`` (and ``axes``); a ``"label": "x vs y"`` field in
    cut-off JSON; any line of the form ``x vs y``. Raises ValueError naming what was missing.
    """
    for obj in _json_objects(text):
        short = obj.get("label")
        if not isinstance(short, str) or _split_vs(short) is None:
            continue
        axes = []
        for ax in obj.get("axes") or []:
            if isinstance(ax, dict) and isinstance(ax.get("axis"), str):
                axes.append(Axis(str(ax.get("axis", "")).strip(), str(ax.get("a", "")).strip(), str(ax.get("b", "")).strip()))
        a, b = _split_vs(short)
        return Label(short=f"{a} vs {b}", side_a=a, side_b=b, axes=axes[:3], source="llm", raw=text)
    m = re.search(r'"label"\s*:\s*"([^"]+)"', text)
    cands = [m.group(1)] if m else []
    cands += [line for line in text.splitlines() if _VS.search(line)]
    for c in cands:
        c = re.sub(r"^\s*(?:[-*#>]+\s*)?(?:\*\*)?(?:short\s+)?label(?:\*\*)?\s*[:=]\s*", "", c, flags=re.IGNORECASE)
        ab = _split_vs(c)
        if ab and len(ab[0]) <= 80 and len(ab[1]) <= 80:
            return Label(short=f"{ab[0]} vs {ab[1]}", side_a=ab[0], side_b=ab[1], source="llm", raw=text)
    raise ValueError(f"no 'A vs B' label in the reply ({len(text)} chars): {text[:120]!r}")


def parse_judgement(text: str) -> int | None:
    """The group (1 or 2) a judging reply names first; None when it names neither."""
    m = re.search(r"(?<![\d.])([12])(?!\d|\.\d)", text)
    return int(m.group(1)) if m else None
