"""Likelihood probe: which directions make the model's reference solutions more likely?

For each direction d and sign s, steer by ``s * alpha`` (runtime hooks, :func:`skillray.steer.steer`)
and measure the mean, over dev records, of the mean log-probability of the response (last
assistant turn) tokens given everything before them; the score is the change from the
unsteered model. Forward passes only: ``ceil(n_dev / batch_size)`` per row, plus the same for
the unsteered baseline.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from skillray.extract.tokenize import Tokenized


def response_loglik(model, tok: Tokenized, batch_size: int = 8, pad_id: int = 0) -> tuple[torch.Tensor, int]:
    """Mean log-probability of each record's response tokens (teacher forcing).

    Parameters
    ----------
    model : causal LM (called as ``model(input_ids, attention_mask).logits``, shape (B, T, V)).
    tok : Tokenized records; records whose response was cut away entirely must be dropped first.

    Returns
    -------
    (loglik, passes): tensor of shape (N,) (differentiable when grad is on), forward passes made.
    Right padding, masked out; position t's logits score token t+1.
    """
    n = len(tok.input_ids)
    out, passes = [], 0
    dev = next(model.parameters()).device
    for a in range(0, n, batch_size):
        seqs = tok.input_ids[a:a + batch_size]
        starts = tok.response_start[a:a + batch_size]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=dev)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        passes += 1
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V) predicts tokens 1..T-1
        tgt = torch.gather(logp, 2, ids[:, 1:, None])[..., 0]  # (B, T-1)
        pos = torch.arange(1, T, device=dev)[None, :]  # (1, T-1): index of the predicted token
        lens = mask.sum(1, keepdim=True)  # (B, 1)
        st = torch.as_tensor(np.maximum(starts, 1), device=dev)[:, None]  # token 0 has no prediction
        resp = (pos >= st) & (pos < lens)  # (B, T-1)
        out.append((tgt * resp).sum(1) / resp.sum(1).clamp(min=1))
    return torch.cat(out), passes


def likelihood_probe(
    model,
    tok: Tokenized,
    vectors: Callable[[int, int], object],
    directions: Sequence[int],
    batch_size: int = 8,
    pad_id: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Rank (direction, sign) pairs by the change in mean response log-likelihood.

    Parameters
    ----------
    model : causal LM, unchanged on return (hooks are removed).
    tok : Tokenized dev records, each with at least one response token.
    vectors : ``vectors(direction, sign) -> SteeringVector`` (alpha and mode already applied).
    directions : directions to probe; each is tried with sign +1 and -1.

    Returns
    -------
    (rows, base): rows sorted by ``delta_loglik`` descending (ties: lower direction, + first),
    each ``{rank, direction, sign, loglik, delta_loglik, delta_se, forward_passes}``; base =
    ``{loglik, forward_passes, n_dev}`` of the unsteered model. ``delta_se`` is the standard
    error of the per-record deltas' mean.
    """
    from skillray.steer import steer

    total = 1 + 2 * len(directions)
    with torch.no_grad():
        base, base_passes = response_loglik(model, tok, batch_size, pad_id)  # (N,)
        if progress:
            progress(1, total)
        rows = []
        for d in directions:
            for s in (1, -1):
                with steer(model, vectors(int(d), s)):
                    ll, passes = response_loglik(model, tok, batch_size, pad_id)
                diff = (ll - base).double().cpu().numpy()  # (N,)
                se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
                rows.append({"direction": int(d), "sign": s, "loglik": float(ll.mean()),
                             "delta_loglik": float(diff.mean()), "delta_se": se, "forward_passes": passes})  # fmt: skip
                if progress:
                    progress(1 + len(rows), total)
    rows.sort(key=lambda r: (-r["delta_loglik"], r["direction"], -r["sign"]))
    for i, r in enumerate(rows):
        r["rank"] = i
    return rows, {"loglik": float(base.mean()), "forward_passes": base_passes, "n_dev": len(tok.input_ids)}


def markdown_table(rows: list[dict], base: dict, labels: dict[int, str] | None = None) -> str:
    """The ranked rows as a Markdown table (with the direction's label when known)."""
    lines = [f"Unsteered mean response log-likelihood: {base['loglik']:.4f} over {base['n_dev']} dev records "
             f"({base['forward_passes']} forward passes).", "",
             "| rank | direction | sign | label | delta loglik | se | forward passes |",
             "|---:|---:|:---:|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lab = (labels or {}).get(r["direction"], "")
        lines.append(f"| {r['rank']} | d{r['direction']} | {'+' if r['sign'] == 1 else '-'} | {lab} | "
                     f"{r['delta_loglik']:+.5f} | {r['delta_se']:.5f} | {r['forward_passes']} |")  # fmt: skip
    return "\n".join(lines) + "\n"
