"""Data helpers: the Iris split of the original notebook, one-hot targets."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split


def one_hot(labels, num_classes: int | None = None) -> np.ndarray:
    """Integer labels (N,) → one-hot float64 (N, C)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
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
        data["data"], data["target"], test_size=test_size, random_state=seed, stratify=data["target"]
    )
    if one_hot_targets:
        t_train, t_test = one_hot(t_train, 3), one_hot(t_test, 3)
    return x_train.astype(np.float64), x_test.astype(np.float64), t_train, t_test


IRIS_CLASSES = ("setosa", "versicolor", "virginica")
