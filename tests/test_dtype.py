"""`model.dtype: auto`: which dtype a CPU gets, that stages record it, and bfloat16's numerics against float32.

The numerics run the real SmolLM2 both ways on this CPU (bfloat16 runs wherever torch runs; it is only slow
without AMX / AVX512-BF16) and print what they measured, so a change in bf16 kernels shows up as numbers.
"""

import numpy as np
import pytest
import torch

from skillray.config import CorpusConfig, EvalBenchmark, EvalConfig, ExtractConfig, ModelConfig
from skillray.models import BF16_CPU_FLAGS, choose_dtype, cpu_flags


# ----------------------------------------------------------------------------- choosing


@pytest.mark.parametrize(
    "flags, want",
    [
        ({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, "bfloat16"),  # Sapphire Rapids and later
        ({"avx512f", "avx512_bf16"}, "bfloat16"),  # Cooper Lake, AMD Zen 4
        ({"avx2", "fma"}, "float32"),  # AMD Zen 3, older Intel: bf16 emulated, ~5x slower
        (set(), "float32"),  # flags unreadable (not Linux)
    ],
)
def test_auto_follows_the_cpu_flags(flags, want):
    c = choose_dtype("auto", "cpu", frozenset(flags))
    assert c.name == want and c.torch_dtype == getattr(torch, want)
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    assert c.reason == (f"auto: CPU has {', '.join(have)}" if have else
                        "auto: CPU without amx_bf16 or avx512_bf16" if flags else "auto: CPU flags unreadable")
    assert str(c) == f"{want} ({c.reason})"


def test_set_dtype_and_gpu_are_not_second_guessed():
    assert choose_dtype("float32", "cpu", frozenset(BF16_CPU_FLAGS)).name == "float32"
    assert str(choose_dtype("float16", "cpu")) == "float16 (model.dtype=float16)"
    assert choose_dtype("auto", "cuda", frozenset()).name == "bfloat16"


def test_cpu_flags_reads_proc_cpuinfo_and_survives_its_absence(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(f) == {"fpu", "avx2", "amx_bf16"}
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "arm") == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


# ----------------------------------------------------------------------------- recorded in the stage


def test_extract_records_the_dtype_and_refuses_another(ray_cluster, tiny_model, write_corpus):
    """The resolved dtype is in the stage key (float32 output is not reused as bfloat16) and in the summary;
    `auto` shares the key of the dtype it resolves to, and keys written before that (`model.dtype: auto`
    next to the resolved dtype) are still reused."""
    from skillray.artifacts import MANIFEST, StageMismatchError, atomic_write_json, read_json
    from skillray.corpus import load_corpus
    from skillray.extract import run_extract

    run = write_corpus(load_corpus(CorpusConfig(size_per_task=1, tasks=["basic_arithmetic", "syllogism"])))
    ex = ExtractConfig(layers=[1, 2], shard_size=8, num_cpus_per_actor=1)
    m = run_extract(run, ModelConfig(name_or_path=tiny_model.path, dtype="float32"), ex)
    assert m.config["dtype"] == "float32" and m.summary["dtype"] == "float32 (model.dtype=float32)"
    with pytest.raises(StageMismatchError, match=r"config\.dtype: existing='float32' new='bfloat16'"):
        run_extract(run, ModelConfig(name_or_path=tiny_model.path, dtype="bfloat16"), ex)
    assert m.config["model"]["dtype"] == "float32"
    mf = run / "extract" / MANIFEST
    saved = read_json(mf)
    old = {**saved, "config": {**saved["config"], "model": {**saved["config"]["model"], "dtype": "auto"}}}
    atomic_write_json(mf, old)  # the older form of the same key, as an `auto` run on a float32 CPU wrote it
    assert run_extract(run, ModelConfig(name_or_path=tiny_model.path, dtype="float32"), ex).created == m.created
    atomic_write_json(mf, saved)
    auto = choose_dtype("auto", "cpu")
    if auto.name == "float32":  # on a CPU without bf16 instructions, auto is float32: the same key, reused
        assert run_extract(run, ModelConfig(name_or_path=tiny_model.path), ex).created == m.created
    else:
        m2 = run_extract(run, ModelConfig(name_or_path=tiny_model.path), ex, force=True)
        assert m2.config["dtype"] == auto.name and m2.summary["dtype"] == str(auto)
        assert np.load(next((run / "extract" / "shards").glob("*.npy"))).dtype == np.float32  # stored float32


# ----------------------------------------------------------------------------- bf16 numerics on SmolLM2

COS_MIN = 0.9999  # per row, whole concatenated vector (dominated by a few huge residual dimensions)
CENTRED_COS_MIN = 0.99  # per row, after removing the float32 mean: the part the basis sees (0.998 measured)
ANGLE_MAX_DEG = 2.0  # largest principal angle between the top-3 subspaces of the two extractions
N_PROMPTS, NEW_TOKENS = 8, 24
EQUAL_MIN = 2  # greedy texts equal out of N_PROMPTS; bf16 rounding moves near-ties of a 135M model
PREFIX_MIN = 6.0  # mean number of leading generated tokens the two dtypes share


@pytest.fixture(scope="module")
def both(smollm2):
    """Pooled vectors and greedy answers of SmolLM2 in float32 and in bfloat16, same inputs, same batches."""
    from skillray.corpus import load_corpus
    from skillray.eval.backends import GenParams, HFBackend
    from skillray.eval.benchmarks import load_benchmarks
    from skillray.eval.prompts import build_messages, encode_chat
    from skillray.extract import ActivationExtractor
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import load_tokenizer, normalize_layers

    tok = load_tokenizer(smollm2)
    t = tokenize_records(load_corpus(CorpusConfig(size_per_task=3, seed=3)), tok, max_tokens=128)
    (bench,) = load_benchmarks([EvalBenchmark(name="procedural", tasks=["basic_arithmetic", "chain_sum"],
                                              size_per_task=N_PROMPTS // 2)])  # fmt: skip
    prompts = [encode_chat(tok, build_messages(p.question, None, EvalConfig().instruction)) for p in bench.problems]
    out = {}
    for d in ("float32", "bfloat16"):
        ex = ActivationExtractor(smollm2, normalize_layers(None, 30), dtype=d, device="cpu", num_threads=2)
        x = ex.extract(t.input_ids, t.response_start)
        hf = HFBackend(smollm2, dtype=d, num_threads=2, batch_size=N_PROMPTS)
        g = hf.generate(prompts, GenParams(n=1, temperature=0.0, top_p=1.0, max_tokens=NEW_TOKENS), seed=0)
        ids = [tok(s[0], add_special_tokens=False)["input_ids"] for s in g.texts]
        out[d] = {"x": x, "texts": [s[0] for s in g.texts], "ids": ids, "weights": next(ex.model.parameters()).dtype}
        del ex, hf
    return out


def test_bf16_pooled_vectors_and_basis_match_float32(both):
    from scipy.linalg import subspace_angles

    from skillray.basis import SkillBasis

    a, b = both["float32"]["x"], both["bfloat16"]["x"]
    assert both["bfloat16"]["weights"] == torch.bfloat16 and a.dtype == b.dtype == np.float32  # pooled in float32

    def cosines(u, v):
        return (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))

    cos = cosines(a, b)
    mu = a.mean(0)
    centred = cosines(a - mu, b - mu)
    fa, fb = SkillBasis(3, method="exact").fit(a), SkillBasis(3, method="exact").fit(b)
    angles = np.degrees(subspace_angles(fa.components_.T.astype(np.float64), fb.components_.T.astype(np.float64)))
    print(f"\nbf16 vs float32, {len(a)} rows x {a.shape[1]}: cosine per row min {cos.min():.6f}; centred min "
          f"{centred.min():.4f} median {np.median(centred):.4f}; top-3 principal angles (deg) {np.round(angles, 3)}")
    assert cos.min() >= COS_MIN
    assert centred.min() >= CENTRED_COS_MIN
    assert angles.max() <= ANGLE_MAX_DEG


def test_bf16_greedy_answers_mostly_match_float32(both):
    fa, fb = both["float32"], both["bfloat16"]
    equal = sum(x == y for x, y in zip(fa["texts"], fb["texts"]))

    def shared(u, v):
        n = 0
        while n < min(len(u), len(v)) and u[n] == v[n]:
            n += 1
        return n

    prefix = [shared(u, v) for u, v in zip(fa["ids"], fb["ids"])]
    print(f"\nbf16 vs float32 greedy, {N_PROMPTS} prompts x {NEW_TOKENS} tokens: {equal} of {N_PROMPTS} texts equal; "
          f"shared leading tokens {prefix} (mean {np.mean(prefix):.1f})")
    assert equal >= EQUAL_MIN
    assert np.mean(prefix) >= PREFIX_MIN
