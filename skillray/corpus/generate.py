"""The offline default corpus: procedurally generated reasoning tasks (reasoning-gym).

Each record is a two-turn chat (question, worked answer); the task name is the human skill
label that the model-native directions are compared against. Seeded and fully offline.
"""

from __future__ import annotations

from skillray.config import CorpusConfig
from skillray.corpus.records import CorpusError, Record


def _response(entry: dict) -> str:
    """The assistant turn: the task's own chain of thought where it has one, else the answer."""
    answer = str(entry["answer"])
    cot = (entry.get("metadata") or {}).get("answer_cot")
    if cot:
        return str(cot).strip()
    return f"The answer is {answer}."


def generate_corpus(cfg: CorpusConfig) -> list[Record]:
    """Generate ``size_per_task`` records for each task; ids are ``<task>-<index>``."""
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise RuntimeError("corpus.source=generate needs reasoning-gym: pip install reasoning-gym") from None
    unknown = [t for t in cfg.tasks if t not in DATASETS]
    if unknown:
        raise CorpusError(f"corpus.tasks: unknown reasoning-gym task(s) {unknown}; available: {sorted(DATASETS)}")
    records: list[Record] = []
    for t, task in enumerate(cfg.tasks):
        # A distinct, reproducible seed per task so adding a task does not change the others.
        ds = reasoning_gym.create_dataset(task, size=cfg.size_per_task, seed=cfg.seed * 1000 + t)
        for i in range(cfg.size_per_task):
            entry = ds[i]
            if entry.get("answer") is None:
                raise CorpusError(f"task {task!r} item {i} has no answer; pick another task")
            messages = [{"role": "user", "content": entry["question"]}, {"role": "assistant", "content": _response(entry)}]
            if cfg.system_prompt:
                messages.insert(0, {"role": "system", "content": cfg.system_prompt})
            records.append(
                Record(id=f"{task}-{i:05d}", messages=tuple(messages), answer=str(entry["answer"]), skill=task)
            )
    if cfg.limit is not None:
        records = records[: cfg.limit]
    return records
