"""`skillray replicate`: the paper's claims (selection, steering, a cheap proxy) tested on one run, with every
choice made on dev data and every number's interval from all its sources of variance.

Layout (``R = <run>/replicate/<name>``; ``A = <run>/ablate/<name>``)::

    R/dev/                   the unsteered model on the dev set, and R/dev/sweep: the best pair at every alpha
    R/test/                  the unsteered model on the test benchmarks (the run's eval), and R/test/sweep: every
                             probed pair at the chosen alpha, plus random controls of the best pair
    A-main/cells/...         SFT on the best pair's selection and on every baseline, each seed (an ablation)
    A-main/cells/<best, first seed>/eval/sweep   the fine-tuned model steered (best pair, opposite, controls)
    A-pairs/cells/...        SFT on the other top and the bottom probe pairs (probe score vs SFT gain)
    R/results.{json,md}, R/plots/*.png

Order of work: the choices first (ranking, alpha), then the cheapest part that answers each question: the
base model's steering sweep, the SFT grid (the fine-tuned sweep before it when resuming with that model
already trained, else after it), and last
the pairs grid (the proxy's agreement with SFT gain); ``results.*`` are rewritten after every part, so a
stopped run shows what it measured, and a rerun skips every finished part.

Statistics (:mod:`skillray.eval.stats`): SFT arms are (seeds x problems) score matrices, compared with random
by one hierarchical bootstrap (seeds, then problems, resampled; paired by seed index and problem) with Holm
across the baselines; steering arms are greedy (one answer per problem: no seed variance), compared with the
unsteered model paired by problem, Holm across the planned steering comparisons. Every comparison states its
smallest detectable effect (80% power at Holm's strictest level).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import atomic_write_bytes, atomic_write_json, read_manifest
from skillray.config import AblateConfig, EvalConfig, EvalSweep, ReplicateConfig, RunConfig, SelectConfig

FORMAT = "skillray.replicate/1"
POWER = 0.8
LogFn = Callable[[str], None]


def pair_name(d: int, s: int) -> str:
    return f"d{d}{'+' if s > 0 else '-'}"


def _label(prefix: str, d: int, s: int) -> str:
    return f"{prefix}-d{d}{'pos' if s > 0 else 'neg'}"


def plan(cfg: RunConfig) -> dict:
    """The probe's ranked pairs and the arms they give: best, top (after the best) and bottom pairs."""
    from skillray.probe.stage import probe_ranking

    rep = cfg.replicate or ReplicateConfig()
    ranking, by, key = probe_ranking(Path(cfg.run_dir) / "probe", rep.probe_by)
    if len(ranking) < 2 * rep.pairs:
        raise ValueError(f"replicate.pairs={rep.pairs}: the probe ranked {len(ranking)} (direction, sign) pairs; "
                         f"it needs at least {2 * rep.pairs} (probe more directions or lower pairs)")  # fmt: skip
    top, bottom = ranking[: rep.pairs], ranking[-rep.pairs :]
    return {"ranked_by": by, "probe_key": key, "ranking": [list(r) for r in ranking], "best": list(top[0][:2]),
            "top": [list(r[:2]) for r in top], "bottom": [list(r[:2]) for r in bottom]}  # fmt: skip


def _eval_cfg(cfg: RunConfig, **update) -> EvalConfig:
    return EvalConfig.model_validate({**cfg.eval.model_dump(), "sweep": None, **update})


def dev_in_test(cfg: RunConfig) -> set[str]:
    """Ids of dev problems whose question is also a test question (small question spaces repeat texts across
    seeds): the alpha choice leaves them out, so no test problem informs a choice."""
    from skillray.eval.benchmarks import load_benchmarks
    from skillray.eval.stage import _corpus_context

    rep = cfg.replicate or ReplicateConfig()
    corpus_cfg, questions, _ = _corpus_context(Path(cfg.run_dir))
    test = {p.question for b in load_benchmarks(cfg.eval.benchmarks, corpus_cfg, questions) for p in b.problems}
    dev = load_benchmarks([rep.dev], corpus_cfg, questions)[0]
    return {p.id for p in dev.problems if p.question in test}


