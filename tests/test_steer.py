"""Steering: vector construction, hooks, bias-folded checkpoints, GGUF export, errors."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from skillray.basis import SkillBasis, run_basis
from skillray.config import BasisConfig, CorpusConfig, ExtractConfig, ModelConfig
from skillray.corpus import load_corpus
from skillray.extract import ActivationExtractor, run_extract
from skillray.extract.tokenize import tokenize_records
from skillray.models import resolve_model
from skillray.steer import SteeringError, SteeringVector, fold_checkpoint, steer

PROMPTS = ["What is 7 + 5?", "Name a prime number larger than ten, and explain why it is prime."]


def _basis_for(model_path, run_dir, write_corpus, layers):
    recs = load_corpus(CorpusConfig(size_per_task=3))
    run = write_corpus(recs, run_dir)
    run_extract(run, ModelConfig(name_or_path=str(model_path)),
                ExtractConfig(layers=layers, standardize=True, shard_size=16, num_cpus_per_actor=1))  # fmt: skip
    run_basis(run, BasisConfig(n_components=3, method="exact"))
    return SkillBasis.load(run / "basis"), recs


@pytest.fixture(scope="module")
def identity_model(tiny_model, tmp_path_factory):
    """The tiny Llama with every block's output projections zeroed: each block is the identity,
    so the residual stream carries exactly what steering adds."""
    m = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    for b in m.model.layers:
        torch.nn.init.zeros_(b.self_attn.o_proj.weight)
        torch.nn.init.zeros_(b.mlp.down_proj.weight)
    path = tmp_path_factory.mktemp("identity")
    m.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model.path).save_pretrained(path)
    return resolve_model(ModelConfig(name_or_path=str(path)))


@pytest.fixture(scope="module")
def tiny_run(ray_cluster, tiny_model, tmp_path_factory):
    from tests.conftest import write_corpus_to

    run = tmp_path_factory.mktemp("b")
    _basis_for(tiny_model.path, run, write_corpus_to, [1, 2])
    return run


@pytest.fixture(scope="module")
def tiny_basis(tiny_run):
    return SkillBasis.load(tiny_run / "basis")


def _logits(model, tok, prompts):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits, enc["attention_mask"].bool()


@pytest.mark.parametrize("mode", ["residual", "per_layer"])
def test_hooks_equal_folded_checkpoint_tiny(tiny_model, tiny_basis, tmp_path, mode):
    vec = SteeringVector.from_basis(tiny_basis, 0, sign=-1, alpha=4.0, mode=mode)
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    folded = AutoModelForCausalLM.from_pretrained(fold_checkpoint(tiny_model.path, vec, tmp_path / "f"), dtype=torch.float32).eval()
    assert folded.config.mlp_bias
    with steer(base, vec):
        hooked, mask = _logits(base, tok, PROMPTS)
    plain, _ = _logits(base, tok, PROMPTS)
    fold, _ = _logits(folded, tok, PROMPTS)
    torch.testing.assert_close(fold[mask], hooked[mask], atol=1e-4, rtol=1e-4)
    assert (fold[mask] - plain[mask]).abs().max() > 1e-3  # it did steer


def test_zero_bias_fold_is_the_plain_model_with_writable_biases(tiny_model, tiny_basis, tmp_path):
    """fold_checkpoint(path, None, out): every down-projection bias zero (the plain model's logits); writing a
    vector into those biases in place gives the folded checkpoint of that vector (what vLLM swaps do)."""
    from safetensors import safe_open

    out = fold_checkpoint(tiny_model.path, None, tmp_path / "zero")
    assert not (out / "steering").exists()
    with safe_open(out / "steering-bias.safetensors", "pt") as f:
        assert all(f.get_tensor(k).abs().max() == 0 for k in f.keys()) and any("down_proj" in k for k in f.keys())
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    zero = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert zero.config.mlp_bias
    plain, mask = _logits(base, tok, PROMPTS)
    got, _ = _logits(zero, tok, PROMPTS)
    torch.testing.assert_close(got[mask], plain[mask], atol=1e-5, rtol=1e-5)
    vec = SteeringVector.from_basis(tiny_basis, 0, sign=1, alpha=4.0, mode="per_layer")
    with torch.no_grad():
        for i, v in vec.as_dict().items():
            zero.model.layers[i].mlp.down_proj.bias.copy_(torch.tensor(v))
    with steer(base, vec):
        hooked, _ = _logits(base, tok, PROMPTS)
    swapped, _ = _logits(zero, tok, PROMPTS)
    torch.testing.assert_close(swapped[mask], hooked[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_hooks_equal_folded_checkpoint_smollm2(ray_cluster, smollm2, tmp_path_factory, write_corpus):
    basis, _ = _basis_for(smollm2.path, tmp_path_factory.mktemp("s"), write_corpus, [4, 8, 12, 16])
    vec = SteeringVector.from_basis(basis, 1, sign=1, alpha=2.0)
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    base = AutoModelForCausalLM.from_pretrained(smollm2.path, dtype=torch.float32).eval()
    folded = AutoModelForCausalLM.from_pretrained(fold_checkpoint(smollm2.path, vec, tmp_path_factory.mktemp("f") / "m"), dtype=torch.float32).eval()
    with steer(base, vec):
        hooked, mask = _logits(base, tok, PROMPTS)
    fold, _ = _logits(folded, tok, PROMPTS)
    torch.testing.assert_close(fold[mask], hooked[mask], atol=1e-4, rtol=1e-4)


def test_alpha_zero_is_exactly_unsteered(tiny_model, tiny_basis):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    plain, _ = _logits(model, tok, PROMPTS)
    with steer(model, SteeringVector.from_basis(tiny_basis, 2, alpha=0.0)):
        zero, _ = _logits(model, tok, PROMPTS)
    assert torch.equal(plain, zero)


def test_projection_moves_by_alpha_spreads(ray_cluster, identity_model, tmp_path, write_corpus):
    """On identity blocks, residual-mode steering moves the pooled projection by exactly sign*alpha*spread."""
    basis, recs = _basis_for(identity_model.path, tmp_path / "run", write_corpus, [0, 1, 2, 3])
    tok = AutoTokenizer.from_pretrained(identity_model.path)
    t = tokenize_records(recs[:6], tok, 256)
    ex = ActivationExtractor(identity_model, [0, 1, 2, 3], dtype="float32", device="cpu")
    x0 = ex.extract(t.input_ids, t.response_start)
    scale = np.repeat(basis.layer_scales_, 32)
    for k, sign, alpha in [(0, 1, 1.5), (1, -1, 0.5)]:
        vec = SteeringVector.from_basis(basis, k, sign=sign, alpha=alpha, mode="residual")
        with steer(ex.model, vec):
            x1 = ex.extract(t.input_ids, t.response_start)
        shift = basis.transform(x1 / scale) - basis.transform(x0 / scale)  # (n, k)
        expected = np.zeros(3)
        expected[k] = sign * alpha * math.sqrt(basis.explained_variance_[k])
        np.testing.assert_allclose(shift, np.tile(expected, (6, 1)), atol=1e-3 * abs(expected[k]) + 1e-5)
        # per_layer mode accumulates slices, so its shift is not the requested one
        with steer(ex.model, SteeringVector.from_basis(basis, k, sign=sign, alpha=alpha, mode="per_layer")):
            x2 = ex.extract(t.input_ids, t.response_start)
        assert not np.allclose(basis.transform(x2 / scale) - basis.transform(x0 / scale), shift, atol=1e-3)


def test_positions_prompt_and_generated(tiny_model, tiny_basis):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    vec = SteeringVector.from_basis(tiny_basis, 0, alpha=20.0)
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)

    def gen(positions=None):
        kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        if positions is None:
            return model.generate(**enc, **kw)
        with steer(model, vec, positions=positions):
            return model.generate(**enc, **kw)

    plain, prompt, generated, every = gen(), gen("prompt"), gen("generated"), gen("all")
    # The first new token comes from the prefill: steered under prompt/all, not under generated.
    assert torch.equal(generated.logits[0], plain.logits[0])
    assert not torch.allclose(prompt.logits[0], plain.logits[0])
    torch.testing.assert_close(prompt.logits[0], every.logits[0])
    # Later tokens: generated-only steering changes them.
    assert not torch.allclose(generated.logits[2], plain.logits[2])


def test_left_padded_batch_equals_single_rows(tiny_model, tiny_basis):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    vec = SteeringVector.from_basis(tiny_basis, 1, alpha=3.0)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with steer(model, vec):
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        batch = model.generate(**enc, **kw)[:, enc["input_ids"].shape[1] :]
        for r, p in enumerate(PROMPTS):
            e = tok([p], return_tensors="pt")
            single = model.generate(**e, **kw)[0, e["input_ids"].shape[1] :]
            assert torch.equal(batch[r], single)


def test_per_row_vectors_do_not_leak(tiny_model, tiny_basis):
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    up = SteeringVector.from_basis(tiny_basis, 0, sign=1, alpha=5.0)
    down = SteeringVector.from_basis(tiny_basis, 0, sign=-1, alpha=5.0)
    p = [PROMPTS[0]] * 3
    with steer(model, [up, down, None]):
        mixed, _ = _logits(model, tok, p)
    for r, v in enumerate([up, down]):
        with steer(model, v):
            alone, _ = _logits(model, tok, p[:1])
        torch.testing.assert_close(mixed[r], alone[0], atol=1e-5, rtol=1e-5)
    plain, _ = _logits(model, tok, p[:1])
    torch.testing.assert_close(mixed[2], plain[0], atol=1e-5, rtol=1e-5)


def test_hooks_removed_on_error(tiny_model, tiny_basis):
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, SteeringVector.from_basis(tiny_basis, 0)):
            raise RuntimeError("boom")
    assert all(not b._forward_hooks for b in model.model.layers) and not model._forward_pre_hooks


def test_save_load_and_gguf(tiny_basis, tmp_path):
    import gguf

    vec = SteeringVector.from_basis(tiny_basis, 1, sign=-1, alpha=2.5, mode="per_layer")
    vec.save(tmp_path / "v")
    back = SteeringVector.load(tmp_path / "v")
    assert back.layers == vec.layers and np.array_equal(back.vectors, vec.vectors) and back.meta == vec.meta
    assert not back.vectors.flags.writeable
    r = gguf.GGUFReader(str(vec.to_gguf(tmp_path / "v.gguf")))
    assert r.fields["general.architecture"].contents() == "controlvector"
    tensors = {t.name: np.asarray(t.data) for t in r.tensors}
    assert sorted(tensors) == [f"direction.{i}" for i in vec.layers]
    np.testing.assert_array_equal(tensors["direction.2"], vec.vectors[1])
    # names that hold an alpha keep their dot: two arms of alphas 0.5 and 0.25 are two files, not one
    for alpha in (0.5, 0.25):
        SteeringVector.from_basis(tiny_basis, 1, sign=1, alpha=alpha).save(tmp_path / f"d1+{alpha:g}-residual")
    assert {p.name for p in tmp_path.glob("d1+0*")} == {f"d1+{a}-residual.{e}" for a in ("0.5", "0.25") for e in ("safetensors", "json")}
    assert SteeringVector.load(tmp_path / "d1+0.25-residual").meta["alpha"] == 0.25
    assert SteeringVector.load(tmp_path / "d1+0.5-residual.safetensors").meta["alpha"] == 0.5
    assert vec.to_gguf(tmp_path / "d1-2.5-residual").name == "d1-2.5-residual.gguf"


def test_bad_specs_are_named(tiny_model, tiny_basis, tmp_path):
    with pytest.raises(SteeringError, match=r"direction 3 out of range: the basis has 3 directions \(0..2\)"):
        SteeringVector.from_basis(tiny_basis, 3)
    with pytest.raises(SteeringError, match=r"alpha nan: expected a finite number"):
        SteeringVector.from_basis(tiny_basis, 0, alpha=float("nan"))
    with pytest.raises(SteeringError, match=r"layers \[3\] are not in the basis \(its blocks: \[1, 2\]\)"):
        SteeringVector.from_basis(tiny_basis, 0, layers=[3])
    with pytest.raises(SteeringError, match="sign 0"):
        SteeringVector.from_basis(tiny_basis, 0, sign=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    far = SteeringVector((7,), np.ones((1, 32)))
    with pytest.raises(SteeringError, match="layer 7 out of range for a 4-block model"):
        with steer(model, far):
            pass
    with pytest.raises(SteeringError, match="cannot steer block 0"):
        SteeringVector((0,), np.ones((1, 32))).to_gguf(tmp_path / "x.gguf")


def test_fold_refuses_architectures_without_mlp_bias(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path / "g")
    with pytest.raises(SteeringError, match=r"model_type 'gpt2' has no MLP-bias option.*hook path"):
        fold_checkpoint(tmp_path / "g", SteeringVector((1,), np.ones((1, 32))), tmp_path / "out")


def test_fold_qwen2_as_llama(tmp_path):
    """Qwen2 has no MLP bias: it is rewritten as Llama (q/k/v biases kept, o bias zero); logits match hooks."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    q = Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()  # fmt: skip
    for b in q.model.layers:  # make the q/k/v biases matter
        torch.nn.init.normal_(b.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(b.self_attn.v_proj.bias, std=0.5)
    q.save_pretrained(tmp_path / "q")
    vec = SteeringVector((1, 2), np.random.default_rng(0).normal(size=(2, 32)))
    folded = AutoModelForCausalLM.from_pretrained(fold_checkpoint(tmp_path / "q", vec, tmp_path / "f"), dtype=torch.float32).eval()
    assert type(folded).__name__ == "LlamaForCausalLM"
    ids = torch.arange(10)[None]
    with torch.no_grad(), steer(q, vec):
        want = q(ids).logits
    with torch.no_grad():
        got = folded(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "f" / "config.json").read_text())["attention_bias"] is True


def test_cli_export_formats_and_errors(tiny_run, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app

    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tiny_run}\nmodel: {{name_or_path: {tiny_model.path}}}\n")
    common = ["--config", str(cfg), "--direction", "1", "--sign", "-1", "--alpha", "2"]
    r = runner.invoke(app, ["steer", "export", *common, "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert SteeringVector.load(tmp_path / "v").meta["sign"] == -1
    r = runner.invoke(app, ["steer", "export", *common, "--format", "folded", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "f" / "config.json").read_text())["mlp_bias"] is True
    r = runner.invoke(app, ["steer", "export", "--config", str(cfg), "--direction", "9"])
    assert r.exit_code == 2 and "direction 9 out of range" in r.output


def test_a_spec_builds_one_vector_in_the_sweep_and_through_serves_hook(tiny_model, tiny_basis):
    """SteeringSpec -> from_spec is from_basis with the same fields, and the spec's request body, parsed by
    `skillray serve`'s basis hook, gives that very vector (the eval's openai arms rely on it)."""
    import dataclasses

    from skillray.steer import SteeringSpec
    from skillray.steer.serving import BasisSteering

    spec = SteeringSpec(1, -1, 2.5, "per_layer", [2], control_seed=3)
    assert spec.layers == (2,) and hash(spec) == hash(SteeringSpec(1, -1, 2.5, "per_layer", (2,), 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.alpha = 1.0
    vec = SteeringVector.from_spec(tiny_basis, spec)
    ref = SteeringVector.from_basis(tiny_basis, 1, sign=-1, alpha=2.5, mode="per_layer", layers=[2], control_seed=3)
    assert vec.layers == ref.layers == (2,) and vec.meta == ref.meta
    np.testing.assert_array_equal(vec.vectors, ref.vectors)
    assert spec.describe() == {"direction": 1, "sign": -1, "alpha": 2.5, "mode": "per_layer", "control_seed": 3}
    assert spec.request() == {**spec.describe(), "layers": [2]}
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32)
    for s in (spec, SteeringSpec(0), SteeringSpec(2, 1, 0.5, "residual")):
        served = BasisSteering(tiny_basis, model).parse(s.request())
        want = SteeringVector.from_spec(tiny_basis, s)
        assert served.layers == want.layers and served.meta == want.meta
        np.testing.assert_array_equal(served.vectors, want.vectors)
    with pytest.raises(SteeringError, match=r"layers \[3\] are not in the basis"):
        SteeringVector.from_spec(tiny_basis, SteeringSpec(0, layers=(3,)))
