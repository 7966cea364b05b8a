"""The report's opening section: what the run found, in words, every number with its interval.

One bullet per question, built from the finished artifacts only (nothing is recomputed but the
paired bootstrap of the fine-tuned model against the base, which :func:`skillray.eval.report.sft_vs_base`
does from the stored samples, as the eval section does):

* the directions: each one's label, explained variance and the factor it aligns with most
  (``<run>/interpret/factors.json``), with its flags (mostly length / template);
* the probe's best (direction, sign) pairs;
* the base model's Pass@k, the fine-tuned model against the base, each steering arm against the
  unsteered model (paired bootstrap over problems).

An interval that includes 0 is said to show no detectable difference. What the run's config
(``<run>/config.yaml``, written by ``skillray run``) asks for but the run lacks is said too.
"""

from __future__ import annotations

import math
from pathlib import Path

from skillray.report.document import Bullets, Section, Text

FACTORS = "factors.json"
_MEASURES = {"eta2": "eta²", "spearman": "Spearman"}
_FLAGS = {"length": "mostly length (a length axis rather than a skill)",
          "template": "mostly template (what the chat template adds, not the text)"}  # fmt: skip


def interval_phrase(lo: float, hi: float, confidence: float = 0.95) -> str:
    """How an interval of a difference reads: whether it includes 0, in words.

    >>> interval_phrase(-0.05, 0.03)
    'no detectable difference: the 95% interval [-0.050, +0.030] includes 0'
    """
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "no interval (no problem was scored in both arms)"
    iv = f"the {confidence:.0%} interval [{lo:+.3f}, {hi:+.3f}]"
    if lo <= 0 <= hi:
        return f"no detectable difference: {iv} includes 0"
    return f"{'higher' if lo > 0 else 'lower'}: {iv} excludes 0"


def _floor(a: float, b: float) -> str:
    """A note when both arms sit at 0 (or 1): the eval cannot show a difference either way."""
    if a == b == 0:
        return " (both 0: too hard for this model to show a difference)"
    if a == b == 1:
        return " (both 1: too easy to show a difference)"
    return ""


def _pct(x) -> str:
    return "?" if x is None else f"{x:.1%}"


# ----------------------------------------------------------------------------- directions




def _association(d: dict) -> str:
    """'aligns most with skill (eta² 0.91 [0.85, 0.95])' for one direction of factors.json."""
    s = d.get("strongest")
    if not s or s.get("value") is None:
        return "aligns with no factor (no association could be computed)"
    ci = next((a.get("ci") for a in d.get("associations", [])
               if a.get("factor") == s["factor"] and a.get("measure") == s["measure"]), None)  # fmt: skip
    signed = s["measure"] == "spearman"
    fmt = (lambda v: f"{v:+.2f}") if signed else (lambda v: f"{v:.2f}")  # noqa: E731
    text = f"aligns most with {s['factor']} ({_MEASURES.get(s['measure'], s['measure'])} {fmt(s['value'])}"
    if ci and None not in ci:
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return text + ")"


def _directions(run_dir: Path) -> tuple[str, list[str]] | None:
    from skillray.interpret.factors import read_factors
    from skillray.interpret.stage import LABELS, read_labels

    stage_dir = run_dir / "interpret"
    labels = read_labels(stage_dir) if (stage_dir / LABELS).is_file() else None
    factors, problem = None, None
    if (stage_dir / FACTORS).is_file():
        try:
            factors = read_factors(stage_dir / FACTORS)
        except ValueError as e:
            problem = str(e)
    if labels is None and factors is None and problem is None:
        return None
    head = "Directions"
    if labels is not None:
        head += (f" ({labels['n_components']}, labelled by the {labels['labeller']} labeller over {labels['n_rows']} "
                 "examples)")
    if factors is not None:
        head += f"; factors over {factors.get('n_records', '?')} records"
        single = [f["name"] for f in factors["factors"] if f.get("single_level")]
        if single:
            head += f"; with one level only (no association): {', '.join(single)}"
    elif problem is not None:
        head += f"; factor associations not shown: {problem}"
    else:
        head += "; no factor associations in this run (no interpret/factors.json)"
    by_dir = {d["direction"]: d for d in (factors or {}).get("directions", [])}
    label_of = {d["direction"]: d for d in (labels or {}).get("directions", [])}
    items = []
    for j in sorted(set(label_of) | set(by_dir)):
        lab, fd = label_of.get(j), by_dir.get(j)
        text = f"d{j}"
        if lab is not None:
            text += f" \u201c{lab['label']['short']}\u201d"
        evr = lab["explained_variance_ratio"] if lab is not None else (fd or {}).get("explained_variance_ratio")
        extra = [f"{_pct(evr)} of the variance"]
        if lab is not None and lab.get("fidelity") is not None:
            extra.append(f"label fidelity {lab['fidelity']:.2f} on {lab['fidelity_n']} held-out examples, chance 0.5")
        text += f" ({'; '.join(extra)})"
        if fd is not None:
            text += ": " + _association(fd)
            flags = [_FLAGS.get(f, f) for f in fd.get("flags", [])]
            if flags:
                text += "; flagged: " + ", ".join(flags)
        elif factors is not None:
            text += ": no factor associations for this direction in factors.json"
        items.append(text)
    return head, items