def choose_alpha(dev_dir: Path, best: list[int], alphas: list[float],
                 exclude: set[str] = frozenset()) -> tuple[float, list[dict]]:  # fmt: skip
    """The alpha of the best pair's largest mean Pass@1 change on the dev set (ties: the smaller alpha),
    over the dev problems not in ``exclude``."""
    from skillray.eval.stage import arm_name
    from skillray.sft.ablate import problem_scores

    base = problem_scores(dev_dir / "samples" / "base", [1])
    rows = []
    for a in sorted(alphas):
        arm = problem_scores(dev_dir / "sweep" / "samples" / arm_name(best[0], best[1], a, "residual"), [1])
        diffs = []
        for key in sorted(base):
            ids, v0 = base[key]
            if arm[key][0] != ids:
                raise ValueError(f"{dev_dir}: the dev arms were evaluated on different problems; rerun with --force")
            keep = np.array([i not in exclude for i in ids], dtype=bool)
            diffs.append((arm[key][1] - v0)[keep])
        v = np.concatenate(diffs)
        rows.append({"alpha": a, "delta_pass@1": float(v.mean()), "n_problems": int(v.size)})
    top = max(rows, key=lambda r: (round(r["delta_pass@1"], 12), -r["alpha"]))
    return float(top["alpha"]), rows


def run_replicate(cfg: RunConfig, force: bool = False, log: LogFn = print) -> dict:
    """Run every part of ``cfg.replicate`` that is not finished (the run's probe must be); returns results."""
    from skillray.eval import run_eval
    from skillray.eval.seeds import check_disjoint_seeds
    from skillray.eval.stage import run_sweep
    from skillray.sft.ablate import run_ablate

    rep = cfg.replicate or ReplicateConfig()
    cfg = cfg.model_copy(update={"replicate": rep})
    check_disjoint_seeds(cfg)
    run, out = Path(cfg.run_dir), Path(cfg.run_dir) / "replicate" / rep.name
    p = plan(cfg)
    d0, s0 = p["best"]
    log(f"probe ({p['ranked_by']}): best pair {pair_name(d0, s0)}; top {p['top']}, bottom {p['bottom']}")
    timings: dict[str, float] = {}

    def part(name: str, fn) -> None:
        t0 = time.perf_counter()
        log(f"[replicate] {name} ...")
        fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"[replicate] {name}: {timings[name]} s")
        try:  # what is measured so far; a table that cannot be made yet must not stop the experiment
            write_results(cfg, p, timings, log=None)
        except (ValueError, KeyError, FileNotFoundError) as e:
            log(f"[replicate] results not written after {name!r}: {e}")

    # 1. alpha on the dev set (never on the test problems; dev problems that repeat a test question left out)
    p["dev_excluded"] = sorted(dev_in_test(cfg))
    dev = _eval_cfg(cfg, benchmarks=[rep.dev.model_dump()],
                    sweep=EvalSweep(directions=[d0], signs=[s0], alphas=rep.alphas).model_dump())  # fmt: skip
    part("dev: alpha grid of the best pair", lambda: run_eval(run, dev, cfg.model, force=force, out_dir=out / "dev"))
    alpha, _ = choose_alpha(out / "dev", p["best"], rep.alphas, set(p["dev_excluded"]))
    p["alpha"] = alpha
    log(f"[replicate] alpha {alpha:g} (chosen on {rep.dev.size_per_task} dev problems per task, seed {rep.dev.seed})")

    # 2. steering of the base model on the test set: every probed pair, controls of the best pair
    directions = _steer_directions(cfg, rep)
    test = _eval_cfg(cfg, sweep=EvalSweep(directions=directions, signs=[1, -1], alphas=[alpha],
                                          control_seeds=rep.control_seeds, controls_for=[d0]).model_dump())  # fmt: skip
    part("steer: base model", lambda: run_eval(run, test, cfg.model, force=force, out_dir=out / "test"))

    # 3. SFT: the best pair against the baselines; 4. steering of one fine-tuned model (the best pair's
    # first seed). On a resumed run whose cell is already trained the sweep goes before the grid's remaining
    # cells (a run stopped part-way then has both claims measured); on a fresh run, after the grid.
    main = _ablation(cfg, rep, p, "main")
    cell = _finetuned_cell(run, rep, p)

    def steer_ft() -> None:
        sft_m = read_manifest(cell)
        if sft_m is None or not sft_m.complete or not Path(sft_m.summary["model"]).is_dir():
            raise FileNotFoundError(f"{cell}: no fine-tuned model to steer (keep_models was off?); rerun with --force")
        # the model exactly as the ablation evaluated it, so the sweep pairs with that eval
        ft = cfg.model.model_copy(update={"name_or_path": str(Path(sft_m.summary["model"]).resolve()),
                                          "gguf_file": None, "revision": None})  # fmt: skip
        sweep = _eval_cfg(cfg, sweep=EvalSweep(directions=[d0], signs=[s0, -s0], alphas=[alpha],
                                               control_seeds=rep.control_seeds).model_dump())  # fmt: skip
        part("steer: fine-tuned model", lambda: run_sweep(run, sweep, ft, force=force, out_dir=cell / "eval"))

    early = rep.steer_finetuned and _finished(cell) and not force
    if early:
        steer_ft()
    part("sft: best pair vs baselines", lambda: run_ablate(run, main, cfg.model, sft=cfg.sft, eval_cfg=cfg.eval,
                                                            force=force))  # fmt: skip
    if rep.steer_finetuned and not early:
        steer_ft()

    # 5. SFT along the other top pairs and the bottom pairs (probe score vs SFT gain)
    pairs = _ablation(cfg, rep, p, "pairs")
    part("sft: top and bottom probe pairs", lambda: run_ablate(run, pairs, cfg.model, sft=cfg.sft,
                                                                eval_cfg=cfg.eval, force=force))  # fmt: skip
    return write_results(cfg, p, timings, log=log)


