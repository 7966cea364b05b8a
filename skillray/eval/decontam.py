"""Decontamination: which training records share text with an eval benchmark's problems.

The check is the n-gram overlap of GPT-3's and NeMo Curator's task decontamination: texts are
normalised to words, every run of ``n`` consecutive words (13 by default) of an eval problem is
looked up in every training record, and a record that contains one shares text with that problem.

* **Normalisation** (:func:`normalize`): Unicode NFKC, lowercase, words are runs of letters and
  digits; punctuation is dropped, but the arithmetic signs ``+ - * / ^ = < > %`` are kept as words
  of their own, so "What is 7 * 8?" and "What is 7 + 8?" stay different questions.
* **Short problems.** A problem of fewer than ``n`` words has no n-gram. It overlaps a record when
  its whole normalised word sequence equals the normalised text of one of the record's user turns
  (an exact match of the question): procedural tasks have small question spaces (products of
  one-digit numbers), so training and eval can hold the same short question. Any problem whose
  normalised text equals a user turn is listed as an ``exact`` overlap, whatever its length.
* **Common n-grams** (NeMo Curator's ``max_matches``): an n-gram of an eval problem found in more
  than ``max_matches`` training records is a template phrase ("Calculate the following ... and give
  the answer as"), not a leak, and is ignored; their number is reported. Exact matches are never
  ignored.

Why plain Python sets of word-joined n-gram strings and not scikit-learn's ``CountVectorizer`` /
``HashingVectorizer``: the task is set membership, not counts. The eval side is small (hundreds to a
few thousand problems), so it becomes one set; each training record's n-grams are looked up in it
and thrown away, so memory stays O(eval n-grams). A ``CountVectorizer`` would build a vocabulary
of every training n-gram, a ``HashingVectorizer`` adds collisions and a sparse matrix that is never
needed, and both tokenise with a pattern that drops one-character words (the digits that make two
arithmetic questions different). Strings are exact: no collision can make a false overlap.

Entry points: :func:`find_overlaps` (training records vs benchmarks, the select stage's check),
:func:`drop_overlapping` (any items vs a set of texts, e.g. probe dev problems vs the eval set).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence, TypeVar

DEFAULT_N = 13
DEFAULT_MAX_MATCHES = 10
_WORD = re.compile(r"[^\W_]+|[+\-*/^=<>%]")

T = TypeVar("T")


def normalize(text: str) -> list[str]:
    """``text`` -> its words: NFKC, lowercase, letter/digit runs plus the arithmetic signs ``+-*/^=<>%``."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(words: Sequence[str], n: int) -> set[str]:
    """The distinct runs of ``n`` consecutive words, each joined by one space (empty when fewer words)."""
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """One (training record, eval problem) pair sharing text: ``kind`` exact (the whole normalised question
    equals a user turn of the record) or ngram; ``match`` the shared normalised text (the first n-gram)."""

    record_id: str
    benchmark: str
    problem_id: str
    kind: Literal["exact", "ngram"]
    match: str


@dataclass
class OverlapReport:
    """Result of :func:`find_overlaps`.

    Attributes: ``n``; ``records`` training records checked; ``problems`` {benchmark: problems checked};
    ``overlaps`` every (record, problem) pair; ``common_ngrams`` eval n-grams ignored as too common
    (in more than ``max_matches`` records); ``short_problems`` {benchmark: problems under n words (exact match only)};
    ``not_checked`` {benchmark: why it could not be loaded}.
    """

    n: int
    max_matches: int | None
    records: int
    problems: dict[str, int]
    overlaps: list[Overlap]
    common_ngrams: int = 0
    short_problems: dict[str, int] = field(default_factory=dict)
    not_checked: dict[str, str] = field(default_factory=dict)

    def record_ids(self) -> set[str]:
        """Ids of the training records that overlap any problem."""
        return {o.record_id for o in self.overlaps}

    def summary(self, listed: int = 10) -> dict:
        """Counts per benchmark (records, problems, exact / ngram pairs) and the first ``listed`` pairs."""
        per = {}
        for b, n_problems in self.problems.items():
            mine = [o for o in self.overlaps if o.benchmark == b]
            per[b] = {"problems": n_problems, "short_problems": self.short_problems.get(b, 0),
                      "overlapping_records": len({o.record_id for o in mine}),
                      "contaminated_problems": len({o.problem_id for o in mine}),
                      "exact_pairs": sum(o.kind == "exact" for o in mine),
                      "ngram_pairs": sum(o.kind == "ngram" for o in mine)}  # fmt: skip
        return {
            "n": self.n, "max_matches": self.max_matches, "records_checked": self.records,
            "overlapping_records": len(self.record_ids()), "common_ngrams_ignored": self.common_ngrams,
            "benchmarks": per, **({"not_checked": dict(self.not_checked)} if self.not_checked else {}),
            "examples": [f"{o.record_id} ~ {o.benchmark}/{o.problem_id} ({o.kind}: {o.match[:80]!r})"
                         for o in self.overlaps[:listed]],
        }  # fmt: skip


