"""Benchmarks: math sets from the hub or local files, and the offline procedural held-out set.

Presets (hub id, config, split, problem / answer / id columns, answer format):

============== ============================ ==================== ===== ========== ============ ============ ======
name           hub id                       config               split problem    answer       id           format
============== ============================ ==================== ===== ========== ============ ============ ======
math500        HuggingFaceH4/MATH-500       -                    test  problem    answer       unique_id    plain
amc            AI-MO/aimo-validation-amc    -                    train problem    answer       id           plain
aime24         HuggingFaceH4/aime_2024      -                    train problem    answer       id           plain
aime25         math-ai/aime25               -                    test  problem    answer       id           plain
gsm8k          openai/gsm8k                 main                 test  question   answer       (row index)  gsm8k
minerva        math-ai/minervamath          -                    test  question   answer       (row index)  plain
olympiadbench  Hothan/OlympiadBench         OE_TO_maths_en_COMP  train question   final_answer id           list
============== ============================ ==================== ===== ========== ============ ============ ======

(olympiadbench: the text-only, open-ended, English maths competition subset.) Every field can
be overridden in the config, and ``path`` reads a local JSON / JSONL / Parquet copy instead of
the hub (the hub is only reached when no ``path`` is given).

Procedural held-out set (``name: procedural``): reasoning-gym tasks, offline. Its tasks and
their difficulty (``task_options``, reasoning-gym config keywords) are the run's generated
corpus' (``corpus.tasks`` / ``corpus.task_options``) unless the benchmark names its own, so the
eval asks the same kind of question the corpus trains on. Seed scheme:
the training corpus (:mod:`skillray.corpus.generate`) draws task ``t`` from dataset seed
``corpus_seed * 1000 + t``, and reasoning-gym draws item ``i`` of a dataset with seed ``s``
from ``Random(s + i)``, so the corpus uses generator seeds ``[corpus_seed * 1000 + t,
corpus_seed * 1000 + t + size_per_task)``, all below ``2**31`` for any corpus seed below
two million. The held-out set with eval seed ``e`` (0 <= e < 2048) uses dataset seed
``HELDOUT_BASE + e * HELDOUT_STRIDE = 2**31 + e * 2**20`` for every task, i.e. generator
seeds ``[2**31 + e * 2**20, 2**31 + (e + 1) * 2**20)``: disjoint from the corpus' and from
other eval seeds'. Seeds alone cannot rule out equal *texts* (a task with a small space of
questions repeats itself), so questions that also occur in the run's corpus (or earlier in the
held-out set) are skipped and the next item is taken; the count is reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from skillray.artifacts import fingerprint
from skillray.config import EVAL_PRESETS, CorpusConfig, EvalBenchmark

HELDOUT_BASE = 2**31
HELDOUT_STRIDE = 2**20


@dataclass(frozen=True)
class Preset:
    hub_id: str
    hub_config: str | None
    split: str
    problem_field: str
    answer_field: str
    id_field: str | None
    answer_format: Literal["plain", "gsm8k", "list", "boxed"]


PRESETS: dict[str, Preset] = {
    "math500": Preset("HuggingFaceH4/MATH-500", None, "test", "problem", "answer", "unique_id", "plain"),
    "amc": Preset("AI-MO/aimo-validation-amc", None, "train", "problem", "answer", "id", "plain"),
    "aime24": Preset("HuggingFaceH4/aime_2024", None, "train", "problem", "answer", "id", "plain"),
    "aime25": Preset("math-ai/aime25", None, "test", "problem", "answer", "id", "plain"),
    "gsm8k": Preset("openai/gsm8k", "main", "test", "question", "answer", None, "gsm8k"),
    "minerva": Preset("math-ai/minervamath", None, "test", "question", "answer", None, "plain"),
    "olympiadbench": Preset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", "question", "final_answer", "id", "list"),
}
assert set(PRESETS) | {"procedural"} == set(EVAL_PRESETS)


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message names the benchmark, the row and the field."""