def _steer_directions(cfg: RunConfig, rep: ReplicateConfig) -> list[int]:
    if rep.steer_directions is not None:
        return list(rep.steer_directions)
    if cfg.probe.directions is not None:
        return list(cfg.probe.directions)
    return list(range(cfg.basis.n_components))


def _ablation(cfg: RunConfig, rep: ReplicateConfig, p: dict, which: str) -> AblateConfig:
    """The main grid (best pair + baselines, random the reference) or the pairs grid (other top + bottom)."""
    d0, s0 = p["best"]
    if which == "main":
        strategies = [SelectConfig(strategy="direction", direction=d0, sign=s0, name=_label("best", d0, s0))]
        strategies += [b.model_copy(update={"name": b.name or b.strategy}) for b in rep.baselines]
        keep, baseline = rep.steer_finetuned, "random"
    else:
        strategies = [SelectConfig(strategy="direction", direction=d, sign=s, name=_label(f"top{i + 1}", d, s))
                      for i, (d, s) in enumerate(p["top"]) if i > 0]  # fmt: skip
        n = len(p["bottom"])
        strategies += [SelectConfig(strategy="direction", direction=d, sign=s, name=_label(f"bottom{n - i}", d, s))
                       for i, (d, s) in enumerate(p["bottom"])]  # fmt: skip
        keep, baseline = False, None
    return AblateConfig(name=f"{rep.name}-{which}", strategies=strategies, budgets=[rep.budget], seeds=rep.seeds,
                        baseline=baseline, eval_base=False, keep_models=keep, n_bootstrap=rep.n_bootstrap,
                        confidence=rep.confidence)  # fmt: skip


# ----------------------------------------------------------------------------- results


def _finished(path: Path) -> bool:
    m = read_manifest(path)
    return m is not None and m.complete


def _arm_matrix(cells: dict[int, Path], k: int = 1) -> tuple[list[int], dict[str, tuple[list, np.ndarray]]] | None:
    """(seeds, {benchmark: (problem ids, (S, P) Pass@k)}) over the finished cells of ``{seed: cell}``, in seed
    order; None when no cell has finished. A resumable run reports what it has: the families below pair
    arms on the seeds they all finished."""
    from skillray.sft.ablate import problem_scores

    done = {s: c for s, c in sorted(cells.items()) if _finished(c / "eval")}
    if not done:
        return None
    per = [problem_scores(c / "eval" / "samples" / "base", [k]) for c in done.values()]
    out = {}
    for bench, kk in sorted(per[0]):
        ids = per[0][(bench, kk)][0]
        if any(x[(bench, kk)][0] != ids for x in per):
            raise ValueError(f"{bench}: the cells were evaluated on different problems")
        out[bench] = (ids, np.stack([x[(bench, kk)][1] for x in per]))
    return list(done), out


