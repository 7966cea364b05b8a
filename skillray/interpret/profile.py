"""Skill profiles: every example's projection on every direction, the poles of each direction, example texts.

Two views of "how much of direction v is in example x":

* ``centered``: ``(x - mean) . v``, the basis' own coordinates (what PCA ranks by);
* ``cosine``: ``cos(x, v) = x . v / |x|`` of the uncentred rows (the seed's view): large for
  examples whose whole activation points along v, including the shared mean.

Rows are read as the basis was fitted (standardised when the store was extracted with
``standardize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skillray.corpus.records import Record

CUT_MARK = " [...]"


def project(basis, store, kind: str = "centered") -> np.ndarray:
    """Projections of every store row on every direction.

    Parameters
    ----------
    basis : fitted SkillBasis with ``components_`` of shape (k, D)
    store : ActivationStore with D-dimensional rows
    kind : "centered" or "cosine"

    Returns
    -------
    ndarray of shape (N, k), float64, rows in store order.
    """
    if kind == "centered":
        return np.asarray(basis.transform(store), dtype=np.float64)
    if kind != "cosine":
        raise ValueError(f"projection={kind!r}: expected 'centered' or 'cosine'")
    comps = np.asarray(basis.components_, dtype=np.float64)  # (k, D), unit rows
    out = []
    for i in range(len(store.shards)):
        x = np.asarray(store.load_shard(i), dtype=np.float64)  # (n_i, D)
        norms = np.linalg.norm(x, axis=1, keepdims=True)  # (n_i, 1)
        out.append((x @ comps.T) / np.maximum(norms, 1e-30))
    return np.concatenate(out) if out else np.zeros((0, comps.shape[0]))


@dataclass(frozen=True)
class Poles:
    """Row indices of one direction's poles, most extreme first.

    ``top``/``bottom`` (n_label each) go to the labeller; ``held_top``/``held_bottom`` (n_held
    each) are the next most extreme rows, never shown to the labeller, for the judge.
    """

    top: np.ndarray
    bottom: np.ndarray
    held_top: np.ndarray
    held_bottom: np.ndarray


def pole_sizes(n_rows: int, top_n: int, n_heldout: int) -> tuple[int, int]:
    """(labelled, held-out) rows per pole; shrunk in proportion when the corpus has fewer than
    ``2 * (top_n + n_heldout)`` rows, so the two poles never share a row."""
    per_pole = min(top_n + n_heldout, n_rows // 2)
    if per_pole < 1:
        raise ValueError(f"interpret needs at least 2 examples (one per pole); the store has {n_rows}")
    if per_pole == top_n + n_heldout:
        return top_n, n_heldout
    n_label = max(1, min(top_n, int(np.ceil(per_pole * top_n / (top_n + n_heldout)))))
    return n_label, min(n_heldout, per_pole - n_label)


def split_poles(z: np.ndarray, n_label: int, n_held: int) -> Poles:
    """Poles of one direction from its projections ``z`` of shape (N,); ties keep store order."""
    order = np.argsort(-z, kind="stable")  # (N,) highest first
    low = np.argsort(z, kind="stable")  # (N,) lowest first
    return Poles(
        top=order[:n_label],
        bottom=low[:n_label],
        held_top=order[n_label : n_label + n_held],
        held_bottom=low[n_label : n_label + n_held],
    )


def record_text(record: Record) -> str:
    """A record as plain text for people and labellers: the text, or the chat's turns without system prompts."""
    if record.text is not None:
        return record.text
    turns = [m for m in record.messages if m["role"] != "system"] or list(record.messages)
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def cut_to_tokens(texts: list[str], tokenizer, max_tokens: int) -> tuple[list[str], list[int], list[int]]:
    """Cut each text after ``max_tokens`` tokens (at a token boundary, marked with " [...]").

    Returns
    -------
    texts : list of str, cut
    n_tokens : list of int, tokens of each text before cutting
    n_cut : list of int, tokens removed from each text (0 = whole)
    """
    if not texts:
        return [], [], []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out, n_tokens, n_cut = [], [], []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        n_tokens.append(len(ids))
        if len(ids) <= max_tokens:
            out.append(text)
            n_cut.append(0)
            continue
        end = offsets[max_tokens - 1][1]  # character end of the last kept token
        out.append(text[:end] + CUT_MARK)
        n_cut.append(len(ids) - max_tokens)
    return out, n_tokens, n_cut
