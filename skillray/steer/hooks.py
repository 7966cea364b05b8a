"""Runtime steering of Hugging Face models with forward hooks.

    with steer(model, vector, positions="all"):
        model.generate(...)

The hooks add ``vector.vectors[j]`` to the output of block ``vector.layers[j]``; they are
removed on exit, also when the body raises. The model's weights are never touched.

``positions``:

* ``all``: every position of every forward (prompt and generated tokens): the same model
  as the bias-folded checkpoint.
* ``prompt``: only forwards without a filled KV cache, i.e. the prompt (prefill) and
  plain forward calls.
* ``generated``: only forwards with a filled KV cache, i.e. the tokens produced by
  ``generate`` (each is steered when it is fed back in).

Padding needs no special case: pad positions are masked out of attention, so what is
added there never reaches a real token (left padding in batched generate included).

Per-row steering (for servers batching requests with different specs): pass a list with
one SteeringVector or None per batch row.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

from skillray.models import decoder_blocks
from skillray.steer.vector import SteeringError, SteeringVector

Positions = Literal["all", "prompt", "generated"]


def _cache_len(kwargs: dict) -> int:
    cache = kwargs.get("past_key_values")
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except (AttributeError, TypeError):  # legacy tuple caches
        return int(cache[0][0].shape[-2]) if len(cache) else 0


def _deltas(
    model: nn.Module, vector: SteeringVector | Sequence[SteeringVector | None], device, dtype
) -> dict[int, torch.Tensor]:
    """Block index -> tensor to add: (H,) for one vector, (B, 1, H) for per-row vectors."""
    n_blocks = len(decoder_blocks(model))
    hidden = int(model.config.hidden_size)
    rows = [vector] if isinstance(vector, SteeringVector) else list(vector)
    for r, v in enumerate(rows):
        if v is None:
            continue
        where = "" if isinstance(vector, SteeringVector) else f"row {r}: "
        if v.hidden_size != hidden:
            raise SteeringError(f"{where}vector hidden size {v.hidden_size} != model hidden size {hidden}")
        bad = [i for i in v.layers if i >= n_blocks]
        if bad:
            raise SteeringError(f"{where}layer {bad[0]} out of range for a {n_blocks}-block model")
    if isinstance(vector, SteeringVector):
        return {i: torch.tensor(v, device=device, dtype=dtype) for i, v in vector.as_dict().items()}
    layers = sorted({i for v in rows if v is not None for i in v.layers})
    out = {}
    for i in layers:
        t = torch.zeros(len(rows), 1, hidden, dtype=dtype, device=device)
        for r, v in enumerate(rows):
            if v is not None and i in v.layers:
                t[r, 0] = torch.tensor(v.vectors[v.layers.index(i)], dtype=dtype, device=device)
        out[i] = t
    return out


@contextlib.contextmanager
def steer(
    model: nn.Module, vector: SteeringVector | Sequence[SteeringVector | None], positions: Positions = "all"
) -> Iterator[nn.Module]:
    """Add steering vectors to the residual stream of ``model`` inside the block (see module doc)."""
    if positions not in ("all", "prompt", "generated"):
        raise SteeringError(f"positions {positions!r}: expected 'all', 'prompt' or 'generated'")
    p = next(model.parameters())
    deltas = _deltas(model, vector, p.device, p.dtype)
    blocks = decoder_blocks(model)
    state = {"prefill": True}

    def phase(_module, _args, kwargs):
        state["prefill"] = _cache_len(kwargs) == 0

    def make_hook(delta: torch.Tensor):
        def hook(_module, _inp, out):
            if (positions == "prompt" and not state["prefill"]) or (positions == "generated" and state["prefill"]):
                return None
            if isinstance(out, tuple):
                return (out[0] + delta,) + tuple(out[1:])
            return out + delta

        return hook

    handles = [model.register_forward_pre_hook(phase, with_kwargs=True)]
    try:
        for i, d in deltas.items():
            handles.append(blocks[i].register_forward_hook(make_hook(d)))
        yield model
    finally:
        for h in handles:
            h.remove()
