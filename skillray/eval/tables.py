"""Eval tables and plots: per-problem counts -> Pass@k with bootstrap intervals; paired sweep deltas.

All intervals resample *problems* (the unit that varies between benchmark draws); the n
samples of a problem enter through its unbiased Pass@k estimate. Sweep deltas resample the
same problem indices for the steered and the unsteered arm (paired bootstrap).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from skillray.eval.openai_backend import FAILED
from skillray.eval.passk import bootstrap_mean_ci, pass_at_k_array

SAMPLE_COLUMNS = ["arm", "benchmark", "problem_id", "sample", "text", "answer", "answer_source", "gold", "score",
                  "correct", "n_tokens", "finish_reason", "error"]  # fmt: skip


def read_sample_files(files: Iterable[Path]) -> pd.DataFrame:
    """Concatenate chunk JSONL files into one frame with :data:`SAMPLE_COLUMNS`.

    The files of a finished eval are checked against its manifest first (sizes, and checksums on
    first use: :func:`skillray.artifacts.verify_artifact`, one call per folder of chunks)."""
    from skillray.artifacts import verify_artifact

    files = list(files)
    for d in dict.fromkeys(Path(f).parent for f in files):
        verify_artifact(d)
    rows = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}:{lineno}: damaged sample line ({e.msg}); rerun the stage to regenerate "
                                     "the chunk (`skillray eval`), or `--force`") from None
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def problem_counts(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, benchmark, problem): ``n`` samples, ``c`` correct ones, and ``failed`` (a sample's request failed:
    the problem has no valid result and is left out of Pass@k, not scored as wrong)."""
    s = samples.assign(_failed=samples["finish_reason"] == FAILED)
    g = s.groupby(["arm", "benchmark", "problem_id"], sort=True)
    out = g.agg(n=("correct", "size"), c=("correct", "sum"), failed=("_failed", "any")).reset_index()
    return out.astype({"n": np.int64, "c": np.int64, "failed": bool})


def _ok(counts: pd.DataFrame) -> pd.Series:
    return ~counts["failed"] if "failed" in counts else pd.Series(True, index=counts.index)


