"""Split conformal calibration (sigma.conformal, Laplace.conformalize): the minimum size, and
finite-sample coverage by simulation — one Laplace fit, 200 random calibration/test splits of
a pool of predictions, numpy only in the loop."""

import math

import numpy as np
import pytest
from conftest import make_linear

import sigma
from sigma import conformal

REPS, N_CAL, N_TEST = 200, 99, 400


def test_minimum_size_is_the_smallest_n_with_the_rank_inside_the_set():
    for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.9973):
        n = conformal.minimum_size(level)
        brute = next(m for m in range(1, 10**5) if math.ceil((m + 1) * level - 1e-9) <= m)
        assert n == brute
    assert conformal.minimum_size(0.9) == 9 and conformal.minimum_size(0.95) == 19


def _pool(rng, n=2000):
    """A homoscedastic linear Laplace on data whose noise grows with x: its own Gaussian
    intervals are miscalibrated (too wide at small x, too narrow at large x)."""
    x = rng.uniform(0, 1, size=(n + 200, 1))
    y = 2.0 * x + (0.05 + 0.6 * x**2) * rng.standard_normal(x.shape)
    model = make_linear(1, 1, seed=0)
    model.layers[-1].set_weights([np.array([[2.0]]), np.array([0.0])])
    la = sigma.Laplace(model, x[:200], y[:200], alpha=1.0).optimize_evidence()
    mean, std = la.predict(x[200:])
    return la, x[200:], y[200:], mean, std


def _band(level, n_cal, n_test, rng, draws=200_000):
    """The 0.5% and 99.5% quantiles of a split's test coverage: the true coverage of the
    conformal interval is Beta(r, n + 1 − r), r = ⌈(n + 1)·level⌉ (continuous scores), and
    the test coverage a binomial proportion of it."""
    r = math.ceil((n_cal + 1) * level - 1e-9)
    p = rng.beta(r, n_cal + 1 - r, size=draws)
    return np.quantile(rng.binomial(n_test, p) / n_test, [0.005, 0.995]), r / (n_cal + 1)


@pytest.fixture(scope="module")
def pool():
    return _pool(np.random.default_rng(0))


@pytest.fixture(scope="module")
def classifier_pool():
    return _classifier_pool(np.random.default_rng(3))


@pytest.mark.parametrize("level", [0.68, 0.9, 0.95])
def test_regression_coverage_holds_in_finite_samples(level, pool):
    rng = np.random.default_rng(0)
    _, _, y, mean, std = pool
    (low, high), expected = _band(level, N_CAL, N_TEST, rng)
    covered, raw = [], []
    z = {0.68: 0.9945578907, 0.9: 1.644853627, 0.95: 1.959963985}[level]
    for _ in range(REPS):
        idx = rng.permutation(len(y))
        cal, test = idx[:N_CAL], idx[N_CAL : N_CAL + N_TEST]
        scores = conformal.NormalisedScores(mean[cal], std[cal], y[cal])
        lo, hi = scores.interval(mean[test], std[test], level)
        covered.append(np.mean((y[test] >= lo) & (y[test] <= hi)))
        raw.append(np.mean(np.abs(y[test] - mean[test]) <= z * std[test]))
    covered, raw = np.array(covered), np.array(raw)
    se = covered.std(ddof=1) / np.sqrt(REPS)
    assert covered.mean() >= level - 3 * se  # never below the level on average
    assert abs(covered.mean() - expected) <= 4 * se
    assert np.mean((covered < low) | (covered > high)) <= 0.03  # within the binomial band
    # the same check fails on the model's own Gaussian intervals (the test can fail)
    assert abs(raw.mean() - expected) > 4 * se


def test_laplace_conformalize_gives_the_split_conformal_interval(pool):
    la, x, y, mean, std = (a[:400] if i else a for i, a in enumerate(pool))
    cal = la.conformalize(x[:100], y[:100])
    assert isinstance(cal, conformal.ConformalRegressor) and cal.n_calibration == 100
    scores = np.sort(np.abs(y[:100] - mean[:100]) / std[:100], axis=0)
    q = scores[math.ceil(101 * 0.9) - 1]
    lo, hi = cal.interval(x[100:], 0.9)
    np.testing.assert_allclose(lo, mean[100:] - q * std[100:], rtol=1e-12)
    np.testing.assert_allclose(hi, mean[100:] + q * std[100:], rtol=1e-12)
    m, lo2, hi2 = cal.predict(x[100:], level=0.9)
    np.testing.assert_allclose(m, mean[100:])
    np.testing.assert_allclose(lo2, lo)
    np.testing.assert_allclose(hi2, hi)
    # the calibrated σ: its central Gaussian interval at the level is the conformal one
    z = 1.6448536269514722  # Φ⁻¹(0.95)
    std_cal = cal.std(x[100:], 0.9)
    np.testing.assert_allclose(std_cal, q / z * std[100:], rtol=1e-12)
    np.testing.assert_allclose(m - z * std_cal, lo, rtol=1e-10, atol=1e-12)


