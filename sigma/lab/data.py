"""Data helpers: the Iris split of the original notebook, digits, one-hot targets, synthetic
teacher-network regression, and the standardised diabetes and Friedman #1 regressions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split


def one_hot(labels, num_classes: int | None = None) -> np.ndarray:
    """Integer labels (N,) → one-hot float64 (N, C)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative integers")
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.size and labels.max() >= c:
        raise ValueError(f"labels go up to {labels.max()} but num_classes is {c}")
    return np.eye(c)[labels]


def iris_split(test_size: float = 0.33, seed: int = 0, *, one_hot_targets: bool = True):
    """Iris (150 × 4 features, 3 classes) split as in the original notebook.

    Returns ``x_train, x_test, y_train, y_test`` (float64); targets one-hot (N, 3) by default,
    integer labels otherwise. The split is stratified and seeded.
    """
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    data = load_iris()
    x_train, x_test, t_train, t_test = train_test_split(
        data["data"],
        data["target"],
        test_size=test_size,
        random_state=seed,
        stratify=data["target"],
    )
    if one_hot_targets:
        t_train, t_test = one_hot(t_train, 3), one_hot(t_test, 3)
    return x_train.astype(np.float64), x_test.astype(np.float64), t_train, t_test


IRIS_CLASSES = ("setosa", "versicolor", "virginica")


def digits_split(test_size: float = 0.25, seed: int = 0, *, images: bool = False):
    """scikit-learn's handwritten digits (1797 × 8×8 grey levels, 10 classes; shipped with
    scikit-learn, no download), pixels scaled to [0, 1], split stratified and seeded.

    Returns ``x_train, x_test, labels_train, labels_test``: x (N, 64) float64, or (N, 8, 8, 1)
    with ``images=True``; integer labels (N,).
    """
    from sklearn.datasets import load_digits

    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    data = load_digits()
    x = data["data"].astype(np.float64) / 16.0
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return train_test_split(
        x, data["target"], test_size=test_size, random_state=seed, stratify=data["target"]
    )


def teacher_regression(
    n_train: int,
    n_test: int,
    *,
    n_inputs: int = 784,
    n_outputs: int = 10,
    hidden: int = 32,
    noise: float = 0.1,
    seed: int = 0,
):
    """Synthetic regression from a random teacher network, t = tanh(x W₁/√D) W₂ + ε,
    x ~ N(0, I_D), W ~ N(0, 1), ε ~ N(0, noise²) per output.

    Returns ``x_train, x_test, y_train, y_test`` (float64; x (N, D), y (N, K)). The noise
    precision of the data is 1/noise².
    """
    if min(n_train, n_test, n_inputs, n_outputs, hidden) < 1 or not noise > 0:
        raise ValueError("sizes must be positive integers and noise > 0")
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_inputs, hidden))
    w2 = rng.standard_normal((hidden, n_outputs)) / np.sqrt(hidden)
    x = rng.standard_normal((n_train + n_test, n_inputs))
    y = np.tanh(x @ w1 / np.sqrt(n_inputs)) @ w2 + noise * rng.standard_normal((len(x), n_outputs))
    return x[:n_train], x[n_train:], y[:n_train], y[n_train:]


class RegressionSplit(NamedTuple):
    """A train/test split standardised with the training statistics: x (N, D), y (N, 1), both
    float64; the target in units of ``y_scale`` around ``y_mean`` (original = y·y_scale + y_mean),
    so a noise precision β in these units is β / y_scale² in the original ones."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    y_mean: float
    y_scale: float


def standardised(x_train, x_test, y_train, y_test) -> RegressionSplit:
    """The split with inputs and targets standardised by the training part's mean and std."""
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    return RegressionSplit(
        (x_train - x_mean) / x_std,
        (x_test - x_mean) / x_std,
        ((y_train - y_mean) / y_std).reshape(-1, 1),
        ((y_test - y_mean) / y_std).reshape(-1, 1),
        y_mean,
        y_std,
    )


def diabetes_split(test_size: float = 0.2, seed: int = 0) -> RegressionSplit:
    """scikit-learn's diabetes data (442 patients, 10 baseline variables → a measure of disease
    progression one year later; shipped with scikit-learn, no download), split at random
    (seeded) and standardised with the training statistics (inputs and target)."""
    from sklearn.datasets import load_diabetes

    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    data = load_diabetes()
    x_train, x_test, y_train, y_test = train_test_split(
        data["data"].astype(np.float64),
        data["target"].astype(np.float64),
        test_size=test_size,
        random_state=seed,
    )
    return standardised(x_train, x_test, y_train, y_test)


def friedman_regression(
    n_train: int = 1000, n_test: int = 2000, *, noise: float = 1.0, seed: int = 0
) -> RegressionSplit:
    """Friedman #1 (scikit-learn's ``make_friedman1``): x ~ U[0, 1]¹⁰,
    t = 10 sin(π x₁x₂) + 20 (x₃ − ½)² + 10 x₄ + 5 x₅ + ε, ε ~ N(0, noise²) (x₆ … x₁₀ are
    irrelevant), standardised with the training statistics. The true noise precision is
    1/noise² in the original units, y_scale²/noise² in the standardised ones."""
    from sklearn.datasets import make_friedman1

    if min(n_train, n_test) < 2 or not noise > 0:
        raise ValueError("n_train and n_test must be at least 2 and noise > 0")
    x, y = make_friedman1(n_samples=n_train + n_test, noise=noise, random_state=seed)
    return standardised(x[:n_train], x[n_train:], y[:n_train], y[n_train:])
