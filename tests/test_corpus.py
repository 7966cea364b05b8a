import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skillray.config import CorpusConfig, FieldMap
from skillray.corpus import CorpusError, Record, load_corpus, read_records, run_corpus, write_records


def test_generate_is_seeded_labelled_and_answered():
    cfg = CorpusConfig(size_per_task=3, seed=1)
    a, b = load_corpus(cfg), load_corpus(cfg)
    assert a == b  # deterministic for a seed, metadata included
    assert len(a) == 3 * len(cfg.tasks) and len(cfg.tasks) >= 6
    assert {r.skill for r in a} == set(cfg.tasks)
    assert all(r.answer for r in a)
    assert all(r.messages[-1]["role"] == "assistant" for r in a)
    assert load_corpus(cfg.model_copy(update={"seed": 2})) != a


def test_default_traces_are_worked_and_score_as_the_items_answer():
    """Every default record is a worked trace whose final answer the eval's extractor and the task's own
    reasoning-gym scorer accept, in every style; no record is only the answer."""
    import reasoning_gym

    from skillray.corpus.generate import STYLE_LEVELS, TRACE_BUILDERS
    from skillray.eval.scoring import extract_answer, procedural_score

    cfg = CorpusConfig(size_per_task=24, seed=3)
    recs = load_corpus(cfg)
    assert set(cfg.tasks) <= set(TRACE_BUILDERS)
    for t, task in enumerate(cfg.tasks):
        ds = reasoning_gym.create_dataset(task, size=cfg.size_per_task, seed=cfg.seed * 1000 + t, **cfg.task_options[task])
        mine = [r for r in recs if r.skill == task]
        for i, r in enumerate(mine):
            response = r.messages[-1]["content"]
            got = extract_answer(response, finished=True)
            assert got.source == "boxed" and response.rstrip().endswith("}"), r.id
            assert procedural_score(ds, ds[i], got.answer) == 1.0, (r.id, got.answer, ds[i]["answer"])
            assert r.answer == str(ds[i]["answer"])
            lines = response.splitlines()
            # terse: one line of working + the answer line; steps: an opening line, >= 1 step, the answer line
            assert len(lines) == 2 if r.metadata["verbosity"] == "terse" else len(lines) >= 3, r.id
            assert ("heck: " in response) == r.metadata["check"], r.id
            assert r.metadata["length"] == len(response)
        # the style axes are independent of the task: every level occurs within every task
        for name, levels in STYLE_LEVELS.items():
            assert {r.metadata[name] for r in mine} == set(levels), (task, name)


def test_notation_changes_the_working_not_the_answer():
    import reasoning_gym

    from skillray.corpus.generate import TRACE_BUILDERS, render

    entry = reasoning_gym.create_dataset("simple_equations", size=1, seed=0, min_terms=2, max_terms=2)[0]
    sol = TRACE_BUILDERS["simple_equations"](entry)
    prose, symbolic = (render(sol, "steps", True, n) for n in ("prose", "symbolic"))
    assert prose != symbolic and prose.splitlines()[-1] == symbolic.splitlines()[-1] == f"Final answer: \\boxed{{{entry['answer']}}}"
    assert "Divide" in prose or "Move" in prose
    assert len(render(sol, "terse", False, "prose")) < len(render(sol, "steps", True, "prose"))


def test_metadata_round_trips_through_records_jsonl(tmp_path):
    cfg = CorpusConfig(size_per_task=4, seed=5)
    run_corpus(tmp_path, cfg)
    back = read_records(tmp_path / "corpus" / "records.jsonl")
    assert back == load_corpus(cfg)
    r = back[0]
    assert set(r.metadata) == {"verbosity", "check", "notation", "length"}
    assert isinstance(r.metadata["check"], bool) and isinstance(r.metadata["length"], int)


