"""Extraction: pooled vectors against a hand-written HF forward; the Ray stage; resume; errors."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from skillray.config import CorpusConfig, ExtractConfig, ModelConfig
from skillray.corpus import Record, load_corpus
from skillray.extract import ActivationExtractor, ActivationStore, run_extract, token_budget_batches
from skillray.extract.tokenize import shared_prefix_length, tokenize_records

LAYERS = [0, 1, 2]  # of the tiny model's 4 blocks; the last block's hidden state is post-norm in HF


def _records():
    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["basic_arithmetic", "gsm_symbolic", "syllogism"]))
    return recs + [Record(id="plain", text="Plain text with no chat template, pooled whole.")]


def _reference(model_path, seqs, starts, layers, pooling, skip=0):
    """Each sequence alone, no padding: output_hidden_states[i + 1] pooled by hand (means from ``skip`` on)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    for s, r in zip(seqs, starts):
        with torch.no_grad():
            hs = model(torch.as_tensor(s, dtype=torch.long)[None], output_hidden_states=True).hidden_states
        rows = []
        for i in layers:
            h = hs[i + 1][0]  # (T, H)
            mean = h[skip:].mean(0) if skip < len(s) else h.mean(0)
            if pooling == "mean":
                rows.append(mean)
            elif pooling == "response_mean":
                rows.append(h[max(r, skip):].mean(0) if max(r, skip) < len(s) else mean)
            else:
                rows.append(h[-1])
        out.append(torch.cat(rows).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "response_mean", "last"])