# ----------------------------------------------------------------------------- probe


def _probe(run_dir: Path, n_best: int = 3) -> tuple[str, list[str]] | None:
    from scipy import stats

    from skillray.probe.report import pair_name, read_finished_probe
    from skillray.probe.stage import short_labels

    if not (run_dir / "probe").is_dir():
        return None
    doc = read_finished_probe(run_dir)
    if doc is None:
        return "Probe: the probe stage has not finished", []
    labels = short_labels(run_dir)
    by, rows = doc["ranked_by"], doc["rows"]
    head = f"Probe: the best {min(n_best, len(rows))} of {len(rows)} (direction, sign) pairs, ranked by the {by} probe"
    acc = doc["base"].get("accuracy")
    if acc:
        head += f" (unsteered dev Pass@{acc['k']} {acc['pass_at_k']:.3f}"
        head += ": only a pair that raises it can stand out)" if acc["pass_at_k"] == 0 else ")"
    ag = doc.get("agreement")
    if ag:
        rho = "undefined" if ag["spearman"] is None else f"{ag['spearman']:+.2f}"
        head += f"; likelihood vs accuracy ranking: Spearman {rho}"
    like = doc["base"].get("likelihood") or {}
    n_dev = like.get("n_dev")
    items = []
    for r in rows[:n_best]:
        text = pair_name(r) + (f" \u201c{labels[r['direction']]}\u201d" if labels.get(r["direction"]) else "")
        parts = []
        if "delta_pass_at_k" in r:
            parts.append(f"delta Pass@{acc['k'] if acc else 'k'} {r['delta_pass_at_k']:+.3f}: "
                         + interval_phrase(r["accuracy_ci_low"], r["accuracy_ci_high"]))  # fmt: skip
        if "delta_loglik" in r:
            d, se = r["delta_loglik"], r["delta_loglik_se"]
            if n_dev and n_dev > 1 and se is not None and math.isfinite(se):
                # the mean of n_dev paired per-record differences: a t interval
                h = float(stats.t.ppf(0.975, n_dev - 1)) * se
                parts.append(f"delta response log-likelihood {d:+.4f} over {n_dev} records: "
                             + interval_phrase(d - h, d + h))
            else:
                parts.append(f"delta response log-likelihood {d:+.4f} (no interval: fewer than 2 dev records)")
        items.append(f"{text}: {'; '.join(parts)}")
    return head, items


# ----------------------------------------------------------------------------- eval


def _run_config(run_dir: Path) -> dict | None:
    import yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        return None
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return None
    return cfg if isinstance(cfg, dict) else None


def _min_k(rows: list[dict]) -> list[dict]:
    k = min((r["k"] for r in rows), default=1)
    return [r for r in rows if r["k"] == k]


def _finished_results(stage_dir: Path) -> list[dict] | None:
    from skillray.artifacts import read_manifest
    from skillray.eval.report import read_results

    m = read_manifest(stage_dir)
    return read_results(stage_dir) if m is not None and m.complete else None


def _eval(run_dir: Path, cfg: dict | None) -> list[tuple[str, list[str]]]:
    from skillray.artifacts import read_manifest

    base_rows = _finished_results(run_dir / "eval")
    if base_rows is None:
        if cfg and "eval" in (cfg.get("stages") or []):
            return [("Evaluation: the config has an eval stage, but eval/ has no finished results", [])]
        return []
    m = read_manifest(run_dir / "eval")
    conf = float(((m.config or {}).get("eval") or {}).get("confidence", 0.95))
    out = []
    rows = _min_k(base_rows)
    out.append(("Base model: " + "; ".join(
        f"Pass@{r['k']} on {r['benchmark']} {r['pass_at_k']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] over "
        f"{r['n_problems']} problems x {r['n_samples']} samples" for r in rows), []))  # fmt: skip
    out.append(_sft(run_dir, cfg, conf))
    out.append(_steering(run_dir, cfg, conf))
    return out


