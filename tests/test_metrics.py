"""Calibration metrics against hand-computed values, scipy and scikit-learn."""

import numpy as np
import pytest
from conftest import make_linear
from scipy.stats import norm
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

import sigma
from sigma import metrics


def test_coverage_counts_standardised_errors_against_gaussian_quantiles():
    mean, std = np.zeros((4, 1)), np.full((4, 1), 2.0)
    targets = np.array([[1.0], [-1.9], [3.0], [-4.1]])  # |t − μ|/σ = 0.5, 0.95, 1.5, 2.05
    assert metrics.coverage(mean, std, targets, 0.68) == 0.5  # z = 0.994
    assert metrics.coverage(mean, std, targets, 0.95) == 0.75  # z = 1.960
    levels, observed = metrics.coverage_curve(mean, std, targets, [0.4, 0.95])
    np.testing.assert_array_equal(observed, [0.25, 0.75])  # z(0.4) = 0.524


def test_coverage_of_calibrated_gaussian_matches_level(rng):
    std = rng.uniform(0.5, 2.0, size=(50_000, 2))
    mean = rng.normal(size=std.shape)
    targets = mean + std * rng.normal(size=std.shape)
    m = metrics.regression_metrics(mean, std, targets)
    assert abs(m["coverage_68"] - 0.68) < 0.005 and abs(m["coverage_95"] - 0.95) < 0.005
    np.testing.assert_allclose(m["mean_sigma"], std.mean())
    # the NLL of a calibrated Gaussian is E[½ ln(2πσ²)] + ½
    np.testing.assert_allclose(m["nll"], np.mean(0.5 * np.log(2 * np.pi * std**2)) + 0.5, atol=0.01)


def test_gaussian_nll_and_rmse_closed_forms(rng):
    mean, std, targets = (
        rng.normal(size=(5, 3)),
        rng.uniform(0.1, 3.0, (5, 3)),
        rng.normal(size=(5, 3)),
    )
    np.testing.assert_allclose(
        metrics.gaussian_nll(mean, std, targets),
        -np.mean(norm.logpdf(targets, mean, std)),
        rtol=1e-12,
    )
    assert metrics.rmse(np.zeros(4), np.array([1.0, -1.0, 3.0, 3.0])) == np.sqrt(5.0)


def test_classification_metrics_against_sklearn(rng):
    logits = rng.normal(size=(40, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, size=40)
    m = metrics.classification_metrics(probs, labels)
    assert m["accuracy"] == accuracy_score(labels, probs.argmax(axis=1))
    np.testing.assert_allclose(m["nll"], log_loss(labels, probs), rtol=1e-12)
    np.testing.assert_allclose(
        m["brier"], brier_score_loss(labels, probs, labels=[0, 1, 2]), rtol=1e-12
    )
    # one-hot labels give the same
    assert metrics.classification_metrics(probs, np.eye(3)[labels]) == m


def test_expected_calibration_error_by_hand():
    # confidences 0.9, 0.9 (bin 9; one right) and 0.6 (bin 6; right), 0.55 (bin 6; wrong)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])
    r = metrics.reliability(probs, labels, n_bins=10)
    np.testing.assert_array_equal(r["count"], [0, 0, 0, 0, 0, 2, 0, 0, 2, 0])
    np.testing.assert_allclose(r["confidence"][[5, 8]], [0.575, 0.9])
    np.testing.assert_allclose(r["accuracy"][[5, 8]], [0.5, 0.5])
    # ECE = 2/4 · |0.5 − 0.575| + 2/4 · |0.5 − 0.9|
    np.testing.assert_allclose(
        metrics.expected_calibration_error(probs, labels), 0.5 * 0.075 + 0.5 * 0.4
    )
    assert metrics.expected_calibration_error(np.eye(2)[[0, 1]], [0, 1]) == 0.0


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        metrics.coverage(np.zeros((3, 2)), np.ones((3, 1)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="std must be > 0"):
        metrics.gaussian_nll(np.zeros(3), np.array([1.0, 0.0, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        metrics.coverage(np.zeros(3), np.ones(3), np.zeros(3), level=95)
    with pytest.raises(ValueError, match="rows that sum to 1"):
        metrics.nll(np.array([[2.0, -1.0]]), [0])
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 2\)"):
        metrics.accuracy(np.array([[0.5, 0.5]]), [2])


def test_beta_scan_restores_the_laplace(rng):
    x, x_test = rng.normal(size=(30, 3)), rng.normal(size=(10, 3))
    w = rng.normal(size=(3, 2))
    y, y_test = x @ w + 0.5 * rng.normal(size=(30, 2)), x_test @ w + 0.5 * rng.normal(size=(10, 2))
    model = make_linear(use_bias=False)
    sigma.set_flat_weights(model, np.linalg.lstsq(x, y, rcond=None)[0].ravel())
    la = sigma.Laplace(model, x, y, alpha=1.0, beta=2.0)
    scan = sigma.lab.beta_scan(la, [1.0, 4.0], x_test, y_test)
    assert (la.alpha, la.beta) == (1.0, 2.0)
    assert set(scan) >= {"beta", "alpha", "log_evidence", "gamma", "coverage_95", "nll"}
    la.beta = 4.0
    la.optimize_evidence(fix_beta=True)
    np.testing.assert_allclose(scan["alpha"][1], la.alpha)
    np.testing.assert_allclose(scan["log_evidence"][1], la.log_evidence())
    mean, std = la.predict(x_test)
    np.testing.assert_allclose(scan["nll"][1], metrics.gaussian_nll(mean, std, y_test))