@pytest.mark.parametrize("token_budget", [64, 100_000])  # many small padded batches vs one big one
@pytest.mark.parametrize("skip", ["none", "first", "shared"])
def test_pooled_vectors_match_handwritten_forward(tiny_model, pooling, token_budget, skip):
    # Padded batches vs one sequence at a time take different BLAS kernels: equal to a tolerance, not bit-exact.
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    t = tokenize_records(_records(), tok, max_tokens=512)
    # The chats' shared prefix (the plain text shares none with them) is applied to every row, so the
    # test also covers a skip past a response start and a text row longer than the skip.
    n = {"none": 0, "first": 1, "shared": shared_prefix_length(t.input_ids[:-1])}[skip]
    ex = ActivationExtractor(tiny_model, LAYERS, pooling=pooling, skip_prefix=n, dtype="float32", device="cpu",
                             token_budget=token_budget)
    got = ex.extract(t.input_ids, t.response_start)
    want = _reference(tiny_model.path, t.input_ids, t.response_start, LAYERS, pooling, n)
    assert got.shape == (len(t.ids), 3 * 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    if skip != "none" and pooling == "mean":  # the skip changes the vectors (it is not silently ignored)
        assert not np.allclose(got, _reference(tiny_model.path, t.input_ids, t.response_start, LAYERS, pooling, 0), atol=1e-3)
    if pooling == "response_mean":  # a chat's response starts after the shared prefix: the same vectors as without it
        chats = [i for i, s in enumerate(t.response_start) if s >= n]
        assert len(chats) >= 6
        np.testing.assert_allclose(got[chats], _reference(tiny_model.path, [t.input_ids[i] for i in chats],
                                                          t.response_start[chats], LAYERS, pooling, 0), atol=1e-4, rtol=1e-4)


def test_shared_prefix_is_the_chat_template_head(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    t = tokenize_records(_records()[:-1], tok, max_tokens=512)
    n = shared_prefix_length(t.input_ids)
    head = tok.decode(t.input_ids[0][:n])
    assert head.startswith("<|im_start|>system\n") and head.endswith("<|im_start|>user\n")  # the whole system turn
    assert all(s[:n].tolist() == t.input_ids[0][:n].tolist() for s in t.input_ids)
    assert len({int(s[n]) for s in t.input_ids}) > 1  # and not one token more
    assert n <= int(t.response_start.min())


def test_shared_prefix_length_edge_cases():
    a = lambda *x: np.asarray(x, dtype=np.int32)  # noqa: E731
    assert shared_prefix_length([a(1, 2, 3, 9), a(1, 2, 4), a(1, 2, 3)]) == 2
    assert shared_prefix_length([a(5, 6), a(5, 6), a(5, 6, 7)]) == 1  # the shortest keeps a token to pool
    assert shared_prefix_length([a(1, 2), a(3, 2)]) == 0
    assert shared_prefix_length([a(1, 2, 3)]) == 0  # one record shares nothing with anything


def test_response_start_points_at_assistant_turn(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    rec = Record(id="r", messages=({"role": "user", "content": "What is 7+5?"}, {"role": "assistant", "content": "It is 12."}))
    t = tokenize_records([rec], tok, max_tokens=512)
    s = int(t.response_start[0])
    assert tok.decode(t.input_ids[0][s:]).startswith("It is 12.")
    assert "What is 7+5?" in tok.decode(t.input_ids[0][:s])
    t2 = tokenize_records([rec], tok, max_tokens=4)
    assert t2.truncated[0] and len(t2.input_ids[0]) == 4 and t2.empty_response[0]


def test_prompt_only_chat_ends_at_the_generation_prompt(smollm2):
    # `last` pooling of a prompt-only chat reads the last prompt token: where the model starts its reply.
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    msgs = ({"role": "system", "content": "Keep the secret."}, {"role": "user", "content": "Tell me the secret."})
    t = tokenize_records([Record(id="p", messages=msgs)], tok, max_tokens=512)
    want = tok(tok.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    assert t.input_ids[0].tolist() == want["input_ids"]
    assert tok.decode(t.input_ids[0]).endswith("<|im_start|>assistant\n") and t.empty_response[0]


def test_token_budget_batches_cover_everything_once():
    lengths = np.array([5, 50, 7, 300, 1, 49, 48])
    batches = token_budget_batches(lengths, 100)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 100


def _extract_cfg(**kw):
    base = dict(layers=LAYERS, shard_size=4, token_budget=256, num_actors=1, num_cpus_per_actor=1)
    return ExtractConfig(**{**base, **kw})


def test_stage_on_ray_store_roundtrip_and_resume(ray_cluster, tiny_model, write_corpus):
    recs = _records()[:-1] + [Record(id=f"c{i}", messages=({"role": "user", "content": q},)) for i, q in enumerate(["Hi?", "Why?"])]
    run = write_corpus(recs)
    # float32 pinned: this checks the stage's plumbing against the extractor called directly at 1e-4, which
    # `auto` (bfloat16 on a CPU with AMX / AVX512-BF16) would not meet; tests/test_dtype.py checks bf16's numerics.
    mcfg = ModelConfig(name_or_path=tiny_model.path, dtype="float32")
    m = run_extract(run, mcfg, _extract_cfg())
    assert m.complete and m.summary["rows"] == len(recs) and m.summary["shards"] == 2
    assert m.config["dtype"] == "float32" and m.summary["dtype"] == "float32 (model.dtype=float32)"
    # The chat template's head is found over the whole corpus (not per shard) and left out of every mean.
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    t = tokenize_records(recs, tok, max_tokens=1024)
    skip = shared_prefix_length(t.input_ids)
    assert skip > 0 and m.outputs["skip_prefix"] == {"mode": "shared", "tokens": skip, "text": tok.decode(t.input_ids[0][:skip])}
    assert m.summary["prefix_skipped"] == f"{skip} tokens (shared)"
    assert m.summary["pooled_tokens"] == int(t.lengths.sum()) - skip * len(recs)
    store = ActivationStore(run / "extract")
    store.verify()
    assert sorted(store.ids()) == sorted(r.id for r in recs)
    x = store.load_all()
    assert x.shape == (len(recs), 96) and np.isfinite(x).all()
    # Store order: longest first, ties by id; the plan file the actors read it from is gone once the store is.
    assert store.ids() == sorted(t.ids, key=lambda i: (-int(t.lengths[t.ids.index(i)]), i))
    assert not (run / "extract" / ".plan").exists()  # the plan file and its hidden folder

    # Same vectors as the extractor called directly (store order differs: rows are length-sorted);
    # other batch shapes, other kernels: a tolerance.
    direct = ActivationExtractor(tiny_model, LAYERS, skip_prefix=skip, dtype="float32", device="cpu").extract(t.input_ids, t.response_start)
    pos = {rid: i for i, rid in enumerate(t.ids)}
    np.testing.assert_allclose(x, direct[[pos[i] for i in store.ids()]], atol=1e-4)
    assert store.row_values("n_pooled") == [int(t.lengths[pos[i]]) - skip for i in store.ids()]

    # Finished: a second run is skipped.
    assert run_extract(run, mcfg, _extract_cfg()).created == m.created

    # Lose one shard (as a kill mid-write would: the array without its sidecar) and rerun.
    (run / "extract" / "shards" / "shard-00001.json").unlink()
    man = run / "extract" / "manifest.json"
    import json

    d = json.loads(man.read_text())
    d["complete"] = False
    man.write_text(json.dumps(d))
    m2 = run_extract(run, mcfg, _extract_cfg(num_actors=1, token_budget=64))  # resources may change on resume
    assert m2.summary["shards_reused"] == 1
    store2 = ActivationStore(run / "extract")
    assert store2.ids() == store.ids()
    np.testing.assert_allclose(store2.load_all(), x, atol=1e-4)


def test_a_corpus_scanned_in_many_byte_ranges_gives_what_one_range_gives(ray_cluster, tiny_model, write_corpus):
    """The driver's per-record numbers come from Ray tasks over byte ranges; the cut points must not matter."""
    from skillray.extract.scan import chunk_ranges, read_records_at, scan_corpus

    recs = _records()[:-1]  # chats: they share the template's head
    path = write_corpus(recs) / "corpus" / "records.jsonl"
    ranges = chunk_ranges(path, 300)
    assert len(ranges) > 3 and ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    one, many = scan_corpus(path, tiny_model, 1024), scan_corpus(path, tiny_model, 1024, chunk_bytes=300)
    assert many.ids.to_pylist() == one.ids.to_pylist() == [r.id for r in recs]
    for k in ("offsets", "sizes", "lengths", "full_lengths", "response_start", "truncated", "prefix"):
        np.testing.assert_array_equal(getattr(many, k), getattr(one, k))
    assert read_records_at(path, many.offsets[::-1], many.sizes[::-1]) == recs[::-1]
    t = tokenize_records(recs, AutoTokenizer.from_pretrained(tiny_model.path), 1024)
    np.testing.assert_array_equal(one.lengths, t.lengths)
    assert one.shared_prefix_length() == shared_prefix_length(t.input_ids) > 0


def test_layer_statistics_from_the_actors_sums_match_the_store_and_survive_a_resume(ray_cluster, tiny_model, write_corpus):
    import json

    run = write_corpus(_records())
    mcfg = ModelConfig(name_or_path=tiny_model.path, dtype="float32")
    m = run_extract(run, mcfg, _extract_cfg(standardize=True))
    x = ActivationStore(run / "extract").load_all(standardized=False).astype(np.float64)
    want = [float(np.sqrt(x[:, a:b].var(axis=0).mean())) for a, b in m.outputs["layer_slices"]]
    np.testing.assert_allclose(m.outputs["layer_rms"], want, rtol=1e-6)
    assert m.outputs["layer_scales"] == m.outputs["layer_rms"]
    (run / "extract" / "shards" / "shard-00000.json").unlink()  # one shard lost; the others are reused
    man = run / "extract" / "manifest.json"
    man.write_text(json.dumps({**json.loads(man.read_text()), "complete": False}))
    m2 = run_extract(run, mcfg, _extract_cfg(standardize=True))
    assert m2.summary["shards_reused"] == m2.summary["shards"] - 1
    np.testing.assert_allclose(m2.outputs["layer_rms"], m.outputs["layer_rms"], rtol=1e-5)


def test_other_config_refused_then_forced(ray_cluster, tiny_model, write_corpus):
    from skillray.artifacts import StageMismatchError

    run = write_corpus(_records()[:3])
    mcfg = ModelConfig(name_or_path=tiny_model.path)
    run_extract(run, mcfg, _extract_cfg())
    with pytest.raises(StageMismatchError, match=r"(?s)config.extract.pooling: existing='mean' new='last'.*--force"):
        run_extract(run, mcfg, _extract_cfg(pooling="last"))
    with pytest.raises(StageMismatchError, match=r"config.extract.skip_prefix: existing='shared' new='first'"):
        run_extract(run, mcfg, _extract_cfg(skip_prefix="first"))  # the positions pooled are part of the key
    m = run_extract(run, mcfg, _extract_cfg(pooling="last"), force=True)
    assert m.config["extract"]["pooling"] == "last"


def test_standardize_stores_layer_scales(ray_cluster, tiny_model, write_corpus):
    run = write_corpus(_records())
    m = run_extract(run, ModelConfig(name_or_path=tiny_model.path), _extract_cfg(standardize=True))
    store = ActivationStore(run / "extract")
    assert len(store.layer_scales) == 3
    x = store.load_all(standardized=True)
    for a, b in store.layer_slices:  # every layer now has unit mean per-dimension variance
        assert np.var(x[:, a:b], axis=0).mean() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(store.load_all(standardized=False)[:, :32] / store.layer_scales[0], x[:, :32], rtol=1e-5)
    assert m.outputs["layer_rms"] == m.outputs["layer_scales"]


def test_layer_out_of_range_fails_before_work(tiny_model, write_corpus):
    run = write_corpus(_records()[:2])
    with pytest.raises(ValueError, match="layer 4 out of range for a 4-block model"):
        run_extract(run, ModelConfig(name_or_path=tiny_model.path), _extract_cfg(layers=[1, 4]))
    assert not (run / "extract").exists()


def test_missing_corpus_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="no finished corpus; run `skillray corpus` first"):
        run_extract(tmp_path, ModelConfig(name_or_path=tiny_model.path), _extract_cfg())
