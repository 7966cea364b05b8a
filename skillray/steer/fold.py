"""Bias-folded checkpoints: a steering vector baked into the MLP down-projection bias.

The output of block ``i`` is ``h + attn(...) + mlp(...)``; giving the MLP's down projection
the bias ``v_i`` adds ``v_i`` to that output at every position, which is exactly what the
hook path does with ``positions="all"``. The checkpoint is a plain Llama-architecture
folder with ``mlp_bias: true`` (gate/up biases zero), which transformers and stock vLLM
load as is, so steered generation runs at full speed with CUDA graphs.

The original weight files are hard-linked (copied across filesystems) unchanged; the new
biases go into one extra safetensors file listed in ``model.safetensors.index.json``.

With no vector, every down-projection bias is zero: the same model as the original, but with
bias tensors a running vLLM engine can overwrite in place to swap steering vectors without a
restart (``skillray.eval.vllm_ext``).

Architectures: Llama as is; Mistral (no sliding window) and Qwen2 (no sliding window) are
rewritten as Llama, which has the same tensor names (Qwen2's q/k/v biases ride on
``attention_bias: true`` with a zero o-projection bias). Others have no MLP-bias option in
vLLM: steer them with the hook path or per-request steering in ``skillray serve``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from skillray.steer.vector import SteeringError, SteeringVector

BIAS_FILE = "steering-bias.safetensors"
INDEX = "model.safetensors.index.json"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _as_llama(cfg: dict) -> tuple[dict, bool]:
    """Config rewritten for the Llama architecture with MLP biases; (config, needs zero o_proj bias)."""
    mt = cfg.get("model_type")
    out = dict(cfg)
    zero_o_bias = False
    if mt == "llama":
        if cfg.get("mlp_bias"):
            raise SteeringError("this checkpoint already has MLP biases; fold into its base model instead")
    elif mt == "mistral":
        if cfg.get("sliding_window") not in (None, 0) and cfg["sliding_window"] < cfg.get("max_position_embeddings", 0):
            raise SteeringError("Mistral with a sliding window cannot be served as Llama; use the hook path")
    elif mt == "qwen2":
        if cfg.get("use_sliding_window"):
            raise SteeringError("Qwen2 with use_sliding_window cannot be served as Llama; use the hook path")
        out["attention_bias"] = True
        zero_o_bias = True
    else:
        raise SteeringError(
            f"model_type {mt!r} has no MLP-bias option in vLLM, so a bias-folded checkpoint cannot be made; "
            "steer it with the hook path (skillray.steer.steer) or per-request steering in `skillray serve`"
        )
    out.update(model_type="llama", architectures=["LlamaForCausalLM"], mlp_bias=True)
    return out, zero_o_bias


def check_fits(vector: SteeringVector, n_layers: int, hidden_size: int) -> None:
    """Raise SteeringError unless ``vector`` fits a model of ``n_layers`` blocks of width ``hidden_size``."""
    if vector.hidden_size != hidden_size:
        raise SteeringError(f"vector hidden size {vector.hidden_size} != model hidden size {hidden_size}")
    if vector.layers and vector.layers[-1] >= n_layers:
        raise SteeringError(f"layer {vector.layers[-1]} out of range for a {n_layers}-block model")


def fold_checkpoint(model_path: str | Path, vector: SteeringVector | None, out_dir: str | Path) -> Path:
    """Write a steered copy of the checkpoint at ``model_path`` (a local HF folder) to ``out_dir``.

    ``vector=None`` writes the zero-bias (steerable, unsteered) copy."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from skillray.artifacts import atomic_write_json

    src, out = Path(model_path), Path(out_dir)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: not a Hugging Face model folder (no config.json)")
    cfg = json.loads((src / "config.json").read_text())
    new_cfg, zero_o_bias = _as_llama(cfg)
    L, H, inter = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    if vector is not None:
        check_fits(vector, L, H)

    if (src / INDEX).is_file():
        weight_map = dict(json.loads((src / INDEX).read_text())["weight_map"])
        files = sorted(set(weight_map.values()))
        renames = {f: f for f in files}
    elif (src / "model.safetensors").is_file():
        # A single file must not keep its name: transformers would load it and skip the index.
        renames = {"model.safetensors": "model-base.safetensors"}
        with safe_open(src / "model.safetensors", "pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        raise FileNotFoundError(f"{src}: no safetensors weights (model.safetensors or {INDEX})")
    name = "model.layers.{}.mlp.down_proj.weight"
    with safe_open(src / weight_map[name.format(0)], "pt") as f:
        dtype = f.get_slice(name.format(0)).get_dtype()
    torch_dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[dtype]

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    steer = vector.as_dict() if vector is not None else {}
    bias: dict[str, torch.Tensor] = {}
    for i in range(L):
        p = f"model.layers.{i}"
        bias[f"{p}.mlp.gate_proj.bias"] = torch.zeros(inter, dtype=torch_dtype)
        bias[f"{p}.mlp.up_proj.bias"] = torch.zeros(inter, dtype=torch_dtype)
        v = steer.get(i)
        bias[f"{p}.mlp.down_proj.bias"] = (torch.zeros(H) if v is None else torch.tensor(v)).to(torch_dtype)
        if zero_o_bias:
            bias[f"{p}.self_attn.o_proj.bias"] = torch.zeros(H, dtype=torch_dtype)
    clash = [k for k in bias if k in weight_map]
    if clash:
        raise SteeringError(f"the checkpoint already has {clash[0]}; cannot fold a bias into it")
    save_file(bias, str(tmp / BIAS_FILE), metadata={"format": "pt"})
    for f in sorted(set(weight_map.values())):
        _link_or_copy(src / f, tmp / renames[f])
    new_map = {k: renames[f] for k, f in weight_map.items()}
    new_map.update({k: BIAS_FILE for k in bias})
    size = sum((tmp / f).stat().st_size for f in set(new_map.values()))
    atomic_write_json(tmp / INDEX, {"metadata": {"total_size": size}, "weight_map": dict(sorted(new_map.items()))})
    for f in src.iterdir():  # tokenizer, chat template, generation config, ...
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", INDEX):
            shutil.copy2(f, tmp / f.name)
    atomic_write_json(tmp / "config.json", new_cfg)
    if vector is not None:
        vector.save(tmp / "steering")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