def _tokens(cells: list[Path]) -> float:
    vals = [read_manifest(c).summary.get("tokens") for c in cells if read_manifest(c) is not None]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _sft_family(arms: dict[str, dict], rep: ReplicateConfig, family: list[str], bench: str) -> list[dict]:
    """Rows for the arms of ``family`` on one benchmark: random's on all its seeds, and each arm compared with
    random paired on the seeds both finished (a resumed run may have more seeds of some arms), Holm across the
    family; each detectable effect at Holm's strictest level (1 - confidence) / len(family)."""
    from skillray.eval.stats import compare_arms, holm

    def mat(k: str, seeds: list[int]) -> np.ndarray:
        return arms[k]["scores"][bench][1][[arms[k]["seeds"].index(s) for s in seeds]]

    def row(k: str, seeds: list[int], st: dict) -> dict:
        m = mat(k, seeds)
        return {"arm": k, **arms[k]["meta"], "seeds": seeds, "n_seeds": m.shape[0], "n_problems": m.shape[1],
                "mean": st["mean"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
                "seed_means": [float(x) for x in m.mean(axis=1)], "train_tokens": arms[k]["tokens"]}  # fmt: skip

    alpha = (1 - rep.confidence) / max(len(family), 1)
    seeds_r = arms["random"]["seeds"]
    rows = [row("random", seeds_r, compare_arms({"random": mat("random", seeds_r)}, None, n_boot=rep.n_bootstrap,
                                                confidence=rep.confidence)["random"])]  # fmt: skip
    for k in family:
        seeds = sorted(set(arms[k]["seeds"]) & set(seeds_r))
        st = compare_arms({"random": mat("random", seeds), k: mat(k, seeds)}, "random", n_boot=rep.n_bootstrap,
                          confidence=rep.confidence, alpha=alpha, power=POWER)[k]  # fmt: skip
        rows.append({**row(k, seeds, st), **{x: st[x] for x in ("delta", "delta_ci_low", "delta_ci_high", "p", "mde")}})
    for r, q in zip(rows[1:], holm([r["p"] for r in rows[1:]])):
        r["p_holm"] = float(q)
    return rows


def _steer_rows(eval_dir: Path, arms: list[str], rep: ReplicateConfig, planned: list[str],
                scores_of: dict[str, float | None] | None = None) -> dict | None:  # fmt: skip
    """Per benchmark: each steered arm minus the unsteered model (paired by problem); Holm across ``planned``."""
    from skillray.eval.stats import compare_arms, holm, min_detectable_effect
    from skillray.sft.ablate import problem_scores

    if not _finished(eval_dir / "sweep"):
        return None
    base = problem_scores(eval_dir / "samples" / "base", [1])
    scores = {a: problem_scores(eval_dir / "sweep" / "samples" / a, [1]) for a in arms}
    out = {}
    for bench, k in sorted(base):
        mats = {"unsteered": base[(bench, k)][1][None, :], **{a: s[(bench, k)][1][None, :] for a, s in scores.items()}}
        st = compare_arms(mats, "unsteered", n_boot=rep.n_bootstrap, confidence=rep.confidence)
        planned_here = [a for a in planned if a in scores]
        adj = dict(zip(planned_here, holm([st[a]["p"] for a in planned_here]))) if planned_here else {}
        m = max(len(planned_here), 1)
        rows = [{"arm": "unsteered", "mean": st["unsteered"]["mean"], "ci_low": st["unsteered"]["ci_low"],
                 "ci_high": st["unsteered"]["ci_high"], "n_problems": int(mats["unsteered"].shape[1])}]  # fmt: skip
        for a in arms:
            r = {"arm": a, "probe_score": (scores_of or {}).get(a), "mean": st[a]["mean"], "ci_low": st[a]["ci_low"],
                 "ci_high": st[a]["ci_high"],
                 **{x: st[a][x] for x in ("delta", "delta_ci_low", "delta_ci_high", "p")}, "planned": a in adj,
                 "p_holm": float(adj[a]) if a in adj else None,
                 "mde": min_detectable_effect(st[a]["delta_se"], (1 - rep.confidence) / m, POWER)}  # fmt: skip
            rows.append(r)
        out[bench] = rows
    return out


def _spearman_ci(x: np.ndarray, gains: np.ndarray, rep: ReplicateConfig, seed: int = 0) -> dict:
    """Spearman of probe scores ``x`` (Q,) with steering gains: per-problem deltas ``gains`` (Q, P); the
    interval resamples the pairs and the problems (both sources of its variance)."""
    from scipy.stats import spearmanr

    q, pn = gains.shape
    rho = float(spearmanr(x, gains.mean(axis=1)).statistic)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(rep.n_bootstrap):
        iq, ip = rng.integers(0, q, q), rng.integers(0, pn, pn)
        g = gains[iq][:, ip].mean(axis=1)
        if np.ptp(x[iq]) > 0 and np.ptp(g) > 0:
            boot.append(spearmanr(x[iq], g).statistic)
    a = (1 - rep.confidence) / 2
    lo, hi = (np.quantile(boot, [a, 1 - a]) if boot else (float("nan"), float("nan")))
    return {"spearman": rho, "ci_low": float(lo), "ci_high": float(hi), "n_pairs": int(q), "n_problems": int(pn),
            "n_boot_valid": len(boot)}  # fmt: skip


def write_results(cfg: RunConfig, p: dict, timings: dict | None = None, log: LogFn | None = print) -> dict:
    """Everything measured so far as ``results.json``, ``results.md`` and plots (unfinished parts: pending)."""
    from skillray.eval.stage import arm_name
    from skillray.sft.ablate import problem_scores

    rep = cfg.replicate or ReplicateConfig()
    run, out = Path(cfg.run_dir), Path(cfg.run_dir) / "replicate" / rep.name
    d0, s0 = p["best"]
    res: dict = {"format": FORMAT, "plan": p, "config": rep.model_dump(), "timings_s": timings or {},
                 "machine": _machine(), "model_dtype": _dtype(out / "test")}  # fmt: skip
    old = out / "results.json"
    if old.is_file() and timings is not None:  # keep the timings of parts a resumed run skipped quickly
        prev = json.loads(old.read_text()).get("timings_s", {})
        res["timings_s"] = {**prev, **{k: v for k, v in (timings or {}).items() if v > 1.0 or k not in prev}}
    if _finished(out / "dev" / "sweep"):
        res["alpha"], res["dev_alpha"] = choose_alpha(out / "dev", p["best"], rep.alphas, set(p.get("dev_excluded", [])))
    alpha = res.get("alpha", p.get("alpha"))

    # SFT arms (main: best + baselines; pairs: the others), each {scores: {bench: (ids, (S,P))}, meta, tokens}
    arms: dict[str, dict] = {}
    missing: list[str] = []  # SFT cells not finished yet
    for which, grid in (("main", _ablation(cfg, rep, p, "main")), ("pairs", _ablation(cfg, rep, p, "pairs"))):
        cells_root = run / "ablate" / grid.name / "cells"
        for sel in grid.strategies:
            cells = {s: cells_root / f"{sel.name}-n{rep.budget}-s{s}" for s in rep.seeds}
            got = _arm_matrix(cells)
            missing += [f"{which}: {sel.name} seed {s}" for s in rep.seeds if got is None or s not in got[0]]
            meta = {"strategy": sel.strategy, "grid": which}
            if sel.strategy == "direction":
                meta.update(direction=sel.direction, sign=sel.sign, probe_score=_score(p, sel.direction, sel.sign))
            if got is not None:
                key = "random" if sel.strategy == "random" else sel.name
                arms[key] = {"seeds": got[0], "scores": got[1], "meta": meta,
                             "tokens": _tokens([cells[s] for s in got[0]])}
    best = _label("best", d0, s0)
    benches = sorted(next(iter(arms.values()))["scores"]) if arms else []
    if "random" in arms:
        res["sft"] = {}
        for bench in benches:
            main_f = [a for a in [best, *[b.name or b.strategy for b in rep.baselines]] if a in arms and a != "random"]
            pair_f = [a for a in arms if arms[a]["meta"]["grid"] == "pairs"]
            pair_f = ([best] if best in arms and pair_f else []) + pair_f
            res["sft"][bench] = {"main": _sft_family(arms, rep, main_f, bench) if main_f else [],
                                 "pairs": _sft_family(arms, rep, pair_f, bench) if pair_f else []}  # fmt: skip
            if pair_f:
                res["sft"][bench]["top_minus_bottom"] = _top_minus_bottom(arms, p, bench, rep)

    # steering: base model (every probed pair + controls), fine-tuned model (best, opposite, controls)
    if alpha is not None:
        directions = _steer_directions(cfg, rep)
        names = [arm_name(d, s, alpha, "residual") for d in directions for s in (1, -1)]
        ctrls = [arm_name(d0, s, alpha, "residual", c) for s in (1, -1) for c in rep.control_seeds]
        best_arm, opp_arm = arm_name(d0, s0, alpha, "residual"), arm_name(d0, -s0, alpha, "residual")
        planned = [best_arm, opp_arm, *[arm_name(d0, s0, alpha, "residual", c) for c in rep.control_seeds]]
        probe_of = {arm_name(d, s, alpha, "residual"): _score(p, d, s) for d in directions for s in (1, -1)}
        base_rows = _steer_rows(out / "test", names + ctrls, rep, planned, probe_of)
        if base_rows is not None:
            res["steer_base"] = base_rows
            res["probe_vs_steer"] = {}
            for bench in base_rows:
                ids_scores = problem_scores(out / "test" / "samples" / "base", [1])[(bench, 1)][1]
                gains, xs = [], []
                for d in directions:
                    for s in (1, -1):
                        v = problem_scores(out / "test" / "sweep" / "samples" / arm_name(d, s, alpha, "residual"), [1])
                        gains.append(v[(bench, 1)][1] - ids_scores)
                        xs.append(_score(p, d, s))
                ok = [i for i, x in enumerate(xs) if x is not None]
                res["probe_vs_steer"][bench] = _spearman_ci(np.array([xs[i] for i in ok]),
                                                            np.stack([gains[i] for i in ok]), rep)  # fmt: skip
        if rep.steer_finetuned:
            cell = _finetuned_cell(run, rep, p)
            ft_arms = [best_arm, opp_arm] + [arm_name(d0, s, alpha, "residual", c) for s in (s0, -s0)
                                             for c in rep.control_seeds]  # fmt: skip
            ft = _steer_rows(cell / "eval", ft_arms, rep, planned, probe_of)
            if ft is not None:
                res["steer_finetuned"] = ft
    res["scores"] = _per_problem(arms, out, run, rep, p, alpha)
    res["pending"] = [k for k in ("dev_alpha", "sft", "steer_base", "steer_finetuned") if k not in res]
    res["sft_cells_missing"] = missing
    atomic_write_json(out / "results.json", res)
    atomic_write_bytes(out / "results.md", results_markdown(res).encode())
    for name, png in _plots(res).items():
        atomic_write_bytes(out / "plots" / name, png)
    if log:
        log(f"[replicate] results: {out / 'results.md'}")
    return res


def _finetuned_cell(run: Path, rep: ReplicateConfig, p: dict) -> Path:
    """The main grid's cell whose model is steered: the best pair's first seed."""
    return run / "ablate" / f"{rep.name}-main" / "cells" / f"{_label('best', *p['best'])}-n{rep.budget}-s{rep.seeds[0]}"


def _values(v: np.ndarray) -> list:
    return [int(x) if x in (0, 1) else round(float(x), 4) for x in v]


def _per_problem(arms: dict, out: Path, run: Path, rep: ReplicateConfig, p: dict, alpha: float | None) -> dict:
    """Every finished arm's Pass@1 per problem, per benchmark: the raw data of every table above, small enough to
    commit beside them (a few tens of KB), so the statistics can be recomputed, and a run's finished cells
    reported, even when the run directory (models, samples) is gone."""
    from skillray.sft.ablate import problem_scores

    res: dict = {}

    def of(bench: str, ids) -> dict:
        return res.setdefault(bench, {"problems": list(ids), "sft": {}, "steer_base": {}, "steer_finetuned": {}})

    for k, a in arms.items():
        for bench, (ids, m) in a["scores"].items():
            of(bench, ids)["sft"][k] = {str(seed): _values(row) for seed, row in zip(a["seeds"], m)}
    for part, eval_dir in (("steer_base", out / "test"), ("steer_finetuned", _finetuned_cell(run, rep, p) / "eval")):
        if alpha is None or not _finished(eval_dir / "sweep"):
            continue
        arms_dir = eval_dir / "sweep" / "samples"
        for name, path in [("unsteered", eval_dir / "samples" / "base")] + sorted((q.name, q) for q in arms_dir.iterdir() if q.is_dir()):
            for (bench, _k), (ids, v) in problem_scores(path, [1]).items():
                b = of(bench, ids)
                b[part][name] = _values(v) if list(ids) == b["problems"] else {"problems": list(ids), "pass@1": _values(v)}
    return res


def _score(p: dict, d: int, s: int) -> float | None:
    for dd, ss, sc in p["ranking"]:
        if int(dd) == d and int(ss) == s:
            return float(sc)
    return None


def _top_minus_bottom(arms: dict, p: dict, bench: str, rep: ReplicateConfig) -> dict:
    """Mean SFT Pass@1 of the top-N probe pairs minus that of the bottom-N (paired by seed and problem)."""
    from skillray.eval.stats import compare_arms

    pair_arms = [k for k, a in arms.items() if a["meta"].get("direction") is not None]
    seeds = sorted(set.intersection(*(set(arms[k]["seeds"]) for k in pair_arms))) if pair_arms else []

    def of(pairs):
        keys = [k for k in pair_arms if [arms[k]["meta"]["direction"], arms[k]["meta"]["sign"]] in pairs]
        mats = [arms[k]["scores"][bench][1][[arms[k]["seeds"].index(s) for s in seeds]] for k in keys]
        return keys, np.mean(mats, axis=0) if keys and seeds else None

    tk, top = of(p["top"])
    bk, bottom = of(p["bottom"])
    if top is None or bottom is None or len(tk) != len(p["top"]) or len(bk) != len(p["bottom"]):
        return {"pending": True}
    st = compare_arms({"top": top, "bottom": bottom}, "bottom", n_boot=rep.n_bootstrap, confidence=rep.confidence,
                      alpha=1 - rep.confidence, power=POWER)["top"]  # fmt: skip
    return {"top_arms": tk, "bottom_arms": bk, "seeds": seeds, **{x: st[x] for x in ("delta", "delta_ci_low", "delta_ci_high", "p",
                                                                       "mde")}}  # fmt: skip


def _machine() -> dict:
    import os
    import platform

    from skillray.models import cpu_flags

    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "extensions": ext}


