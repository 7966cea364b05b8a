"""Pooling a batch of residual-stream states into one vector per sequence (padding masked)."""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["mean", "response_mean", "last"]


def pooling_mask(lengths: torch.Tensor, response_start: torch.Tensor, T: int, pooling: Pooling) -> torch.Tensor:
    """Weights (B, T) float: which positions each sequence's vector averages over.

    Right padding is assumed (sequence b occupies positions 0 .. lengths[b]-1). For
    ``response_mean`` a sequence with no response token left falls back to all its tokens
    (the caller counts those).
    """
    pos = torch.arange(T, device=lengths.device)[None, :]  # (1, T)
    valid = pos < lengths[:, None]  # (B, T)
    if pooling == "mean":
        m = valid
    elif pooling == "response_mean":
        m = valid & (pos >= response_start[:, None])
        m = torch.where(m.any(1, keepdim=True), m, valid)
    elif pooling == "last":
        m = pos == (lengths[:, None] - 1)
    else:
        raise ValueError(f"pooling={pooling!r}; expected one of 'mean', 'response_mean', 'last'")
    w = m.float()
    return w / w.sum(1, keepdim=True)


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H), weights (B, T) -> (B, H) float32."""
    return torch.einsum("bth,bt->bh", hidden.float(), weights)