@dataclass(frozen=True)
class Problem:
    """One problem: ``id`` unique within its benchmark; ``gold`` the reference final answer as a string.

    ``task`` and ``index`` locate a procedural problem in its reasoning-gym dataset (for its scorer).
    """

    id: str
    question: str
    gold: str
    task: str | None = None
    index: int | None = None


@dataclass
class Benchmark:
    """A loaded benchmark: its problems, how they are scored, and where they came from."""

    name: str
    kind: Literal["math", "procedural"]
    problems: list[Problem]
    source: dict
    dropped: int = 0  # procedural: items skipped as duplicates of the corpus / earlier items
    datasets: dict[str, Any] = field(default_factory=dict, repr=False)  # procedural: task -> reasoning-gym dataset

    @property
    def fingerprint(self) -> str:
        return fingerprint({"kind": self.kind, "problems": [[p.id, p.question, p.gold] for p in self.problems]})

    def score(self, problem: Problem, answer: str | None, pass_score: float = 1.0) -> tuple[float, bool]:
        """(score in [0, 1], correct) of an extracted answer to ``problem``."""
        from skillray.eval.scoring import math_equal, procedural_score

        if self.kind == "procedural":
            ds = self.datasets[problem.task]
            s = procedural_score(ds, ds[problem.index], answer)
            return s, s >= pass_score
        ok = math_equal(problem.gold, answer)
        return float(ok), ok


# ----------------------------------------------------------------------------- rows


def _iter_local(path: Path, where: str) -> Iterator[tuple[str, dict]]:
    from skillray.corpus.load import iter_local_rows
    from skillray.corpus.records import CorpusError

    try:
        yield from iter_local_rows(path)
    except CorpusError as e:
        raise BenchmarkError(f"{where}: {e}") from None


def _iter_hub(hub_id: str, config: str | None, split: str, where: str) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown id, gated, ...
        raise BenchmarkError(
            f"{where}: cannot load hub dataset {hub_id!r} (config {config!r}, split {split!r}): {type(e).__name__}: {e}. "
            "Without hub access, download it elsewhere and set `path:` to a local JSON/JSONL/Parquet copy."
        ) from None
    for i, row in enumerate(ds):
        yield f"{hub_id} ({split}) row {i}", row


def format_answer(value: Any, fmt: str, where: str) -> str:
    """A raw answer cell -> the reference answer string (see EvalBenchmark.answer_format)."""
    from skillray.eval.scoring import last_boxed

    if value is None:
        raise BenchmarkError(f"{where}: the answer is empty")
    if fmt == "list":
        if isinstance(value, str):
            return value.strip()
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not value:
            raise BenchmarkError(f"{where}: answer_format=list expects a non-empty list, got {value!r:.60}")
        return ", ".join(format_answer(v, "plain", where) for v in value)
    if isinstance(value, (list, tuple)):
        raise BenchmarkError(f"{where}: the answer is a list ({value!r:.60}); set answer_format: list")
    if fmt == "gsm8k":
        s = str(value)
        if "####" not in s:
            raise BenchmarkError(f"{where}: answer_format=gsm8k expects '#### <answer>' in {s[-60:]!r}")
        return s.rsplit("####", 1)[1].strip().replace(",", "")
    if fmt == "boxed":
        b = last_boxed(str(value))
        if b is None:
            raise BenchmarkError(f"{where}: answer_format=boxed found no \\boxed{{}} in {str(value)[-60:]!r}")
        return b.strip()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # AMC stores 142.0
    s = str(value).strip()
    if not s:
        raise BenchmarkError(f"{where}: the answer is empty")
    return s