def _dtype(eval_dir: Path) -> str | None:
    m = read_manifest(eval_dir)
    return None if m is None else m.summary.get("dtype")


# ----------------------------------------------------------------------------- markdown and plots


def _f(x, nd=3, sign=False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def results_markdown(res: dict) -> str:
    p, rep = res["plan"], res["config"]
    d0, s0 = p["best"]
    pct = f"{rep['confidence']:.0%}"
    lines = [f"# Replication: selection, steering and the probe on this run ({FORMAT})", "",
             f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores ({', '.join(res['machine']['extensions']) or 'no AVX-512/AMX'}); "
             f"model dtype: {res.get('model_dtype') or '-'}.", "",
             f"Probe ranking ({p['ranked_by']}): best pair **{pair_name(d0, s0)}**; top {[pair_name(*x) for x in p['top']]}, "
             f"bottom {[pair_name(*x) for x in p['bottom']]}.", ""]  # fmt: skip
    cells = res.get("sft_cells_missing", [])
    lines += [f"Pending parts: {', '.join(res['pending']) or 'none'}."
              + (f" SFT cells not finished yet ({len(cells)}): {'; '.join(cells)}; the SFT tables pair the arms on "
                 "the seeds they all finished." if cells else ""), ""]  # fmt: skip
    if "dev_alpha" in res:
        lines += [f"## Alpha, chosen on the dev set (procedural seed {rep['dev']['seed']}, never the test problems)",
                  "", f"{len(p.get('dev_excluded', []))} dev problems whose question is also a test question are "
                  "left out of the choice.", "", "| alpha | dev Pass@1 change | dev problems |", "|---:|---:|---:|"]
        lines += [f"| {r['alpha']:g}{' (chosen)' if r['alpha'] == res['alpha'] else ''} | {_f(r['delta_pass@1'], sign=True)} "
                  f"| {r['n_problems']} |" for r in res["dev_alpha"]]  # fmt: skip
        lines.append("")
    for bench, fam in (res.get("sft") or {}).items():
        n_seeds = sorted({r["n_seeds"] for part in ("main", "pairs") for r in fam.get(part, [])})
        lines += [f"## SFT on {rep['budget']} selected examples, {'/'.join(map(str, n_seeds))} of {len(rep['seeds'])} seeds: {bench}", "",
                  f"Pass@1 (greedy) of each fine-tuned arm: mean over seeds and problems, {pct} hierarchical bootstrap "
                  f"interval (seeds, then problems); `delta` = arm - random paired by seed and problem, `p_holm` "
                  f"Holm-adjusted within the table; `mde` = smallest difference this design detects with 80% power.",
                  "", "| arm | probe score | Pass@1 | CI | per seed | delta vs random | CI | p | p_holm | mde | train tokens |",
                  "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for part in ("main", "pairs"):
            for r in fam.get(part, []):
                if part == "pairs" and r["arm"] == "random":
                    continue
                lines.append(f"| {r['arm']}{' (pairs)' if part == 'pairs' else ''} | {_f(r.get('probe_score'), 4, True)} | "
                             f"{_f(r['mean'])} | [{_f(r['ci_low'])}, {_f(r['ci_high'])}] | "
                             f"{', '.join(_f(x) for x in r['seed_means'])} | {_f(r.get('delta'), sign=True)} | "
                             f"[{_f(r.get('delta_ci_low'), sign=True)}, {_f(r.get('delta_ci_high'), sign=True)}] | "
                             f"{_f(r.get('p'))} | {_f(r.get('p_holm'))} | {_f(r.get('mde'))} | {_f(r['train_tokens'], 0)} |")  # fmt: skip
        tmb = fam.get("top_minus_bottom")
        if tmb and not tmb.get("pending"):
            lines += ["", f"Top-{len(p['top'])} minus bottom-{len(p['bottom'])} probe pairs (SFT Pass@1): "
                      f"{_f(tmb['delta'], sign=True)} [{_f(tmb['delta_ci_low'], sign=True)}, {_f(tmb['delta_ci_high'], sign=True)}], "
                      f"p {_f(tmb['p'])}, mde {_f(tmb['mde'])}."]  # fmt: skip
        lines.append("")
    for key, title in (("steer_base", "Steering the base model"), ("steer_finetuned", "Steering the fine-tuned model")):
        for bench, rows in (res.get(key) or {}).items():
            lines += [f"## {title} (alpha {res.get('alpha'):g}, chosen on dev): {bench}", "",
                      "Greedy Pass@1; `delta` = arm - unsteered, paired by problem; `p_holm` over the planned "
                      "comparisons (best pair, its opposite, the controls of the best pair's sign); `ctrl` arms steer "
                      "along a random direction with the best pair's per-layer norms.", "",
                      "| arm | probe score | Pass@1 | delta | CI | p | p_holm | mde |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for r in rows:
                lines.append(f"| {r['arm']} | {_f(r.get('probe_score'), 4, True)} | {_f(r['mean'])} | {_f(r.get('delta'), sign=True)} | "
                             f"[{_f(r.get('delta_ci_low'), sign=True)}, {_f(r.get('delta_ci_high'), sign=True)}] | "
                             f"{_f(r.get('p'))} | {_f(r.get('p_holm'))} | {_f(r.get('mde'))} |")  # fmt: skip
            lines.append("")
    for bench, s in (res.get("probe_vs_steer") or {}).items():
        lines.append(f"Probe score vs steering gain ({bench}): Spearman {_f(s['spearman'], sign=True)} "
                     f"[{_f(s['ci_low'], sign=True)}, {_f(s['ci_high'], sign=True)}] over {s['n_pairs']} pairs "
                     f"({pct} bootstrap of pairs and problems).")  # fmt: skip
    if res.get("probe_vs_steer"):
        lines.append("")
    if res.get("timings_s"):
        lines += ["## Wall time (seconds)", "", "| part | s |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in res["timings_s"].items()]
        lines += ["", f"Total: {sum(res['timings_s'].values()) / 3600:.2f} h."]
    return "\n".join(lines) + "\n"


def _plots(res: dict) -> dict[str, bytes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = {}

    def png(fig) -> bytes:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    for bench, fam in (res.get("sft") or {}).items():
        rows = fam.get("main", []) + [r for r in fam.get("pairs", []) if r["arm"] not in {x["arm"] for x in fam.get("main", [])}]
        if not rows:
            continue
        fig = Figure(figsize=(7, 3.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        y = np.arange(len(rows))
        m = np.array([r["mean"] for r in rows])
        err = np.vstack([m - [r["ci_low"] for r in rows], np.array([r["ci_high"] for r in rows]) - m]).clip(min=0)
        ax.errorbar(m, y, xerr=err, fmt="o", capsize=3)
        ax.set_yticks(y, [r["arm"] for r in rows], fontsize=8)
        ax.set_xlabel("Pass@1 after SFT (mean over seeds; 95% hierarchical bootstrap CI)")
        ax.set_title(f"{bench}: SFT arms")
        out[f"sft_{bench}.png"] = png(fig)
    for bench, rows in (res.get("steer_base") or {}).items():
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        rr = [r for r in rows if r["arm"] != "unsteered"]
        y = np.arange(len(rr))
        m = np.array([r["delta"] for r in rr])
        err = np.vstack([m - [r["delta_ci_low"] for r in rr], np.array([r["delta_ci_high"] for r in rr]) - m]).clip(min=0)
        ax.errorbar(m, y, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="grey", linestyle=":")
        ax.set_yticks(y, [r["arm"] for r in rr], fontsize=7)
        ax.set_xlabel("Pass@1 change vs unsteered (paired bootstrap CI)")
        ax.set_title(f"{bench}: steering the base model")
        out[f"steer_{bench}.png"] = png(fig)
    return out


__all__ = ["choose_alpha", "plan", "run_replicate", "write_results"]
