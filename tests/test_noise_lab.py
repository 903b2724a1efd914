"""sigma.lab.noise (notebook 07's helpers) and predict(split=True) for ordinary regression."""

import math

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma.lab import noise


def test_friedman_noise_grows_with_x1():
    from sklearn.datasets import make_friedman1

    split = noise.friedman_growing_noise(500, 4000, low=0.2, high=4.0, seed=3)
    x_raw, clean = make_friedman1(n_samples=4500, noise=0.0, random_state=3)
    residual = split.y_test[:, 0] * split.y_scale + split.y_mean - clean[500:]
    x1 = x_raw[500:, 0]
    for lo, hi in ((0.0, 0.2), (0.8, 1.0)):
        sel = (x1 >= lo) & (x1 < hi)
        expected = np.sqrt(np.mean((0.2 + 3.8 * x1[sel]) ** 2))
        assert np.std(residual[sel]) == pytest.approx(expected, rel=0.1)


def test_scores_match_a_direct_computation():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=(300, 1)), rng.uniform(0.5, 2, size=(300, 1))
    y = mean + std * rng.standard_normal((300, 1))
    row = noise.scores(mean[100:], std[100:], y[100:], mean_cal=mean[:100], std_cal=std[:100],
                       y_cal=y[:100], scale=2.0, resplits=0)  # fmt: skip
    q = np.sort(np.abs(y[:100] - mean[:100]) / std[:100], axis=0)[math.ceil(101 * 0.9) - 1]
    inside = np.abs(y[100:] - mean[100:]) <= q * std[100:]
    assert row["conformal_coverage_90"] == pytest.approx(inside.mean())
    assert row["conformal_width_90"] == pytest.approx(np.mean(2 * q * std[100:]) * 2.0)
    assert row["rmse"] == pytest.approx(2.0 * np.sqrt(np.mean((y[100:] - mean[100:]) ** 2)))
    assert row["coverage_95"] == pytest.approx(
        np.mean(np.abs(y[100:] - mean[100:]) <= 1.959963985 * std[100:])
    )
    averaged = noise.scores(mean[100:], std[100:], y[100:], mean_cal=mean[:100],
                            std_cal=std[:100], y_cal=y[:100], resplits=300)  # fmt: skip
    assert averaged["conformal_coverage_90"] == pytest.approx(math.ceil(101 * 0.9) / 101, abs=0.01)


def test_calibration_split_holds_out_a_fraction():
    split = noise.friedman_growing_noise(100, 10, seed=0)
    x_fit, y_fit, x_cal, y_cal = noise.calibration_split(split, 0.2, seed=1)
    assert len(x_cal) == 20 and len(x_fit) == 80 and len(y_fit) == 80 and len(y_cal) == 20
    rows = {tuple(r) for r in np.concatenate([x_fit, x_cal])}
    assert rows == {tuple(r) for r in split.x_train}
    with pytest.raises(ValueError, match="fraction"):
        noise.calibration_split(split, 1.0)


def test_regression_split_gives_noise_and_weight_uncertainty_apart():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    la = sigma.Laplace(make_mlp(), x, y, alpha=2.0, beta=4.0)
    mean, std = la.predict(x[:5])
    m, alea, epi = la.predict(x[:5], split=True)
    np.testing.assert_allclose(m, mean)
    np.testing.assert_allclose(alea, 0.5)
    np.testing.assert_allclose(epi, la.predict(x[:5], noise=False)[1])
    np.testing.assert_allclose(alea**2 + epi**2, std**2, rtol=1e-12)


def test_growing_noise_refuses_a_non_positive_noise_level():
    """`not 0 < low and not 0 < high` let a negative low through when high was positive."""
    for low, high in ((-0.1, 0.6), (0.05, -0.6), (0.0, 0.6), (-1.0, -1.0)):
        with pytest.raises(ValueError, match=rf"low={low}, high={high}"):
            noise.growing_noise(10, low=low, high=high)
    with pytest.raises(ValueError, match="n must be at least 2"):
        noise.growing_noise(1)
    x, t, s = noise.growing_noise(10, low=0.1, high=0.5)
    assert x.shape == t.shape == s.shape == (10, 1) and np.all(s > 0)
