"""How well a cheap probe's ranking of (direction, sign) pairs agrees with an expensive one's."""

from __future__ import annotations

import math
import warnings


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def rank_agreement(cheap: dict[tuple[int, int], float], expensive: dict[tuple[int, int], float]) -> dict:
    """Spearman's rho, Kendall's tau-b (scipy, ties averaged) and top-1 agreement over the common pairs.

    Parameters
    ----------
    cheap, expensive : {(direction, sign): score}, higher = more useful.

    Returns
    -------
    {n_pairs, spearman, spearman_p, kendall, kendall_p, top1_agree, cheap_top, expensive_top, note}.
    ``top1_agree``: the cheap probe's best pair is among the expensive probe's best (tied) pairs.
    A correlation is None where it is undefined (fewer than 2 pairs, or a constant ranking: say
    every accuracy change is 0 on a tiny dev set), and ``note`` says why.
    """
    from scipy.stats import kendalltau, spearmanr

    pairs = sorted(set(cheap) & set(expensive))
    a = [float(cheap[p]) for p in pairs]
    b = [float(expensive[p]) for p in pairs]
    out = {"n_pairs": len(pairs), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None,
           "top1_agree": None, "cheap_top": None, "expensive_top": None, "note": ""}  # fmt: skip
    if not pairs:
        out["note"] = "no (direction, sign) pair was ranked by both probes"
        return out

    def best(scores: dict) -> list[tuple[int, int]]:
        top = max(scores[p] for p in pairs)
        return [p for p in pairs if scores[p] == top]

    ct, et = best(cheap), best(expensive)
    # the cheap probe's single pick (ties: lower direction, + first, as the tables order them)
    pick = sorted(ct, key=lambda p: (p[0], -p[1]))[0]
    out["cheap_top"] = f"d{pick[0]}{'+' if pick[1] == 1 else '-'}"
    out["expensive_top"] = ", ".join(f"d{d}{'+' if s == 1 else '-'}" for d, s in sorted(et, key=lambda p: (p[0], -p[1])))
    out["top1_agree"] = pick in et
    if len(pairs) < 2:
        out["note"] = "one pair: no rank correlation"
    elif len(set(a)) == 1 or len(set(b)) == 1:
        which = "cheap" if len(set(a)) == 1 else "expensive"
        out["note"] = f"the {which} probe gives every pair the same score: rank correlation undefined"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = spearmanr(a, b)
            tau = kendalltau(a, b)
        out.update(spearman=_finite(rho.statistic), spearman_p=_finite(rho.pvalue), kendall=_finite(tau.statistic),
                   kendall_p=_finite(tau.pvalue))  # fmt: skip
    return out