class EvalIndex:
    """The n-grams and whole normalised questions of eval problems, for lookups.

    problems : {benchmark: [(problem id, question text), ...]}
    """

    def __init__(self, problems: dict[str, Sequence[tuple[str, str]]], n: int = DEFAULT_N):
        if n < 1:
            raise ValueError(f"decontamination n={n}: use n >= 1 (13 is the GPT-3 / NeMo Curator convention)")
        self.n = n
        self.grams: dict[str, list[tuple[str, str]]] = defaultdict(list)  # n-gram -> [(benchmark, problem id)]
        self.whole: dict[str, list[tuple[str, str]]] = defaultdict(list)  # normalised question -> same
        self.problems = {b: len(ps) for b, ps in problems.items()}
        self.short = {b: 0 for b in problems}
        for b, ps in problems.items():
            for pid, text in ps:
                words = normalize(text)
                if not words:
                    continue
                self.whole[" ".join(words)].append((b, pid))
                if len(words) < n:
                    self.short[b] += 1
                for g in ngrams(words, n):
                    self.grams[g].append((b, pid))

    def shared_ngrams(self, text: str) -> set[str]:
        """The eval n-grams that occur in ``text``."""
        return {g for g in ngrams(normalize(text), self.n) if g in self.grams}

    def exact(self, text: str) -> list[tuple[str, str]]:
        """(benchmark, problem id) of every problem whose normalised question equals ``text`` normalised."""
        return self.whole.get(" ".join(normalize(text)), [])


def record_texts(record) -> tuple[str, list[str]]:
    """(the whole text of a corpus record, its user turns) as the check sees them: every message's
    content joined by newlines (a trace can quote the problem too), or the plain text."""
    if record.messages is None:
        return record.text or "", [record.text or ""]
    contents = [m["content"] for m in record.messages]
    return "\n".join(contents), [m["content"] for m in record.messages if m["role"] == "user"]


def find_overlaps(records: Iterable, problems: dict[str, Sequence[tuple[str, str]]], n: int = DEFAULT_N,
                  max_matches: int | None = DEFAULT_MAX_MATCHES) -> OverlapReport:  # fmt: skip
    """Every (training record, eval problem) pair that shares an n-gram or the whole question.

    records : corpus :class:`~skillray.corpus.records.Record` objects (or anything with ``id`` and
        ``messages`` / ``text``), e.g. a selection's records.
    problems : {benchmark: [(problem id, question), ...]} (see :func:`benchmark_problems`).
    max_matches : eval n-grams found in more than this many records are ignored as template phrases
        (None = never ignore).

    Returns an :class:`OverlapReport`; pairs in record order, then problem order.
    """
    index = EvalIndex(problems, n)
    hits: dict[str, list[str]] = defaultdict(list)  # eval n-gram -> ids of the records that contain it
    exact: list[tuple[str, list[tuple[str, str]]]] = []
    order: list[str] = []
    for r in records:
        order.append(r.id)
        whole, users = record_texts(r)
        for g in index.shared_ngrams(whole):
            hits[g].append(r.id)
        found = [bp for u in users for bp in index.exact(u)]
        if found:
            exact.append((r.id, found))
    common = {g for g, ids in hits.items() if max_matches is not None and len(ids) > max_matches}
    question = {(b, pid): q for b, ps in problems.items() for pid, q in ps}
    pairs: dict[tuple[str, str, str], Overlap] = {}
    for rid, found in exact:
        for b, pid in found:
            pairs.setdefault((rid, b, pid), Overlap(rid, b, pid, "exact", " ".join(normalize(question[(b, pid)]))))
    for g in sorted(set(hits) - common):
        for rid in hits[g]:
            for b, pid in index.grams[g]:
                pairs.setdefault((rid, b, pid), Overlap(rid, b, pid, "ngram", g))
    pos = {rid: i for i, rid in enumerate(order)}
    problem_pos = {(b, pid): i for b, ps in problems.items() for i, (pid, _) in enumerate(ps)}
    listed = sorted(pairs.values(), key=lambda o: (pos[o.record_id], o.benchmark, problem_pos[(o.benchmark, o.problem_id)]))
    return OverlapReport(n, max_matches, len(order), dict(index.problems), listed, len(common), dict(index.short))


