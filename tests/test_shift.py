"""Shifted and out-of-distribution digits (sigma.lab.shift) and the OOD-detection metrics
(sigma.metrics.auroc, fpr_at_tpr, predictive_entropy), against direct computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sigma import metrics
from sigma.lab import data, shift


@pytest.fixture(scope="module")
def digits():
    return data.digits_split(seed=0)[1][:20]


def test_rotations(digits):
    np.testing.assert_allclose(shift.rotate(digits, 0), digits, atol=1e-12)
    images = digits.reshape(-1, 8, 8)
    quarter = shift.rotate(digits, 90).reshape(-1, 8, 8)
    np.testing.assert_allclose(quarter, np.rot90(images, 1, axes=(1, 2)), atol=1e-9)
    r = shift.rotate(digits.reshape(-1, 8, 8, 1), 45)
    assert r.shape == (20, 8, 8, 1) and r.min() >= 0 and r.max() <= 1
    assert not np.allclose(r.reshape(20, 64), digits)
    with pytest.raises(ValueError, match="x must be digits images"):
        shift.rotate(np.zeros((3, 10)), 15)


def test_noise_uniform_and_inversion(digits):
    np.testing.assert_array_equal(shift.add_noise(digits, 0.0), digits)
    a = shift.add_noise(digits, 0.3, seed=1)
    np.testing.assert_array_equal(a, shift.add_noise(digits, 0.3, seed=1))
    assert a.min() >= 0 and a.max() <= 1 and 0.1 < np.std(a - digits) < 0.3
    u = shift.uniform_images(500, seed=2)
    assert u.shape == (500, 64) and abs(u.mean() - 0.5) < 0.01
    assert shift.uniform_images(3, like=np.zeros((5, 8, 8, 1))).shape == (3, 8, 8, 1)
    np.testing.assert_allclose(shift.invert(digits), 1.0 - digits)
    with pytest.raises(ValueError, match="std must be"):
        shift.add_noise(digits, -1.0)


def test_auroc_against_scikit_learn_and_ties(rng):
    s_in, s_out = rng.normal(size=200), rng.normal(0.7, 1.0, size=150)
    labels = np.r_[np.zeros(200), np.ones(150)]
    expected = roc_auc_score(labels, np.r_[s_in, s_out])
    assert metrics.auroc(s_in, s_out) == pytest.approx(expected, rel=1e-12)
    assert metrics.auroc(np.zeros(5), np.zeros(7)) == 0.5  # all tied: chance
    assert metrics.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        metrics.auroc([], [1.0])


def test_fpr_at_tpr_by_hand():
    s_out = np.arange(1.0, 21.0)  # 20 OOD scores: the 95% threshold flags 19 of them, ≥ 2
    s_in = np.array([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 10.0, 30.0])
    assert metrics.fpr_at_tpr(s_in, s_out) == pytest.approx(5 / 8)  # 2.0, 2.5, 3, 10, 30
    assert metrics.fpr_at_tpr(s_in, s_out, tpr=0.5) == pytest.approx(1 / 8)  # ≥ 11: 30
    assert metrics.fpr_at_tpr([0.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="tpr must be"):
        metrics.fpr_at_tpr(s_in, s_out, tpr=0.0)


def test_predictive_entropy():
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(metrics.predictive_entropy(p), [0.0, np.log(3), np.log(2)])
    np.testing.assert_allclose(metrics.predictive_entropy([[0.5]]), [np.log(2)])
