import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skillray.config import CorpusConfig, FieldMap
from skillray.corpus import CorpusError, Record, load_corpus, read_records, run_corpus


def test_generate_is_seeded_labelled_and_answered():
    cfg = CorpusConfig(size_per_task=3, seed=1)
    a, b = load_corpus(cfg), load_corpus(cfg)
    assert a == b
    assert len(a) == 3 * len(cfg.tasks) and len(cfg.tasks) >= 8
    assert {r.skill for r in a} == set(cfg.tasks)
    assert all(r.answer for r in a)
    assert all(r.messages[-1]["role"] == "assistant" for r in a)
    gsm = [r for r in a if r.skill == "gsm_symbolic"]
    assert "####" in gsm[0].messages[-1]["content"]  # its chain of thought is kept
    assert load_corpus(cfg.model_copy(update={"seed": 2})) != a


def test_generate_unknown_task():
    with pytest.raises(CorpusError, match="unknown reasoning-gym task.*'nope'"):
        load_corpus(CorpusConfig(tasks=["nope"]))


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
    p.write_text(json.dumps({"m": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(CorpusError, match=r"messages\[0\].role='robot'"):
        load_corpus(_local(p, messages="m"))


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