def _sft(run_dir: Path, cfg: dict | None, conf: float) -> tuple[str, list[str]]:
    from skillray.artifacts import read_manifest
    from skillray.eval.report import sft_vs_base

    outs = sorted(p.parent for p in (run_dir / "sft").glob("*/manifest.json"))
    if not outs:
        if cfg and "sft" in (cfg.get("stages") or []):
            return "Fine-tuned model vs base: missing: the config has an sft stage but sft/ holds no fine-tuned model", []
        return "Fine-tuned model vs base: no fine-tuned model in this run", []
    items = []
    for d in outs:
        name = f"sft/{d.name}"
        m = read_manifest(d)
        if not m.complete:
            items.append(f"{name}: missing: the fine-tuning has not finished")
            continue
        em = read_manifest(d / "eval")
        if em is None or not em.complete:
            items.append(f"{name}: missing: no finished eval of the fine-tuned model in {name}/eval")
            continue
        delta = sft_vs_base(run_dir / "eval", d / "eval")
        if delta is None or not len(delta):
            items.append(f"{name}: not paired with the base model (the two evals used different problems or "
                         "decoding settings); see its section")  # fmt: skip
            continue
        for r in _min_k(delta.to_dict(orient="records")):
            items.append(f"{name} on {r['benchmark']}: Pass@{r['k']} {r['pass_at_k']:.3f} vs base "
                         f"{r['base_pass_at_k']:.3f}{_floor(r['pass_at_k'], r['base_pass_at_k'])}, difference "
                         f"{r['delta']:+.3f} over {r['n_problems']} problems: "
                         + interval_phrase(r["ci_low"], r["ci_high"], conf))  # fmt: skip
    return "Fine-tuned model vs base (same problems and sampling seeds, paired bootstrap over problems)", items


def _steering(run_dir: Path, cfg: dict | None, conf: float) -> tuple[str, list[str]]:
    from skillray.artifacts import read_manifest

    sweep_cfg = ((cfg or {}).get("eval") or {}).get("sweep")
    rows = _finished_results(run_dir / "eval" / "sweep")
    if rows is None:
        if sweep_cfg:
            return ("Steering vs unsteered: missing: the config sets eval.sweep but eval/sweep has no finished "
                    "results", [])  # fmt: skip
        return "Steering vs unsteered: no steering sweep in this run (eval.sweep is not set)", []
    from skillray.probe.stage import short_labels

    labels = short_labels(run_dir)
    items = []
    for r in _min_k(rows):
        lab = labels.get(r.get("direction"))
        tag = f" \u201c{lab}\u201d" if lab else ""
        items.append(f"{r['arm']}{tag} on {r['benchmark']}: Pass@{r['k']} "
                     f"{r['pass_at_k']:.3f} vs unsteered {r['base_pass_at_k']:.3f}"
                     f"{_floor(r['pass_at_k'], r['base_pass_at_k'])}, difference {r['delta']:+.3f} over "
                     f"{r['n_problems']} problems: " + interval_phrase(r["ci_low"], r["ci_high"], conf))  # fmt: skip
    m = read_manifest(run_dir / "eval" / "sweep")
    missing = [a for a in (m.outputs.get("arms") or {}) if a not in {r["arm"] for r in rows}]
    if missing:
        items.append(f"missing: the arms {', '.join(missing)} have no results in eval/sweep")
    if sweep_cfg and (m.config or {}).get("sweep") != sweep_cfg:
        items.append("missing: eval/sweep was made with other settings than the config's eval.sweep; rerun "
                     "`skillray run` to sweep the configured arms")  # fmt: skip
    return "Steering vs unsteered (same problems and sampling seeds, paired bootstrap over problems)", items


# ----------------------------------------------------------------------------- section


def sections(run_dir: str | Path) -> list[Section]:
    """The "Findings" section; empty when the run has none of interpret, probe or eval yet."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    parts = [p for p in (_directions(run_dir), _probe(run_dir)) if p is not None] + _eval(run_dir, cfg)
    if not parts:
        return []
    sec = Section("Findings")
    sec.blocks.append(Text("What this run shows, each number with its interval; an interval that includes 0 shows "
                           "no detectable difference. The sections below hold the tables and plots."))  # fmt: skip
    sec.blocks.append(Bullets(parts))
    return [sec]