def test_task_options_set_difficulty_and_bad_options_name_task_and_option():
    easy = CorpusConfig(tasks=["basic_arithmetic"], size_per_task=12,
                        task_options={"basic_arithmetic": {"max_digits": 1, "max_terms": 2, "operators": ["+"]}})  # fmt: skip
    hard = easy.model_copy(update={"task_options": {"basic_arithmetic": {"min_digits": 4, "max_digits": 4}}})
    e, h = load_corpus(easy), load_corpus(hard)
    assert all(int(r.answer) <= 18 for r in e)  # two one-digit numbers added
    assert max(abs(int(r.answer)) for r in h) > 1000
    with pytest.raises(CorpusError, match=r"task 'basic_arithmetic' has no option\(s\) \['max_digit'\]; its options are"):
        load_corpus(CorpusConfig(tasks=["basic_arithmetic"], task_options={"basic_arithmetic": {"max_digit": 2}}))
    with pytest.raises(CorpusError, match=r"corpus.task_options\['gcd'\]: task 'gcd': options .* rejected by reasoning-gym"):
        load_corpus(CorpusConfig(tasks=["gcd"], task_options={"gcd": {"min_value": 50, "max_value": 10}}))
    with pytest.raises(ValueError, match=r"task_options names task\(s\) \['lcm'\] that are not in corpus.tasks"):
        CorpusConfig(tasks=["gcd"], task_options={"lcm": {}})
    assert CorpusConfig(tasks=["gcd"]).tasks == ["gcd"]  # the default options of other tasks are no error


def test_tasks_without_a_trace_builder_keep_their_own_chain_of_thought():
    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["gsm_symbolic", "syllogism"]))
    gsm = [r for r in recs if r.skill == "gsm_symbolic"]
    assert "####" in gsm[0].messages[-1]["content"]  # its chain of thought is kept
    assert all(r.messages[-1]["content"].endswith(f"\\boxed{{{r.answer}}}") for r in recs)
    # Same keys as worked records (interpret needs every key on every record), style null: not planted.
    assert all(set(r.metadata) == {"verbosity", "check", "notation", "length"} for r in recs)
    assert all(r.metadata["verbosity"] is None and r.metadata["check"] is None for r in recs)


def test_generate_unknown_task():
    with pytest.raises(CorpusError, match="unknown reasoning-gym task 'nope'"):
        load_corpus(CorpusConfig(tasks=["nope"], task_options={}))


def _local(path, **fields):
    return CorpusConfig(source="local", path=str(path), fields=FieldMap(**fields))


