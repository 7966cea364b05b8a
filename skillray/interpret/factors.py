"""What each direction aligns with: every direction's projections against every known factor of the records.

Factors, in this order:

* ``tokens`` (always, numeric): the tokens each pooled vector averages over (the store's
  ``n_pooled``; for an older store the whole sequence);
* ``skill`` (categorical), when any record has one;
* every key of ``Record.metadata``: strings and bools are categorical, numbers numeric;
* the template: ``format`` (chat or text), ``system_prompt`` (the system turn's text) and
  ``turns`` (messages per record), all categorical.

A categorical factor is measured by the correlation ratio eta^2 (the share of the projection's
variance that lies between the factor's levels; 0..1), a numeric one by Spearman's rho (-1..1).
A factor with fewer than two levels has no association (reported as single-level, value None).
A direction is flagged ``length`` when the token count is its strongest factor (eta^2 compared
with rho^2) and ``|rho(tokens)| >= LENGTH_FLAG``, and ``template`` when a template factor has
``eta^2 >= TEMPLATE_FLAG``. Intervals: percentile bootstrap over records
(scipy.stats.bootstrap, paired, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from skillray.corpus.records import CorpusError, Record

FORMAT = "skillray.factors/1"
FACTORS_JSON = "factors.json"
FACTORS_MD = "factors.md"
LENGTH_FLAG = 0.7  # |Spearman rho| with the token count at or above which a direction is "mostly length"
TEMPLATE_FLAG = 0.5  # eta^2 with a template factor at or above which a direction is "template"
TEMPLATE_FACTORS = ("format", "system_prompt", "turns")
_BUILTIN = ("tokens", "skill") + TEMPLATE_FACTORS
_MAX_BOOTSTRAP_LEVELS = 64  # more levels than this: point value only (each level costs a pass per resample)


@dataclass(frozen=True)
class Factor:
    """One factor over the N records.

    ``values``: (N,) float64 for numeric factors (NaN = missing), (N,) int64 level codes for
    categorical ones (-1 = missing), whose names are ``level_names``.
    """

    name: str
    kind: Literal["categorical", "numeric"]
    source: Literal["store", "skill", "metadata", "template"]
    values: np.ndarray
    level_names: tuple[str, ...] | None = None

    @property
    def present(self) -> np.ndarray:
        return self.values >= 0 if self.kind == "categorical" else ~np.isnan(self.values)

    @property
    def n_levels(self) -> int:
        return len(np.unique(self.values[self.present]))

    @property
    def single_level(self) -> bool:
        return self.n_levels < 2


def _categorical(name: str, source: str, values: list) -> Factor:
    names = sorted({str(v) for v in values if v is not None})
    code = {n: i for i, n in enumerate(names)}
    codes = np.array([-1 if v is None else code[str(v)] for v in values], dtype=np.int64)
    return Factor(name, "categorical", source, codes, tuple(names))


def record_factors(records: list[Record], tokens: np.ndarray) -> list[Factor]:
    """The factors of ``records`` (in the order of the projections' rows); ``tokens`` is (N,) counts.

    Raises CorpusError naming the record and the key when a metadata key is present in some
    records but not in others (None is a present, unknown value).
    """
    factors = [Factor("tokens", "numeric", "store", np.asarray(tokens, dtype=np.float64))]
    if any(r.skill is not None for r in records):
        factors.append(_categorical("skill", "skill", [r.skill for r in records]))
    keys: dict[str, str] = {}  # key -> the first record that has it
    for r in records:
        for key in r.metadata or {}:
            keys.setdefault(key, r.id)
    for key, first in keys.items():
        lacking = [r.id for r in records if key not in (r.metadata or {})]
        if lacking:
            raise CorpusError(
                f"record {lacking[0]!r} has no metadata key {key!r}, which record {first!r} has "
                f"({len(lacking)} of {len(records)} records lack it); give every record the key "
                "(null for unknown) or leave it out of the corpus"
            )
        values = [r.metadata[key] for r in records]
        name = f"metadata.{key}" if key in _BUILTIN else key
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            factors.append(Factor(name, "numeric", "metadata", np.array([np.nan if v is None else float(v) for v in values])))
        else:
            factors.append(_categorical(name, "metadata", values))
    factors.append(_categorical("format", "template", ["text" if r.text is not None else "chat" for r in records]))
    factors.append(_categorical("system_prompt", "template", [_system(r) for r in records]))
    factors.append(_categorical("turns", "template", [0 if r.messages is None else len(r.messages) for r in records]))
    return factors


def _system(r: Record) -> str:
    if r.messages is None:
        return "(text)"
    return next((m["content"] for m in r.messages if m["role"] == "system"), "(none)")


# --------------------------------------------------------------------------- measures


def eta_squared(z: np.ndarray, codes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Correlation ratio along ``axis``: between-level sum of squares / total sum of squares.

    ``z`` float and ``codes`` int level codes (>= 0) of the same shape; NaN where z is constant.
    """
    z = np.moveaxis(np.asarray(z, dtype=np.float64), axis, -1)
    codes = np.moveaxis(np.asarray(codes), axis, -1)
    zc = z - z.mean(-1, keepdims=True)
    total = np.einsum("...n,...n->...", zc, zc)
    between = np.zeros(total.shape)
    for level in np.unique(codes):
        m = codes == level
        n = m.sum(-1)
        s = np.where(m, zc, 0.0).sum(-1)
        between += np.where(n > 0, s**2 / np.maximum(n, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, between / total, np.nan)


def pearson(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson correlation along ``axis``; NaN where either is constant."""
    a = a - a.mean(axis, keepdims=True)
    b = b - b.mean(axis, keepdims=True)
    num = (a * b).sum(axis)
    den = np.sqrt((a * a).sum(axis) * (b * b).sum(axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _finite(v) -> float | None:
    v = float(v)
    return round(v, 6) if np.isfinite(v) else None


def association(z: np.ndarray, factor: Factor, n_boot: int, rng: np.random.Generator) -> dict:
    """One direction's projections ``z`` (N,) against one factor: measure, value, 95% interval."""
    from scipy.stats import bootstrap, rankdata

    measure = "eta2" if factor.kind == "categorical" else "spearman"
    out = {"factor": factor.name, "measure": measure, "value": None, "ci": None}
    if factor.single_level:
        return out
    keep = factor.present
    zs, vs = z[keep], factor.values[keep]
    stat = eta_squared
    if measure == "spearman":
        # Spearman = Pearson of average ranks. The resamples reuse the full sample's ranks (no sort per
        # resample: 50x faster at 50k records; the interval of a rank correlation, not re-ranked).
        zs, vs, stat = rankdata(zs), rankdata(vs), pearson
    out["value"] = _finite(stat(zs, vs))
    if out["value"] is None or n_boot == 0 or (measure == "eta2" and factor.n_levels > _MAX_BOOTSTRAP_LEVELS):
        return out
    res = bootstrap((zs, vs), stat, paired=True, vectorized=True, n_resamples=n_boot, method="percentile",
                    confidence_level=0.95, random_state=rng, batch=max(1, min(n_boot, 2_000_000 // max(len(zs), 1))))
    lo, hi = _finite(res.confidence_interval.low), _finite(res.confidence_interval.high)
    out["ci"] = None if lo is None or hi is None else [lo, hi]
    return out


def _strength(a: dict) -> float:
    """Comparable across measures: eta^2 is a share of variance, so rho is compared squared."""
    return a["value"] if a["measure"] == "eta2" else a["value"] ** 2


def align(z: np.ndarray, factors: list[Factor], explained_variance_ratio=None, n_boot: int = 200, seed: int = 0) -> dict:
    """The ``skillray.factors/1`` document: every direction of ``z`` (N, k) against every factor."""
    n, k = z.shape
    directions = []
    for j in range(k):
        rng = np.random.default_rng([seed, j])
        assoc = [association(z[:, j], f, n_boot, rng) for f in factors]
        scored = [a for a in assoc if a["value"] is not None]
        top = max(scored, key=_strength, default=None)
        flags = []
        # "Mostly" length: rho is rank-based, so on a direction split by a categorical factor it also
        # reads the order WITHIN the levels (length leaking in at a small share of the variance);
        # the token count must also be the strongest factor.
        if top is not None and top["factor"] == "tokens" and abs(top["value"]) >= LENGTH_FLAG:
            flags.append("length")
        if any(a["factor"] in TEMPLATE_FACTORS and a["value"] >= TEMPLATE_FLAG for a in scored):
            flags.append("template")
        evr = None if explained_variance_ratio is None else _finite(explained_variance_ratio[j])
        directions.append({
            "direction": j,
            "explained_variance_ratio": evr,
            "associations": assoc,
            "strongest": None if top is None else {"factor": top["factor"], "measure": top["measure"], "value": top["value"]},
            "flags": flags,
        })
    return {
        "format": FORMAT,
        "n_records": n,
        "thresholds": {"length": LENGTH_FLAG, "template": TEMPLATE_FLAG},
        "interval": {"method": "percentile bootstrap over records", "confidence": 0.95, "n_resamples": n_boot, "seed": seed}
        if n_boot else None,
        "factors": [
            {
                "name": f.name,
                "kind": f.kind,
                "levels": f.n_levels if f.kind == "categorical" else None,
                "single_level": f.single_level,
                "source": f.source,
                "missing": int((~f.present).sum()),
            }
            for f in factors
        ],
        "directions": directions,
    }


# --------------------------------------------------------------------------- tables


def cell(a: dict) -> str:
    """One association as text: ``0.83 [0.71, 0.90]`` (eta^2) or ``-0.93 [...]`` (rho)."""
    if a.get("value") is None:
        return "n/a"
    s = f"{a['value']:.2f}"
    return s + (f" [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]" if a.get("ci") else "")


def table(doc: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, single-level factor names) of the directions x factors table; single-level
    factors have no column (they cannot be associated with anything)."""
    facs = [f for f in doc["factors"] if not f["single_level"]]
    header = ["direction", "explained var."] + [
        f"{f['name']} ({'η²' if f['kind'] == 'categorical' else 'ρ'})" for f in facs
    ] + ["strongest", "flags"]
    rows = []
    for d in doc["directions"]:
        by = {a["factor"]: a for a in d["associations"]}
        st = d.get("strongest")
        rows.append(
            [f"d{d['direction']}", "" if d.get("explained_variance_ratio") is None else f"{d['explained_variance_ratio']:.3f}"]
            + [cell(by[f["name"]]) if f["name"] in by else "" for f in facs]
            + ["" if st is None else f"{st['factor']} {st['value']:.2f}", ", ".join(d.get("flags", []))]
        )
    return header, rows, [f["name"] for f in doc["factors"] if f["single_level"]]


def explanation(doc: dict) -> str:
    single = [f["name"] for f in doc["factors"] if f["single_level"]]
    iv = doc.get("interval")
    th = doc.get("thresholds") or {"length": LENGTH_FLAG, "template": TEMPLATE_FLAG}  # optional in the format
    return (
        f"Each direction's projections against each factor of the {doc['n_records']} records: η² (correlation ratio, "
        "0..1: the share of the projection's variance between the factor's levels) for categorical factors, Spearman ρ "
        "(-1..1) for numeric ones; `tokens` is the number of tokens each pooled vector averages. "
        + (f"Brackets: {iv['confidence']:.0%} {iv['method']} ({iv['n_resamples']} resamples). " if iv else "")
        + f"Flags: length = tokens is the strongest factor (η² against ρ²) and |ρ| ≥ {th['length']}; "
        f"template = η² ≥ {th['template']} "
        f"with {', '.join(TEMPLATE_FACTORS)}."
        + (f" One level only, so no association: {', '.join(single)}." if single else "")
    )


def markdown(doc: dict) -> str:
    """``factors.md``: the explanation and the directions x factors table."""
    header, rows, _single = table(doc)
    lines = ["# What each direction aligns with", "", explanation(doc), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_factors(path: str | Path) -> dict:
    """``<run>/interpret/factors.json`` (format ``skillray.factors/1``), checked for the fields the findings use.

    Raises ValueError naming the file and the missing or bad field.
    """
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun `skillray interpret` to rewrite it") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: format {got!r}, expected {FORMAT!r}; rerun `skillray interpret`")
    for key in ("factors", "directions"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"{path}: field {key!r} missing or not a list")
    for i, d in enumerate(doc["directions"]):
        if not isinstance(d, dict) or not isinstance(d.get("direction"), int):
            raise ValueError(f"{path}: directions[{i}] has no integer 'direction'")
        for key, kind in (("associations", list), ("flags", list)):
            if not isinstance(d.get(key, []), kind):
                raise ValueError(f"{path}: directions[{i}].{key} is not a list")
        s = d.get("strongest")
        if s is not None and not (isinstance(s, dict) and {"factor", "measure", "value"} <= set(s)):
            raise ValueError(f"{path}: directions[{i}].strongest needs 'factor', 'measure' and 'value'")
    return doc