def benchmark_problems(benchmarks: Sequence) -> dict[str, list[tuple[str, str]]]:
    """{benchmark name: [(problem id, question), ...]} of loaded :class:`~skillray.eval.benchmarks.Benchmark` s."""
    return {b.name: [(p.id, p.question) for p in b.problems] for b in benchmarks}


def load_eval_problems(specs: Sequence, corpus_cfg=None, records: Sequence = (),
                       strict: bool = False) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:  # fmt: skip
    """Load eval benchmark specs (``eval.benchmarks``) the way the eval stage does, one at a time.

    The procedural set is loaded with the run's corpus config and its questions (as the eval stage
    loads it, so it is the set the eval will ask). Returns ({name: [(id, question)]}, {name: why not
    loaded}); with ``strict`` a benchmark that cannot be loaded (a hub set offline) raises instead.
    """
    from skillray.eval.benchmarks import BenchmarkError, load_benchmarks

    questions = {u for r in records for u in record_texts(r)[1][:1]}
    loaded, failed = {}, {}
    for spec in specs:
        try:
            (bench,) = load_benchmarks([spec], corpus_cfg, questions if spec.name == "procedural" else set())
        except BenchmarkError as e:
            if strict:
                raise BenchmarkError(f"decontamination: {e}") from None
            failed[spec.name] = str(e).splitlines()[0][:300]
            continue
        loaded.update(benchmark_problems([bench]))
    return loaded, failed


def drop_overlapping(items: Sequence[T], against: Iterable[str], n: int = DEFAULT_N,
                     text: Callable[[T], str] = lambda p: p.question) -> tuple[list[T], list[T]]:  # fmt: skip
    """Split ``items`` into (kept, dropped): dropped share an n-gram with a text of ``against``, or (an item
    under ``n`` words, or any item) equal one of them after normalisation.

    For the probe: ``drop_overlapping(dev.problems, [p.question for b in eval_benchmarks for p in b.problems])``
    keeps the dev problems that do not appear in the eval set. No common-n-gram rule here: both sides are
    problems, a shared 13-gram is a shared problem.
    """
    index = EvalIndex({"against": [(str(i), t) for i, t in enumerate(against)]}, n)
    kept, dropped = [], []
    for it in items:
        s = text(it)
        (dropped if index.exact(s) or index.shared_ngrams(s) else kept).append(it)
    return kept, dropped


def training_overlaps(select_dir, n_lines: int | None = None) -> dict:
    """The overlaps a training run on ``<select_dir>/train.jsonl`` (its first ``n_lines`` lines) inherits,
    from the selection's ``decontam.json`` and ``ids.json``: for the sft summary.

    Returns {"mode", "overlapping_records", "examples"} (counts within the lines trained on), or
    {"mode": "not checked ..."} when the data is not a checked selection.
    """
    from pathlib import Path

    from skillray.artifacts import read_json

    d = Path(select_dir)
    if not (d / "decontam.json").is_file() or not (d / "ids.json").is_file():
        return {"mode": "not checked (not a selection with decontam.json; see select.decontaminate)"}
    doc, ids = read_json(d / "decontam.json"), read_json(d / "ids.json")
    used = set(ids[:n_lines] if n_lines is not None else ids)
    mine = [o for o in doc["overlaps"] if o["record_id"] in used]
    return {"mode": doc["mode"], "n": doc["n"], "overlapping_records": len({o["record_id"] for o in mine}),
            "contaminated_problems": len({(o["benchmark"], o["problem_id"]) for o in mine}),
            **({"not_checked": sorted(doc["not_checked"])} if doc.get("not_checked") else {}),
            "examples": [f"{o['record_id']} ~ {o['benchmark']}/{o['problem_id']} ({o['kind']})" for o in mine[:5]]}  # fmt: skip


__all__ = ["DEFAULT_N", "DEFAULT_MAX_MATCHES", "EvalIndex", "Overlap", "OverlapReport", "benchmark_problems",
           "drop_overlapping", "find_overlaps", "load_eval_problems", "normalize", "ngrams", "record_texts",
           "training_overlaps"]  # fmt: skip