def test_local_jsonl_with_prompt_response_mapping(tmp_path):
    # The Nemotron layout: `input` is a list of messages, `output` the reasoning trace.
    p = tmp_path / "c.jsonl"
    rows = [
        {"uid": "a", "input": [{"role": "user", "content": "1+1?"}], "output": "<think>1+1=2</think> 2", "ans": 2},
        {"uid": "b", "input": [{"role": "user", "content": "2+2?"}], "output": "<think>4</think> 4", "ans": 4},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    recs = load_corpus(_local(p, id="uid", prompt="input", response="output", answer="ans"))
    assert recs[0] == Record(
        id="a",
        messages=({"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>1+1=2</think> 2"}),
        answer="2",
    )


def test_local_json_and_parquet(tmp_path):
    rows = [{"q": "What is 3?", "s": "arith"}, {"q": "Name a prime.", "s": "primes"}]
    (tmp_path / "c.json").write_text(json.dumps({"data": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("c.json", "c.parquet"):
        recs = load_corpus(_local(tmp_path / name, text="q", skill="s"))
        assert [r.id for r in recs] == ["0", "1"] and recs[1].text == "Name a prime." and recs[1].skill == "primes"


def test_missing_mapped_field_names_record_and_columns(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": 1, "question": "hi"}) + "\n" + json.dumps({"id": 2, "prompt": "x"}) + "\n")
    with pytest.raises(CorpusError, match=r"c.jsonl:2 \(id '2'\): mapped field text='question' is missing; the record has columns \['id', 'prompt'\]"):
        load_corpus(_local(p, id="id", text="question"))


def test_empty_text_names_record(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": "r7", "t": "   "}) + "\n")
    with pytest.raises(CorpusError, match=r"id 'r7'.*field `text` is empty"):
        load_corpus(_local(p, id="id", text="t"))


def test_unparseable_file_names_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": 1, "t": "ok"}\n{"id": 2, "t": \n')
    with pytest.raises(CorpusError, match=r"c.jsonl:2: not valid JSON"):
        load_corpus(_local(p, id="id", text="t"))
    (tmp_path / "c.parquet").write_text("not parquet")
    with pytest.raises(CorpusError, match="not a readable Parquet file"):
        load_corpus(_local(tmp_path / "c.parquet", text="t"))


def test_duplicate_ids_and_bad_messages(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": 1, "t": "a"}) + "\n" + json.dumps({"id": 1, "t": "b"}) + "\n")
    with pytest.raises(CorpusError, match="duplicate id '1'"):
        load_corpus(_local(p, id="id", text="t"))
    # found after the last record, from 8-byte digests; the message names both rows
    p.write_text("".join(json.dumps({"id": i, "t": "a"}) + "\n" for i in [5, 1, 2, 3, 1, 4]))
    with pytest.raises(CorpusError, match=r"c.jsonl:5: duplicate id '1' \(first seen as row 1\)"):
        load_corpus(_local(p, id="id", text="t"))
    with pytest.raises(CorpusError, match=r"record 'x': duplicate id \(records 0 and 2\)"):
        write_records(tmp_path / "out.jsonl", [Record(id=i, text="t") for i in "xyx"])
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".out.jsonl*"))  # the temp file is gone
    p.write_text(json.dumps({"m": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(CorpusError, match=r"messages\[0\].role='robot'"):
        load_corpus(_local(p, messages="m"))


def test_id_digests_confirm_a_repeat_on_the_ids():
    """A repeated digest is a duplicate only if the ids are equal: a collision (forced here) is not one."""
    from skillray.corpus.records import IdDigests

    seen = IdDigests()
    for i in ["a", "b", "a"]:
        seen.add(i)
    assert len(seen) == 3 and seen.repeated() == {IdDigests.digest("a")}
    collision = {IdDigests.digest("a"), IdDigests.digest("b")}
    assert IdDigests.first_repeat([("a", "r0"), ("b", "r1")], collision) is None
    assert IdDigests.first_repeat([("a", "r0"), ("b", "r1"), ("a", "r2")], collision) == ("a", 0, 2, "r2")


def test_field_map_needs_one_content_source():
    with pytest.raises(ValueError, match="exactly one of `text`, `messages` or `prompt`"):
        FieldMap(text="a", messages="b")


def test_corpus_stage_skips_when_unchanged_and_refuses_other_config(tmp_path):
    from skillray.artifacts import StageMismatchError

    cfg = CorpusConfig(size_per_task=2)
    m1 = run_corpus(tmp_path, cfg)
    assert m1.summary["rows"] == 2 * len(cfg.tasks)
    assert run_corpus(tmp_path, cfg).created == m1.created  # skipped
    assert len(read_records(tmp_path / "corpus" / "records.jsonl")) == m1.summary["rows"]
    with pytest.raises(StageMismatchError, match=r"config.size_per_task: existing=2 new=3"):
        run_corpus(tmp_path, cfg.model_copy(update={"size_per_task": 3}))
    m3 = run_corpus(tmp_path, cfg.model_copy(update={"size_per_task": 3}), force=True)
    assert m3.summary["rows"] == 3 * len(cfg.tasks)


def test_a_corpus_mixing_worked_and_unworked_tasks_gives_factors():
    """Every record has every metadata key, so interpret's factors accept a mixed task list."""
    import numpy as np

    from skillray.interpret.factors import align, record_factors

    recs = load_corpus(CorpusConfig(size_per_task=6, tasks=["gsm_symbolic", "gcd"]))
    factors = {f.name: f for f in record_factors(recs, np.arange(len(recs), dtype=float))}
    assert {"verbosity", "check", "notation", "length", "skill", "tokens"} <= set(factors)
    z = np.random.default_rng(0).normal(size=(len(recs), 2))
    doc = align(z, list(factors.values()), n_boot=0)
    assert len(doc["directions"]) == 2
