"""Pooling a batch of residual-stream states into one vector per sequence (padding masked)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Pooling = Literal["mean", "response_mean", "last"]


def pooling_mask(
    lengths: torch.Tensor, response_start: torch.Tensor, T: int, pooling: Pooling, skip: int = 0
) -> torch.Tensor:
    """Weights (B, T) float: which positions each sequence's vector averages over.

    Right padding is assumed (sequence b occupies positions 0 .. lengths[b]-1). The means
    leave out the first ``skip`` positions (a prefix every record shares: a causal model's
    states there are the same in every record, so they would only add a constant weighted by
    ``skip / length``). For ``response_mean`` a sequence with no response token left falls
    back to the ``mean`` positions, and a sequence no longer than ``skip`` to all its tokens
    (the caller counts those). ``last`` reads the last token whatever ``skip`` is.
    """
    pos = torch.arange(T, device=lengths.device)[None, :]  # (1, T)
    valid = pos < lengths[:, None]  # (B, T)

    def nonempty(m: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        return torch.where(m.any(1, keepdim=True), m, fallback)

    if pooling == "mean":
        m = nonempty(valid & (pos >= skip), valid)
    elif pooling == "response_mean":
        mean = nonempty(valid & (pos >= skip), valid)
        m = nonempty(valid & (pos >= torch.clamp(response_start, min=skip)[:, None]), mean)
    elif pooling == "last":
        m = pos == (lengths[:, None] - 1)
    else:
        raise ValueError(f"pooling={pooling!r}; expected one of 'mean', 'response_mean', 'last'")
    w = m.float()
    return w / w.sum(1, keepdim=True)


def pooled_counts(lengths: np.ndarray, response_start: np.ndarray, pooling: Pooling, skip: int = 0) -> np.ndarray:
    """(N,) int64: tokens each sequence's vector averages over, by the rules of :func:`pooling_mask`.

    ``last`` counts the whole sequence: the context its last state has read.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if pooling == "last":
        return lengths
    mean = np.where(lengths > skip, lengths - skip, lengths)
    if pooling == "mean":
        return mean
    start = np.maximum(np.asarray(response_start, dtype=np.int64), skip)
    return np.where(lengths > start, lengths - start, mean)


def pool(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H), weights (B, T) -> (B, H) float32."""
    return torch.einsum("bth,bt->bh", hidden.float(), weights)
