"""The training corpus, the probe's dev set and the eval's held-out set read disjoint reasoning-gym seeds, for the
default config, every config in configs/ and a grid of other seeds; an overlap is an error naming both."""

from pathlib import Path

import pytest

from skillray.config import AblateConfig, EvalBenchmark, EvalConfig, ProbeConfig, RunConfig, load_config
from skillray.eval.seeds import check_disjoint_seeds, overlaps, seed_uses

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def _with_accuracy(cfg: RunConfig) -> RunConfig:
    """The config with the accuracy probe on (its dev set is what must stay apart from the eval set)."""
    return cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"probes": ["likelihood", "accuracy"]})})


def _roles(uses):
    return {u.role.split(" ")[0] for u in uses}


def test_default_config_is_disjoint():
    cfg = _with_accuracy(RunConfig())  # generated corpus seed 0, procedural eval seed 0, dev seed 2047
    uses = check_disjoint_seeds(cfg)
    assert _roles(uses) == {"train", "eval", "dev"} and len(uses) == 3 * len(cfg.corpus.tasks)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_disjoint(path):
    check_disjoint_seeds(_with_accuracy(load_config(path)))


@pytest.mark.parametrize("corpus_seed", [0, 1, 7, 1999])
@pytest.mark.parametrize("eval_seed,dev_seed", [(0, 2047), (1, 2047), (5, 3), (2046, 2047), (2047, 0)])
def test_other_seeds_are_disjoint(corpus_seed, eval_seed, dev_seed):
    tasks = ["basic_arithmetic", "syllogism"]
    cfg = RunConfig(
        corpus={"source": "generate", "seed": corpus_seed, "tasks": tasks, "size_per_task": 500},
        eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=tasks, size_per_task=300, seed=eval_seed)]),
        probe=ProbeConfig(probes=["accuracy"], accuracy_seed=dev_seed, accuracy_tasks=tasks),
        ablate=AblateConfig(eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=tasks, seed=eval_seed)])),
    )  # fmt: skip
    uses = check_disjoint_seeds(cfg)
    assert _roles(uses) == {"train", "eval", "ablate.eval", "dev"} and len(uses) == 4 * len(tasks)
    # brute force on the ranges: no seed of one role in another's, task by task
    for a in uses:
        for b in uses:
            if a.task == b.task and a.role.split(" ")[0] in ("train", "dev") and a.role != b.role:
                assert not set(a.seeds[:1000]) & set(b.seeds[:1000]) and not (
                    a.seeds.start < b.seeds.stop and b.seeds.start < a.seeds.stop)  # fmt: skip


def test_dev_seed_equal_to_eval_seed_is_named():
    tasks = ["basic_arithmetic"]
    cfg = RunConfig(eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=tasks, seed=12)]),
                    probe=ProbeConfig(probes=["accuracy"], accuracy_seed=12, accuracy_tasks=tasks))  # fmt: skip
    with pytest.raises(ValueError, match=r"task 'basic_arithmetic': eval procedural \(seed 12\) seeds 2160066560\.\."
                                         r".* overlap dev \(probe.accuracy_seed 12\)"):
        check_disjoint_seeds(cfg)


def test_corpus_seed_reaching_the_heldout_range_is_named():
    # corpus seed 2147484 -> task 0 starts at 2147484000, past 2**31 = 2147483648: inside eval seed 0's stride
    cfg = RunConfig(corpus={"source": "generate", "seed": 2147484, "tasks": ["basic_arithmetic"]},
                    eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"])]))  # fmt: skip
    bad = overlaps(seed_uses(cfg))
    assert [(a.role, b.role.split(" ")[0]) for a, b in bad] == [("train", "eval")]
    with pytest.raises(ValueError, match=r"train seeds 2147484000..2147484039 overlap eval procedural \(seed 0\)"):
        check_disjoint_seeds(cfg)
