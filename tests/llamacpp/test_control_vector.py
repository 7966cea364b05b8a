"""A `SteeringVector.to_gguf` control vector, loaded by llama.cpp itself, steers like skillray's HF hooks.

llama.cpp's server (built from PyPI's llama-cpp-python sdist by `make test-llamacpp`) loads the
offline SmolLM2 GGUF with the exported file through its own loader (`--control-vector-scaled
FILE:SCALE`), and `/completion` with `n_probs` gives the next-token log-probabilities. The same
prompts (as token ids, so both sides see the same tokens) run through the HF model with
:func:`skillray.steer.hooks.steer`. Checked: the change steered minus unsteered correlates between
the two, the negated vector moves the other way, a zero scale changes nothing, a vector over many
blocks (llama.cpp's first slot to its last) steers alike, and the block llama.cpp steers is the one
the vector names (the HF deltas at the neighbouring blocks fit worse).

The test needs the built server: $SKILLRAY_LLAMA_SERVER, else .llamacpp/build/bin/llama-server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("SKILLRAY_LLAMA_SERVER") or str(ROOT / ".llamacpp" / "build" / "bin" / "llama-server")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(SERVER).is_file(),
        reason=f"needs llama.cpp's llama-server: {SERVER} not found; `make test-llamacpp` builds it in .llamacpp "
        "(or set SKILLRAY_LLAMA_SERVER to a llama-server binary)",
    ),
]

PROMPTS = [
    "The weather today is",
    "When I think about tomorrow, I feel",
    "The story of the old house ends with",
    "My neighbour told me that the news was",
    "Walking home in the evening, she was",
]
# Two sets whose mean hidden states differ along a direction the model can express: a repeng-style
# contrast vector (mean of one set minus mean of the other) at one block.
POSITIVE = ["I am so happy and delighted!", "What a wonderful, joyful day.", "I love this, it is fantastic."]
NEGATIVE = ["I am so sad and miserable.", "What a terrible, gloomy day.", "I hate this, it is awful."]
LAYER = 14  # a middle block of the 30; direction.14 in the GGUF
SPREAD = (1, 6, 14, 22, 29)  # blocks of a vector over many layers: llama.cpp's first slot (1) to its last (29)
N_PROBS = 100  # top tokens llama.cpp reports per prompt; the comparison uses the ones in every run's top set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, log: Path, control: list[tuple[Path, float]] | None = None):
    """A llama-server on 127.0.0.1 with the given control vectors (its log to ``log``); yields its base URL."""
    port = _free_port()
    cmd = [SERVER, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
           "-t", str(os.cpu_count() or 1), "--no-webui", "-np", "1", "--no-repack"]  # fmt: skip
    # --no-repack: with weight repacking on, this build's AMX kernels (GGML_NATIVE on a Xeon with AMX) segfault in
    # ggml_backend_amx_mul_mat on the first decode of this Q4_1 model; the plain CPU kernels are llama.cpp's too.
    for path, scale in control or []:
        cmd += ["--control-vector-scaled", f"{path}:{scale}"]
    logf = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not report healthy within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()


def llama_logprobs(url: str, prompts_ids: list[list[int]]) -> list[dict[int, float]]:
    """Next-token log-probabilities (top N_PROBS, token id -> logprob) after each prompt."""
    out = []
    for ids in prompts_ids:
        body = {"prompt": ids, "n_predict": 1, "n_probs": N_PROBS, "temperature": 0.0, "cache_prompt": False}
        req = urllib.request.Request(
            url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            resp = json.loads(r.read())
        top = resp["completion_probabilities"][0]["top_logprobs"]
        out.append({int(t["id"]): float(t["logprob"]) for t in top})
    return out


def hf_logprobs(model, prompts_ids: list[list[int]], vector=None) -> np.ndarray:
    """(n_prompts, vocab) next-token log-probabilities from the HF model, steered by the hooks when given."""
    import torch

    from skillray.steer.hooks import steer

    rows = []
    with torch.no_grad():
        for ids in prompts_ids:
            x = torch.tensor([ids])
            if vector is None:
                logits = model(x).logits
            else:
                with steer(model, vector, positions="all"):
                    logits = model(x).logits
            rows.append(torch.log_softmax(logits[0, -1].double(), -1).numpy())
    return np.stack(rows)


def contrast_vector(model, tok, layers: tuple[int, ...], norm: float):
    """Per block: mean output over POSITIVE minus over NEGATIVE (all positions), scaled to ``norm``."""
    import torch

    from skillray.steer.vector import SteeringVector

    def mean(texts, layer):
        with torch.no_grad():
            hs = [model(torch.tensor([tok(t)["input_ids"]]), output_hidden_states=True).hidden_states[layer + 1][0]
                  for t in texts]  # fmt: skip
        return torch.cat(hs).mean(0).double().numpy()

    rows = []
    for layer in layers:
        d = mean(POSITIVE, layer) - mean(NEGATIVE, layer)
        rows.append(d * norm / np.linalg.norm(d))
    return SteeringVector(layers, np.stack(rows).astype(np.float32), "SmolLM2-135M-Instruct")


def _on_common_tokens(runs: list[dict[int, float]]) -> list[int]:
    """Token ids present in the top-N_PROBS set of every run (llama.cpp reports no more than that)."""
    common = set(runs[0])
    for r in runs[1:]:
        common &= set(r)
    return sorted(common)


@pytest.fixture(scope="module")
def runs(smollm2, tmp_path_factory):
    """Next-token log-probabilities on PROMPTS: HF (unsteered, steered at LAYER and its neighbours, negated)
    and llama.cpp (no control vector, the exported file at scales 1, -1 and 0)."""
    import torch

    from skillray.models import _builtin_gguf, load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = load_model(smollm2, torch.float32), load_tokenizer(smollm2)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    vec = contrast_vector(model, tok, (LAYER,), norm=32.0)  # the residual stream's norm there is ~145
    spread = contrast_vector(model, tok, SPREAD, norm=12.0)  # several tensors in one file, the last block included
    hf = {"base": hf_logprobs(model, ids), "plus": hf_logprobs(model, ids, vec),
          "minus": hf_logprobs(model, ids, vec.scaled(-1)), "spread": hf_logprobs(model, ids, spread)}  # fmt: skip
    for shift in (-1, 1):  # the same vector at the neighbouring blocks: what an off-by-one export would steer
        moved = type(vec)((LAYER + shift,), vec.vectors, vec.model)
        hf[f"at{shift:+d}"] = hf_logprobs(model, ids, moved)
    tmp = tmp_path_factory.mktemp("llamacpp")
    path, spread_path = vec.to_gguf(tmp / "skill.gguf"), spread.to_gguf(tmp / "spread.gguf")
    gguf = _builtin_gguf()
    llama = {}
    for name, control in [("base", None), ("plus", [(path, 1.0)]), ("minus", [(path, -1.0)]), ("zero", [(path, 0.0)]),
                          ("spread", [(spread_path, 1.0)])]:  # fmt: skip
        with llama_server(gguf, tmp / f"server-{name}.log", control) as url:
            llama[name] = llama_logprobs(url, ids)
    return hf, llama


def _deltas(hf, llama, steered: str, hf_steered: str | None = None):
    """Concatenated over prompts: (llama.cpp steered - unsteered, HF steered - unsteered) on common tokens."""
    a, b = [], []
    for i in range(len(PROMPTS)):
        toks = _on_common_tokens([llama["base"][i], llama[steered][i]])
        a += [llama[steered][i][t] - llama["base"][i][t] for t in toks]
        b += [hf[hf_steered or steered][i, t] - hf["base"][i, t] for t in toks]
    return np.array(a), np.array(b)


def test_unsteered_llamacpp_matches_hf(runs):
    """The baseline both sides share: llama.cpp's Q4_1 kernels vs HF's dequantized float32 weights."""
    hf, llama = runs
    for i in range(len(PROMPTS)):
        toks = sorted(llama["base"][i])
        a = np.array([llama["base"][i][t] for t in toks])
        b = hf["base"][i, toks]
        assert max(llama["base"][i], key=llama["base"][i].get) == int(np.argmax(hf["base"][i])), PROMPTS[i]
        assert np.corrcoef(a, b)[0, 1] > 0.98, PROMPTS[i]  # 0.991-0.998 measured (AMX Xeon, --no-repack)


def test_control_vector_steers_like_the_hf_hooks(runs):
    hf, llama = runs
    a, b = _deltas(hf, llama, "plus")  # measured: corr 0.991, size ratio 1.01
    assert np.abs(b).mean() > 0.2, "the test vector barely moves HF's log-probabilities; make it stronger"
    r, ratio = np.corrcoef(a, b)[0, 1], np.linalg.norm(a) / np.linalg.norm(b)
    assert r > 0.9, f"llama.cpp vs HF hooks: corr {r:.3f}"
    assert 0.7 < ratio < 1.4, f"|llama.cpp change| / |HF change| = {ratio:.2f}"  # the same push, not just the sign


def test_negated_vector_moves_the_other_way_and_zero_not_at_all(runs):
    hf, llama = runs
    a, b = _deltas(hf, llama, "minus")
    r = np.corrcoef(a, b)[0, 1]
    assert r > 0.9, f"llama.cpp at scale -1 vs HF hooks with -v: corr {r:.3f}"
    a, b = _deltas(hf, llama, "minus", "plus")  # the sign is not lost: -1 in llama.cpp is not HF's +v
    r = np.corrcoef(a, b)[0, 1]
    assert r < 0, f"llama.cpp at scale -1 vs HF hooks with +v: corr {r:.3f} (measured -0.44)"
    for i in range(len(PROMPTS)):
        assert llama["zero"][i].keys() == llama["base"][i].keys()
        assert max(abs(llama["zero"][i][t] - llama["base"][i][t]) for t in llama["base"][i]) < 1e-3


def test_llamacpp_steers_the_block_the_vector_names(runs):
    """`direction.<n>` is added after 0-based block n in llama.cpp, as `layers` means in skillray: the HF change
    with the vector at LAYER fits llama.cpp's better than with it one block earlier or later."""
    hf, llama = runs
    err = {}
    for name in ("plus", "at-1", "at+1"):
        a, b = _deltas(hf, llama, "plus", name)
        err[name] = float(np.sqrt(np.mean((a - b) ** 2)))
    assert err["plus"] < 0.6 * min(err["at-1"], err["at+1"]), err  # measured 0.10 vs 0.47 / 0.35


def test_a_vector_over_many_blocks_steers_like_the_hf_hooks(runs):
    hf, llama = runs
    a, b = _deltas(hf, llama, "spread")
    assert np.abs(b).mean() > 0.2, "the spread test vector barely moves HF's log-probabilities; make it stronger"
    r, ratio = np.corrcoef(a, b)[0, 1], np.linalg.norm(a) / np.linalg.norm(b)
    assert r > 0.9, f"llama.cpp vs HF hooks, blocks {SPREAD}: corr {r:.3f}"
    assert 0.7 < ratio < 1.4, f"|llama.cpp change| / |HF change| = {ratio:.2f}"
