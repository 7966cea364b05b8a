"""Which reasoning-gym generator seeds each part of a run reads, and a check that they never overlap.

reasoning-gym draws item ``i`` of a dataset with seed ``s`` from ``Random(s + i)``, so a set of
problems is a range of generator seeds (:mod:`skillray.eval.benchmarks` has the scheme):

* training corpus (``corpus.source: generate``): task ``t`` reads ``[corpus.seed * 1000 + t, ... +
  size_per_task)``;
* eval held-out set (benchmark ``procedural`` with seed ``e``, in ``eval`` and ``ablate.eval``):
  ``[2**31 + e * 2**20, 2**31 + (e + 1) * 2**20)`` per task (the whole stride is reserved: duplicates
  skipped make it read further than ``size_per_task``);
* probe dev set (accuracy probe, ``probe.accuracy_seed``): the same scheme with the dev seed.

Disjoint seeds are necessary for "no test problem is used for a choice" (alpha, pair, budget are
chosen on the dev set; the eval set is only scored). They are not sufficient for distinct *texts*
(a task with few distinct questions repeats them): the loaders also skip questions seen in the
corpus. The likelihood probe's dev records are a sample of the corpus by design (it measures the
solutions' likelihood), so they are not part of this check.
"""

from __future__ import annotations

from dataclasses import dataclass

from skillray.config import CorpusConfig, RunConfig


@dataclass(frozen=True)
class SeedUse:
    """One part of a run reading generator seeds ``seeds`` of reasoning-gym task ``task``."""

    role: str  # "train" (the corpus), "eval <benchmark>" or "dev" (the accuracy probe)
    task: str
    seeds: range


def seed_uses(cfg: RunConfig) -> list[SeedUse]:
    """Every generator-seed range the run's corpus, procedural eval sets and accuracy-probe dev set read."""
    from skillray.eval.benchmarks import HELDOUT_STRIDE, corpus_seed_range, heldout_seed

    uses = []
    if cfg.corpus.source == "generate":
        uses += [SeedUse("train", t, corpus_seed_range(cfg.corpus, t)) for t in cfg.corpus.tasks]
    # a procedural set without `tasks` uses the generated corpus' tasks (the default list otherwise)
    corpus_tasks = cfg.corpus.tasks if cfg.corpus.source == "generate" else CorpusConfig().tasks
    evals = [("eval", cfg.eval)] + ([("ablate.eval", cfg.ablate.eval)] if cfg.ablate and cfg.ablate.eval else [])
    for where, ev in evals:
        for b in ev.benchmarks:
            if b.is_procedural:
                start = heldout_seed(b.seed)
                for t in b.tasks if b.tasks is not None else corpus_tasks:
                    uses.append(SeedUse(f"{where} {b.name} (seed {b.seed})", t, range(start, start + HELDOUT_STRIDE)))
    if cfg.replicate is not None:
        d = cfg.replicate.dev
        start = heldout_seed(d.seed)
        for t in d.tasks if d.tasks is not None else corpus_tasks:
            uses.append(SeedUse(f"dev (replicate.dev seed {d.seed})", t, range(start, start + HELDOUT_STRIDE)))
    if "accuracy" in cfg.probe.probes:
        start = heldout_seed(cfg.probe.accuracy_seed)
        for t in cfg.probe.accuracy_tasks if cfg.probe.accuracy_tasks is not None else CorpusConfig().tasks:
            uses.append(SeedUse(f"dev (probe.accuracy_seed {cfg.probe.accuracy_seed})", t,
                                range(start, start + HELDOUT_STRIDE)))  # fmt: skip
    return uses


def overlaps(uses: list[SeedUse]) -> list[tuple[SeedUse, SeedUse]]:
    """Pairs of uses of different roles that read a common generator seed of the same task.

    Two procedural benchmarks with the same seed (``eval`` and ``ablate.eval``) are one set scored twice,
    not an overlap.
    """
    out = []
    for i, a in enumerate(uses):
        for b in uses[i + 1 :]:
            same_set = a.role != "train" and b.role != "train" and a.seeds == b.seeds and not (
                a.role.startswith("dev") or b.role.startswith("dev"))  # fmt: skip
            if a.task == b.task and a.role != b.role and not same_set:
                if a.seeds.start < b.seeds.stop and b.seeds.start < a.seeds.stop:
                    out.append((a, b))
    return out


def check_disjoint_seeds(cfg: RunConfig) -> list[SeedUse]:
    """The run's seed uses; ValueError naming every overlap (task, both roles, both ranges) and the fix."""
    uses = seed_uses(cfg)
    bad = overlaps(uses)
    if bad:
        lines = [f"task {a.task!r}: {a.role} seeds {a.seeds.start}..{a.seeds.stop - 1} overlap {b.role} seeds "
                 f"{b.seeds.start}..{b.seeds.stop - 1}" for a, b in bad]  # fmt: skip
        raise ValueError("the run reuses problems across training, dev and eval:\n  " + "\n  ".join(lines)
                         + "\nuse different procedural seeds for eval and probe.accuracy_seed (and a corpus seed "
                         "below 2000000)")  # fmt: skip
    return uses


__all__ = ["SeedUse", "check_disjoint_seeds", "overlaps", "seed_uses"]