def passk_table(counts: pd.DataFrame, k_values: list[int], n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
    """Rows (arm, benchmark, k, pass_at_k, ci_low, ci_high, n_problems, n_samples, n_failed) from :func:`problem_counts`.

    ``n_failed`` problems (requests that failed) are left out; ``n_problems`` counts the scored ones
    (all failed: pass_at_k and the interval are NaN).
    """
    out = []
    for (arm, bench), g in counts.groupby(["arm", "benchmark"], sort=False):
        ok = g[_ok(g)]
        for k in k_values:
            v = pass_at_k_array(ok["n"].to_numpy(), ok["c"].to_numpy(), k)  # (P,)
            lo, hi = bootstrap_mean_ci(v, n_boot, confidence, seed) if len(v) else (float("nan"), float("nan"))
            out.append({"arm": arm, "benchmark": bench, "k": int(k), "pass_at_k": float(v.mean()) if len(v) else float("nan"),
                        "ci_low": lo, "ci_high": hi, "n_problems": int(len(ok)),
                        "n_samples": int(g["n"].min()), "n_failed": int(len(g) - len(ok))})  # fmt: skip
    return pd.DataFrame(out)


def paired_delta_table(counts: pd.DataFrame, base_arm: str, k_values: list[int], n_boot: int, confidence: float,
                       seed: int) -> pd.DataFrame:  # fmt: skip
    """Rows (arm, benchmark, k, pass_at_k, base_pass_at_k, delta, ci_low, ci_high, n_problems, n_failed) for every
    arm but ``base_arm``: the mean over problems of (arm - base) Pass@k, with a paired bootstrap interval.

    Problems that failed in either arm (``n_failed``) are left out of the pair.
    """
    base = counts[counts["arm"] == base_arm].set_index(["benchmark", "problem_id"])
    out = []
    nan = float("nan")
    for (arm, bench), g in counts[counts["arm"] != base_arm].groupby(["arm", "benchmark"], sort=False):
        g = g.set_index(["benchmark", "problem_id"])
        common = g.index.intersection(base.index)
        if len(common) != len(g):
            raise ValueError(f"sweep arm {arm!r} on {bench!r}: {len(g) - len(common)} problems lack an unsteered result")
        a, b = g.loc[common], base.loc[common]
        keep = (_ok(a) & _ok(b)).to_numpy()
        a, b = a[keep], b[keep]
        for k in k_values:
            va = pass_at_k_array(a["n"].to_numpy(), a["c"].to_numpy(), k)  # (P,)
            vb = pass_at_k_array(b["n"].to_numpy(), b["c"].to_numpy(), k)  # (P,)
            lo, hi = bootstrap_mean_ci(va - vb, n_boot, confidence, seed) if len(va) else (nan, nan)
            m = (lambda x: float(x.mean()) if len(x) else nan)  # noqa: E731
            out.append({"arm": arm, "benchmark": bench, "k": int(k), "pass_at_k": m(va), "base_pass_at_k": m(vb),
                        "delta": m(va - vb), "ci_low": lo, "ci_high": hi, "n_problems": int(keep.sum()),
                        "n_failed": int((~keep).sum())})  # fmt: skip
    return pd.DataFrame(out)


def sample_stats(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, benchmark): samples, failed ones (their request failed), share with an answer, share boxed, share
    cut at max tokens, mean tokens (shares and means over the samples that did not fail)."""
    failed = samples.groupby(["arm", "benchmark"], sort=False)["finish_reason"].apply(lambda s: int((s == FAILED).sum()))
    idx = failed.index
    g = samples[samples["finish_reason"] != FAILED].groupby(["arm", "benchmark"], sort=False)
    return pd.DataFrame({
        "samples": g.size().reindex(idx, fill_value=0) + failed,
        "failed": failed,
        "answered": g["answer"].apply(lambda s: float(s.notna().mean())).reindex(idx),
        "boxed": g["answer_source"].apply(lambda s: float((s == "boxed").mean())).reindex(idx),
        "truncated": g["finish_reason"].apply(lambda s: float((s == "length").mean())).reindex(idx),
        "mean_tokens": g["n_tokens"].mean().reindex(idx),
    }, index=idx).reset_index()  # fmt: skip


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table of ``df`` (floats rounded to ``digits``)."""
    if df.empty:
        return "(no rows)\n"

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def passk_png(table: pd.DataFrame, benchmark: str) -> bytes:
    """Pass@k vs k (log2 axis) of one benchmark, one line per arm, bootstrap band shaded."""
    t = table[table["benchmark"] == benchmark]
    fig = _figure(5.5, 3.5)
    ax = fig.add_subplot()
    for arm, g in t.groupby("arm", sort=False):
        g = g.sort_values("k")
        line, = ax.plot(g["k"], g["pass_at_k"], marker="o", label=str(arm))
        ax.fill_between(g["k"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ks = sorted(t["k"].unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k")
    ax.set_ylim(-0.02, 1.02)
    n = int(t["n_problems"].max()) if len(t) else 0
    ax.set_title(f"{benchmark} ({n} problems)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return _png(fig)


def delta_png(table: pd.DataFrame, benchmark: str) -> bytes:
    """Sweep: Pass@k delta vs the unsteered model per arm (bars per k, paired bootstrap whiskers)."""
    t = table[table["benchmark"] == benchmark]
    arms = list(dict.fromkeys(t["arm"]))
    ks = sorted(t["k"].unique())
    fig = _figure(max(5.5, 0.6 * len(arms) * len(ks) + 2), 3.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(ks))
    x = np.arange(len(arms))
    for j, k in enumerate(ks):
        g = t[t["k"] == k].set_index("arm").reindex(arms)
        err = np.vstack([g["delta"] - g["ci_low"], g["ci_high"] - g["delta"]])
        ax.bar(x + (j - (len(ks) - 1) / 2) * width, g["delta"], width, yerr=err, capsize=2, label=f"k={k}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, arms, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("Pass@k - unsteered")
    ax.set_title(f"{benchmark}: steering sweep")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return _png(fig)
