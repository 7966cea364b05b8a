"""Decontamination: planted overlaps between training records and eval problems are found, counted, dropped."""

import json

import pytest

from skillray.config import CorpusConfig, EvalBenchmark, SelectConfig
from skillray.corpus.records import Record
from skillray.eval.decontam import drop_overlapping, find_overlaps, load_eval_problems, normalize

LONG = ("Let x be the smallest positive integer such that the sum of its digits equals twenty three and x is "
        "divisible by eleven. Find the remainder when x is divided by one thousand.")  # fmt: skip
OTHER = ("A regular hexagon is inscribed in a circle of radius seven. Compute the area of the region inside the "
         "circle but outside the hexagon, in simplest radical form.")  # fmt: skip
SHORT = "What is 7 * 8?"
TEMPLATE = "Solve the following problem and give only the final answer as a number with no units at all please"


def _chat(rid, user, answer="ok"):
    return Record(id=rid, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


def _problems():
    return {"bench": [("p-long", LONG), ("p-other", OTHER), ("p-short", SHORT)],
            "tmpl": [(f"t{i}", f"{TEMPLATE}: {i} + {i}") for i in range(3)]}  # fmt: skip


def test_normalize_keeps_arithmetic_signs_and_drops_punctuation():
    assert normalize("What is 7 * 8?") == ["what", "is", "7", "*", "8"]
    assert normalize("What is 7 + 8?") != normalize("What is 7 * 8?")
    assert normalize("  WHAT, is 7*8 ?! ") == normalize("What is 7 * 8?")
    assert normalize("Ｆｕｌｌ-width ９") == ["full", "-", "width", "9"]  # NFKC folds full-width forms


def test_planted_overlaps_found_and_nothing_else():
    words = LONG.split()
    records = [
        # the long problem's middle 14 words, re-cased and re-punctuated, inside a trace: an n-gram overlap
        _chat("r-ngram", "Solve this.", "We recall: " + " ".join(words[5:19]).upper().replace(" ", " ,  ") + " ..."),
        _chat("r-exact", "what is 7*8 ?", "56"),  # the short problem, differently written: an exact overlap
        _chat("r-contains", "What is 7 * 8 + 1?", "57"),  # contains the short problem, but is another question
        _chat("r-12", " ".join(words[:12]), "only 12 shared words"),  # below n = 13: no overlap
        _chat("r-clean", "Compute 2 + 2.", "4"),
    ] + [_chat(f"r-t{i}", f"{TEMPLATE}: {i + 100} * {i}") for i in range(12)]  # template in 12 > 10 records
    rep = find_overlaps(records, _problems(), n=13, max_matches=10)
    got = {(o.record_id, o.benchmark, o.problem_id, o.kind) for o in rep.overlaps}
    assert got == {("r-ngram", "bench", "p-long", "ngram"), ("r-exact", "bench", "p-short", "exact")}
    assert rep.record_ids() == {"r-ngram", "r-exact"}
    assert rep.common_ngrams > 0  # the template's 13-grams, ignored
    assert rep.short_problems == {"bench": 1, "tmpl": 0}
    s = rep.summary()
    assert s["overlapping_records"] == 2 and s["records_checked"] == len(records)
    assert s["benchmarks"]["bench"] == {"problems": 3, "short_problems": 1, "overlapping_records": 2,
                                        "contaminated_problems": 2, "exact_pairs": 1, "ngram_pairs": 1}  # fmt: skip
    assert s["examples"][0].startswith("r-ngram ~ bench/p-long (ngram:")

    # without the common-n-gram rule the template records overlap every template problem
    loose = find_overlaps(records, _problems(), n=13, max_matches=None)
    assert {o.record_id for o in loose.overlaps if o.benchmark == "tmpl"} == {f"r-t{i}" for i in range(12)}
    # n is configurable: at n = 12 the 12-word prefix overlaps too
    assert "r-12" in find_overlaps(records, _problems(), n=12).record_ids()
    with pytest.raises(ValueError, match="n=0"):
        find_overlaps(records, _problems(), n=0)


def test_procedural_small_question_space_gives_exact_overlaps():
    """One-digit products: 81 questions, so a corpus of 60 and a held-out set of 30 share some; the check
    finds exactly the shared ones, and none once the eval skips the corpus' questions (as the eval stage does)."""
    from skillray.corpus.generate import generate_corpus

    records = generate_corpus(CorpusConfig(tasks=["products"], size_per_task=60))
    spec = EvalBenchmark(name="procedural", tasks=["products"], size_per_task=30)
    problems, failed = load_eval_problems([spec])  # no corpus questions given: the held-out set may repeat them
    assert failed == {} and len(problems["procedural"]) == 30
    users = {r.messages[0]["content"] for r in records}
    shared = {pid for pid, q in problems["procedural"] if q in users}
    assert shared, "expected repeats in a space of 81 questions"
    rep = find_overlaps(records, problems)
    assert {o.problem_id for o in rep.overlaps} == shared
    assert {o.kind for o in rep.overlaps} == {"exact"}  # 15 words, but the whole question matched

    problems2, _ = load_eval_problems([spec], records=records)  # the eval's own skip of corpus questions
    assert find_overlaps(records, problems2).overlaps == []


def test_drop_overlapping_for_probe_dev_items():
    from skillray.eval.benchmarks import Problem

    dev = [Problem("d0", LONG.lower(), "1"), Problem("d1", "What is 7*8", "56"), Problem("d2", "What is 9 * 9?", "81")]
    kept, dropped = drop_overlapping(dev, [LONG, SHORT])
    assert [p.id for p in kept] == ["d2"] and [p.id for p in dropped] == ["d0", "d1"]
    kept, dropped = drop_overlapping(["abc def"], [], text=str)
    assert kept == ["abc def"] and dropped == []


def test_select_report_drop_off(write_corpus, tmp_path):
    from skillray.select import read_selection, run_select

    records = [_chat(f"r{i}", f"Compute {i} + {i + 1}.", str(2 * i + 1)) for i in range(20)]
    records[3] = _chat("r3", LONG, "42")
    records[7] = _chat("r7", "what is 7*8", "56")
    run = write_corpus(records)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"problem": q, "answer": "1", "id": pid}) + "\n"
                             for pid, q in [("p-long", LONG), ("p-short", SHORT), ("p-other", OTHER)]))  # fmt: skip
    specs = [EvalBenchmark(name="local", path=str(bench), problem_field="problem", answer_field="answer", id_field="id"),
             EvalBenchmark(name="math500", path=str(tmp_path / "missing.jsonl"))]  # cannot be loaded

    with pytest.warns(UserWarning, match=r"not checked against \['math500'\]"):
        m = run_select(run, SelectConfig(strategy="full", name="rep"), benchmarks=specs)
    d = m.summary["decontamination"]
    assert d["mode"] == "report" and d["overlapping_records"] == 2
    assert d["benchmarks"]["local"]["contaminated_problems"] == 2 and "math500" in d["not_checked"]
    listing = json.loads((run / "select" / "rep" / "decontam.json").read_text())
    assert {(o["record_id"], o["problem_id"]) for o in listing["overlaps"]} == {("r3", "p-long"), ("r7", "p-short")}
    assert len(read_selection(run / "select" / "rep")) == 20  # report keeps them

    with pytest.raises(ValueError, match="decontamination: eval benchmark 'math500'"):
        run_select(run, SelectConfig(strategy="random", budget=10, decontaminate="drop", name="drop"), benchmarks=specs)
    m = run_select(run, SelectConfig(strategy="random", budget=18, decontaminate="drop", name="drop"),
                   benchmarks=specs[:1])
    ids = read_selection(run / "select" / "drop")
    assert len(ids) == 18 and not {"r3", "r7"} & set(ids)  # dropped from the pool; the budget still met
    assert m.summary["decontamination"]["dropped_from_pool"] == 2
    train = (run / "select" / "drop" / "train.jsonl").read_text()
    assert "smallest positive integer" not in train
    with pytest.raises(ValueError, match="larger than the pool of 18"):
        run_select(run, SelectConfig(strategy="random", budget=19, decontaminate="drop", name="drop19"), benchmarks=specs[:1])

    m = run_select(run, SelectConfig(strategy="full", name="off", decontaminate="off"), benchmarks=specs)
    assert m.summary["decontamination"] == {"mode": "off"} and not (run / "select" / "off" / "decontam.json").exists()
    m = run_select(run, SelectConfig(strategy="full", name="none"))  # no benchmarks given
    assert m.summary["decontamination"]["mode"].startswith("off (no eval benchmarks")

    # the sft summary's view (the lines trained on) and the run report's section
    from skillray.eval.decontam import training_overlaps
    from skillray.report.run import build_run_report

    assert training_overlaps(run / "select" / "rep")["overlapping_records"] == 2
    first = read_selection(run / "select" / "rep")
    n_before_r7 = first.index("r7")  # full = store/file order: r3 is before r7
    assert training_overlaps(run / "select" / "rep", n_before_r7)["overlapping_records"] == 1
    assert training_overlaps(run / "select" / "off")["mode"].startswith("not checked")
    md = build_run_report(run).markdown()
    assert "## Decontamination" in md and "| rep | report | 13 | 20 | 2 | 0 | local: 2 of 3 | math500 |" in md
    assert "| drop | drop | 13 | 20 | 2 | 2 |" in md