def _load_table(spec: EvalBenchmark) -> Benchmark:
    preset = PRESETS.get(spec.name)
    where = f"eval benchmark {spec.name!r}"

    def pick(attr: str):
        v = getattr(spec, attr)
        return v if v is not None else (getattr(preset, attr) if preset else None)

    problem_field, answer_field = pick("problem_field"), pick("answer_field")
    id_field = pick("id_field")
    fmt = pick("answer_format") or "plain"
    if spec.path is not None:
        rows = _iter_local(Path(spec.path), where)
        source = {"path": str(spec.path)}
    else:
        hub_id, split = pick("hub_id"), pick("split") or "test"
        rows = _iter_hub(hub_id, pick("hub_config"), split, where)
        source = {"hub_id": hub_id, "hub_config": pick("hub_config"), "split": split}
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, (loc, row) in enumerate(rows):
        if spec.limit is not None and len(problems) >= spec.limit:
            break
        for col in (problem_field, answer_field) + ((id_field,) if id_field else ()):
            if col not in row:
                raise BenchmarkError(f"{where}: {loc}: column {col!r} is missing; the row has {sorted(row)}. "
                                     "Set problem_field / answer_field / id_field to the right columns")  # fmt: skip
        question = row[problem_field]
        if not isinstance(question, str) or not question.strip():
            raise BenchmarkError(f"{where}: {loc}: {problem_field!r} must be a non-empty string, got {question!r:.60}")
        pid = str(row[id_field]) if id_field else str(i)
        if pid in seen:
            raise BenchmarkError(f"{where}: {loc}: duplicate id {pid!r} (first at {seen[pid]}); set id_field to a unique column")
        seen[pid] = loc
        problems.append(Problem(pid, question, format_answer(row[answer_field], fmt, f"{where}: {loc}")))
    if not problems:
        raise BenchmarkError(f"{where}: no problems in {source}")
    source.update(problem_field=problem_field, answer_field=answer_field, id_field=id_field, answer_format=fmt)
    return Benchmark(spec.name, "math", problems, source)


# ----------------------------------------------------------------------------- procedural


def heldout_seed(eval_seed: int) -> int:
    """reasoning-gym dataset seed of the held-out set with eval seed ``eval_seed`` (same for every task)."""
    if not 0 <= eval_seed < 2048:
        raise ValueError(f"procedural seed {eval_seed}: expected 0 <= seed < 2048 (keeps generator seeds below 2**32)")
    return HELDOUT_BASE + eval_seed * HELDOUT_STRIDE


def corpus_seed_range(corpus: CorpusConfig, task: str) -> range | None:
    """Generator seeds (``Random(seed + i)``) the generated training corpus uses for ``task``; None if unused."""
    if corpus.source != "generate" or task not in corpus.tasks:
        return None
    start = corpus.seed * 1000 + corpus.tasks.index(task)
    return range(start, start + corpus.records_per_task(task))


