"""Statistics of a seeds x problems design: the resampled means equal materialised resamples, Holm matches a
hand computation, and on simulated designs with a known truth the intervals cover, the p-values hold their
level and the stated detectable effect is detected about as often as promised."""

import numpy as np
import pytest

from skillray.eval.stats import (
    bootstrap_p,
    compare_arms,
    draw,
    holm,
    min_detectable_effect,
    percentile_interval,
    resampled_means,
)


def _design(rng, s, p, mu=0.5, sd_seed=0.05, sd_problem=0.2, sd_noise=0.1, problems=None):
    """Scores mu + seed effect + problem effect + noise, shape (S, P); ``problems`` = shared problem effects."""
    b = rng.normal(0, sd_problem, p) if problems is None else problems
    return mu + rng.normal(0, sd_seed, (s, 1)) + b[None, :] + rng.normal(0, sd_noise, (s, p))


def test_resampled_means_equal_materialised_resamples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 9))
    d = draw(4, 9, 50, seed=3)
    got = resampled_means(x, d)
    want = np.array([x[d.seeds[b]][:, d.problems[b]].mean() for b in range(50)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # the same sums in another order
    assert d.seeds.shape == (50, 3)  # S - 1 seeds per resample: the unbiased variance of their mean
    flat = draw(4, 9, 20, seed=3, resample_seeds=False)
    assert (flat.seeds == np.arange(4)).all()
    with pytest.raises(ValueError, match=r"scores of shape \(3, 9\) do not match draws of 4 seeds x 9 problems"):
        resampled_means(x[:3], d)


def test_holm_against_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])  # one comparison: unchanged


def test_mde_formula_and_bootstrap_p_edges():
    # z_{0.975} = 1.959964, z_{0.8} = 0.841621
    assert min_detectable_effect(0.01, 0.05, 0.8) == pytest.approx(0.01 * (1.959964 + 0.841621), rel=1e-5)
    assert np.isnan(min_detectable_effect(0.0))  # no pair differed: sensitivity not estimable, never "0"
    with pytest.raises(ValueError, match="alpha=1.5"):
        min_detectable_effect(0.01, 1.5)
    assert bootstrap_p(0.0, np.array([-1.0, 1.0])) == 1.0
    boot = np.random.default_rng(0).normal(1.0, 0.1, 999)  # estimate 10 SE from 0: nothing crosses
    assert bootstrap_p(1.0, boot) == pytest.approx(1 / 1000)
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def test_interval_coverage_on_a_known_design():
    """90% intervals of an arm's mean cover the true mean about 90% of the time when seeds vary; the
    problems-only bootstrap (what ablate used before) does not."""
    rng = np.random.default_rng(1)
    s, p, sims, mu = 8, 40, 300, 0.5
    hier = flat = 0
    for i in range(sims):
        x = _design(rng, s, p, mu, sd_seed=0.15, sd_problem=0.1)
        d = draw(s, p, 400, seed=i)
        lo, hi = percentile_interval(resampled_means(x, d), 0.9)
        hier += lo <= mu <= hi
        lo, hi = percentile_interval(resampled_means(x, draw(s, p, 400, seed=i, resample_seeds=False)), 0.9)
        flat += lo <= mu <= hi
    # binomial sd of a 0.9 rate over 300 sims is 0.017; at S=8 a percentile interval still lacks t tails
    assert 0.82 <= hier / sims <= 0.98
    assert flat / sims < 0.6


def test_paired_differences_hold_level_and_power():
    """No effect: Holm-adjusted rejections at 5% are rare. An effect equal to the stated MDE: detected about
    80% of the time. A large effect: always detected, with the right sign and an interval around it."""
    rng = np.random.default_rng(2)
    s, p, sims = 6, 60, 200

    def arms(effect):
        shared = rng.normal(0, 0.25, p)  # the problems' difficulty: the same for every arm (pairing)
        return {"random": _design(rng, s, p, 0.4, problems=shared),
                "a": _design(rng, s, p, 0.4 + effect, problems=shared),
                "b": _design(rng, s, p, 0.4, problems=shared)}  # fmt: skip

    null = sum(compare_arms(arms(0.0), "random", n_boot=300, seed=i)["a"]["p"] < 0.05 for i in range(sims))
    assert null / sims <= 0.1  # 5% nominal; binomial sd over 200 sims 0.015
    res = compare_arms(arms(0.0), "random", n_boot=1000, seed=0)
    mde = res["a"]["mde"]  # at alpha/2 (Holm's strictest step, two comparisons)
    assert mde == pytest.approx(min_detectable_effect(res["a"]["delta_se"], 0.025, 0.8))
    hits = 0
    for i in range(sims):
        r = compare_arms(arms(mde), "random", n_boot=300, seed=i)
        hits += r["a"]["p_holm"] < 0.05
    assert 0.6 <= hits / sims <= 0.97  # 80% promised (normal approximation, bootstrap p-values)
    big = compare_arms(arms(0.3), "random", n_boot=500, seed=0)
    assert big["a"]["p_holm"] < 0.01 and big["a"]["delta_ci_low"] <= big["a"]["delta"] <= big["a"]["delta_ci_high"]
    assert 0.2 < big["a"]["delta"] < 0.4 and big["b"]["p_holm"] >= big["b"]["p"]
    assert "delta" not in big["random"] and big["random"]["ci_low"] <= big["random"]["mean"] <= big["random"]["ci_high"]


def test_compare_arms_checks_shapes_and_baseline():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"one shape \(seeds, problems\)"):
        compare_arms({"a": x, "random": np.zeros((2, 4))}, "random")
    with pytest.raises(ValueError, match="baseline 'random' is not one of the arms"):
        compare_arms({"a": x}, "random")
    one = compare_arms({"a": np.ones((1, 5))}, None, n_boot=20)
    assert one["a"]["mean"] == 1.0 and one["a"]["se"] == 0.0