def test_too_small_calibration_sets_and_nan_targets_are_refused(pool):
    la, x, y = pool[0], pool[1][:40], pool[2][:40]
    cal = la.conformalize(x[:8], y[:8])
    cal.interval(x, 0.8)  # 8 ≥ 4
    with pytest.raises(ValueError, match="has 8 samples, too few for level 0.9.*at least 9"):
        cal.interval(x, 0.9)
    with pytest.raises(ValueError, match="at least 19"):
        la.conformalize(x[:18], y[:18], level=0.95)
    bad = y[:20].copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="^y_cal contains 1 NaN"):
        la.conformalize(x[:20], bad)
    with pytest.raises(ValueError, match="level must be in"):
        cal.interval(x, 1.0)
    with pytest.raises(ValueError, match="y_cal must have the shape"):
        la.conformalize(x[:20], y[:19])
    bad_x = x[:20].copy()
    bad_x[3, 0] = np.nan
    with pytest.raises(ValueError, match="^x_cal contains 1 NaN"):
        la.conformalize(bad_x, y[:20])


def test_an_infinite_sigma_at_x_cal_is_refused_naming_x_cal():
    """A heteroscedastic model whose ln σ² overflows at a calibration input: refused naming
    x_cal (it said "std contains NaN", an internal name)."""
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 1))
    model = make_linear(2, 2, seed=0)
    model.layers[-1].set_weights([np.array([[0.1, 1.0], [0.2, 0.0]]), np.zeros(2)])
    la = sigma.Laplace(model, x, y, likelihood="heteroscedastic", structure="full", alpha=1.0)
    x_cal = x.copy()
    x_cal[5, 0] = 800.0  # ln σ² = 800 there
    with pytest.raises(ValueError, match="at some samples of x_cal"):
        la.conformalize(x_cal, y)


def _classifier_pool(rng, n=3000):
    x = rng.normal(size=(n + 300, 2))
    logits = x @ np.array([[2.0, -1.0, 0.0], [0.5, 1.5, -2.0]])
    labels = np.array(
        [rng.choice(3, p=p) for p in np.exp(logits) / np.exp(logits).sum(1, keepdims=True)]
    )
    model = make_linear(2, 3, seed=0)
    model.layers[-1].set_weights([np.array([[1.5, -0.5, 0.0], [0.2, 1.0, -1.0]]), np.zeros(3)])
    la = sigma.Laplace(model, x[:300], labels[:300], likelihood="classification", alpha=1.0)
    return la, x[300:], labels[300:]


@pytest.mark.parametrize("randomised", [True, False])
def test_adaptive_prediction_sets_cover_in_finite_samples(randomised, classifier_pool):
    rng = np.random.default_rng(3)
    la, x, labels = classifier_pool
    probs = la.predict_proba(x)
    level = 0.9
    (low, high), expected = _band(level, N_CAL, N_TEST, rng)
    covered, sizes = [], []
    for rep in range(REPS):
        idx = rng.permutation(len(labels))
        cal, test = idx[:N_CAL], idx[N_CAL : N_CAL + N_TEST]
        scores = conformal.APSScores(probs[cal], labels[cal], randomised=randomised, seed=rep)
        sets = scores.sets(probs[test], level)
        covered.append(np.mean(sets[np.arange(len(test)), labels[test]]))
        sizes.append(sets.sum(1).mean())
    covered = np.array(covered)
    se = covered.std(ddof=1) / np.sqrt(REPS)
    assert covered.mean() >= level - 3 * se
    if randomised:  # exact on average; the deterministic sets are conservative
        assert abs(covered.mean() - expected) <= 4 * se
        assert np.mean((covered < low) | (covered > high)) <= 0.03
    assert 1.0 < np.mean(sizes) < 3.0  # informative sets: not everything


def test_laplace_conformalize_for_a_classifier_gives_prediction_sets(classifier_pool):
    la, x, labels = (a[:400] if i else a for i, a in enumerate(classifier_pool))
    cal = la.conformalize(x[:200], labels[:200], seed=1)
    assert isinstance(cal, conformal.ConformalClassifier)
    sets = cal.predict_set(x[200:], 0.9)
    assert sets.shape == (200, 3) and sets.dtype == bool
    # the same call gives the same sets (u from a fresh generator per call, not a stateful one)
    np.testing.assert_array_equal(cal.predict_set(x[200:], 0.9), sets)
    np.testing.assert_array_equal(cal.predict_set(x[200:], 0.9), sets)
    probs = la.predict_proba(x[200:])
    # the sets are the top classes: whatever is in a set is at least as probable as what is not
    for p, s in zip(probs, sets, strict=True):
        if s.any() and (~s).any():
            assert p[s].min() >= p[~s].max()
    with pytest.raises(ValueError, match="y_cal must hold integer class labels"):
        la.conformalize(x[:30], np.full(30, 7))