def load_procedural(spec: EvalBenchmark, corpus: CorpusConfig | None = None,
                    corpus_questions: set[str] | frozenset = frozenset()) -> Benchmark:  # fmt: skip
    """The held-out procedural set: ``size_per_task`` items per task from seed :func:`heldout_seed`.

    ``corpus`` (the run's corpus config, when generated) is checked for generator-seed overlap;
    questions in ``corpus_questions`` (the run's corpus prompts) are skipped.
    """
    from reasoning_gym.factory import DATASETS

    from skillray.corpus.generate import create_task_dataset
    from skillray.corpus.records import CorpusError

    where = f"eval benchmark {spec.name!r}"
    generated = corpus if corpus is not None and corpus.source == "generate" else CorpusConfig()
    tasks = list(spec.tasks) if spec.tasks is not None else list(generated.tasks)
    options = spec.task_options if spec.task_options is not None else generated.task_options
    unknown = [t for t in tasks if t not in DATASETS]
    if unknown:
        raise BenchmarkError(f"{where}: unknown reasoning-gym task(s) {unknown}; available: {sorted(DATASETS)}")
    seed = heldout_seed(spec.seed)
    held = range(seed, seed + HELDOUT_STRIDE)
    problems: list[Problem] = []
    datasets: dict[str, Any] = {}
    seen = set(corpus_questions)
    dropped = 0
    max_tries = 4 * spec.size_per_task + 64
    for task in tasks:
        if corpus is not None:
            used = corpus_seed_range(corpus, task)
            if used is not None and used.start < held.stop and held.start < used.stop:
                raise BenchmarkError(
                    f"{where}: task {task!r}: the corpus' generator seeds {used.start}..{used.stop - 1} overlap the "
                    f"held-out seeds {held.start}..{held.stop - 1}; use another eval seed or a corpus seed below 2000000"
                )
        opt_where = f"{where}: task_options" if spec.task_options is not None else f"{where}: corpus.task_options"
        try:
            ds = create_task_dataset(task, max_tries, seed, options.get(task), opt_where)
        except CorpusError as e:
            raise BenchmarkError(str(e)) from None
        datasets[task] = ds
        got = 0
        for i in range(max_tries):
            if got == spec.size_per_task:
                break
            entry = ds[i]
            if entry.get("answer") is None:
                raise BenchmarkError(f"{where}: task {task!r} item {i} has no answer; pick another task")
            q = entry["question"]
            if q in seen:
                dropped += 1
                continue
            seen.add(q)
            problems.append(Problem(f"{task}-h{spec.seed}-{i:05d}", q, str(entry["answer"]), task=task, index=i))
            got += 1
        if got < spec.size_per_task:
            raise BenchmarkError(f"{where}: task {task!r} has only {got} distinct unseen questions in {max_tries} items; "
                                 "lower size_per_task or drop the task")  # fmt: skip
    if spec.limit is not None:
        problems = problems[: spec.limit]
    source = {"tasks": tasks, "task_options": {t: options[t] for t in tasks if t in options},
              "size_per_task": spec.size_per_task, "eval_seed": spec.seed, "dataset_seed": seed}  # fmt: skip
    return Benchmark(spec.name, "procedural", problems, source, dropped=dropped, datasets=datasets)


def check_benchmarks(specs: list[EvalBenchmark]) -> None:
    """Report every benchmark spec that cannot work, at once (before any loading)."""
    import re

    problems = []
    for b in specs:
        w = f"eval benchmark {b.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", b.name) or b.name.startswith("."):
            problems.append(f"{w}: the name is used as a folder name; use letters, digits, '_', '-' or '.'")
        if b.is_procedural:
            extra = [f for f in ("path", "hub_id", "problem_field", "answer_field") if getattr(b, f) is not None]
            if extra:
                problems.append(f"{w}: {extra} do not apply to the procedural set (generated offline)")
        elif b.name not in PRESETS:
            if b.path is None and b.hub_id is None:
                problems.append(f"{w}: not a preset ({', '.join(EVAL_PRESETS)}); give `path` (local file) or `hub_id`")
            if b.problem_field is None or b.answer_field is None:
                problems.append(f"{w}: not a preset; give problem_field and answer_field")
        if b.tasks is not None and b.task_options is not None and set(b.task_options) - set(b.tasks):
            problems.append(f"{w}: task_options names task(s) {sorted(set(b.task_options) - set(b.tasks))} that are "
                            f"not in its tasks {b.tasks}")  # fmt: skip
        if not b.is_procedural and (b.tasks is not None or b.task_options is not None):
            problems.append(f"{w}: `tasks` and `task_options` apply only to the procedural set")
    if problems:
        raise BenchmarkError("invalid eval benchmarks:\n  " + "\n  ".join(problems))


def load_benchmarks(specs: list[EvalBenchmark], corpus: CorpusConfig | None = None,
                    corpus_questions: set[str] | frozenset = frozenset()) -> list[Benchmark]:  # fmt: skip
    """Load every benchmark (hub datasets only when no local ``path`` is given)."""
    check_benchmarks(specs)
    return [load_procedural(b, corpus, corpus_questions) if b.is_procedural else _load_table(b) for b in specs]
