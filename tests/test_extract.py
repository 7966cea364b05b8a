"""Extraction: pooled vectors against a hand-written HF forward; the Ray stage; resume; errors."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from skillray.config import CorpusConfig, ExtractConfig, ModelConfig
from skillray.corpus import Record, load_corpus
from skillray.extract import ActivationExtractor, ActivationStore, run_extract, token_budget_batches
from skillray.extract.tokenize import tokenize_records

LAYERS = [0, 1, 2]  # of the tiny model's 4 blocks; the last block's hidden state is post-norm in HF


def _records():
    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["basic_arithmetic", "gsm_symbolic", "syllogism"]))
    return recs + [Record(id="plain", text="Plain text with no chat template, pooled whole.")]


def _reference(model_path, seqs, starts, layers, pooling):
    """Each sequence alone, no padding: output_hidden_states[i + 1] pooled by hand."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    for s, r in zip(seqs, starts):
        with torch.no_grad():
            hs = model(torch.as_tensor(s, dtype=torch.long)[None], output_hidden_states=True).hidden_states
        rows = []
        for i in layers:
            h = hs[i + 1][0]  # (T, H)
            if pooling == "mean":
                rows.append(h.mean(0))
            elif pooling == "response_mean":
                rows.append(h[r:].mean(0) if r < len(s) else h.mean(0))
            else:
                rows.append(h[-1])
        out.append(torch.cat(rows).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "response_mean", "last"])
@pytest.mark.parametrize("token_budget", [64, 100_000])  # many small padded batches vs one big one
def test_pooled_vectors_match_handwritten_forward(tiny_model, pooling, token_budget):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    t = tokenize_records(_records(), tok, max_tokens=512)
    ex = ActivationExtractor(tiny_model, LAYERS, pooling=pooling, dtype="float32", device="cpu", token_budget=token_budget)
    got = ex.extract(t.input_ids, t.response_start)
    want = _reference(tiny_model.path, t.input_ids, t.response_start, LAYERS, pooling)
    assert got.shape == (len(t.ids), 3 * 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


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
    recs = _records()
    run = write_corpus(recs)
    # float32 pinned: this checks the stage's plumbing against the extractor called directly at 1e-4, which
    # `auto` (bfloat16 on a CPU with AMX / AVX512-BF16) would not meet; tests/test_dtype.py checks bf16's numerics.
    mcfg = ModelConfig(name_or_path=tiny_model.path, dtype="float32")
    m = run_extract(run, mcfg, _extract_cfg())
    assert m.complete and m.summary["rows"] == len(recs) and m.summary["shards"] == 2
    assert m.config["dtype"] == "float32" and m.summary["dtype"] == "float32 (model.dtype=float32)"
    store = ActivationStore(run / "extract")
    store.verify()
    assert sorted(store.ids()) == sorted(r.id for r in recs)
    x = store.load_all()
    assert x.shape == (len(recs), 96) and np.isfinite(x).all()

    # Same vectors as the extractor called directly (store order differs: rows are length-sorted).
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    t = tokenize_records(recs, tok, max_tokens=1024)
    direct = ActivationExtractor(tiny_model, LAYERS, dtype="float32", device="cpu").extract(t.input_ids, t.response_start)
    pos = {rid: i for i, rid in enumerate(t.ids)}
    np.testing.assert_allclose(x, direct[[pos[i] for i in store.ids()]], atol=1e-4)

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


def test_other_config_refused_then_forced(ray_cluster, tiny_model, write_corpus):
    from skillray.artifacts import StageMismatchError

    run = write_corpus(_records()[:3])
    mcfg = ModelConfig(name_or_path=tiny_model.path)
    run_extract(run, mcfg, _extract_cfg())
    with pytest.raises(StageMismatchError, match=r"(?s)config.extract.pooling: existing='mean' new='last'.*--force"):
        run_extract(run, mcfg, _extract_cfg(pooling="last"))
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
