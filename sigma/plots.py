"""Plots the notebooks draw (matplotlib). Each takes arrays and returns the Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def prediction_bands(mean, std, targets, *, names=None, order=None, n_std: float = 2.0, title=None):
    """One panel per output: prediction ± n_std·σ per test point, with the targets.

    mean, std, targets : (N, K). Points are sorted by ``order`` (default: by the mean of the
    first output) so the band reads as a curve.
    """
    mean, std, targets = (np.asarray(a, dtype=float) for a in (mean, std, targets))
    n, k = mean.shape
    names = names or [f"output {i}" for i in range(k)]
    idx = np.argsort(mean[:, 0]) if order is None else np.asarray(order)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), sharey=True, squeeze=False)
    pos = np.arange(n)
    for i, ax in enumerate(axes[0]):
        m, s = mean[idx, i], std[idx, i]
        ax.fill_between(pos, m - n_std * s, m + n_std * s, color="C0", alpha=0.25, label=f"±{n_std:g}σ")
        ax.plot(pos, m, "o-", color="C0", ms=3, lw=1, label="prediction")
        ax.plot(pos, targets[idx, i], "k.", ms=5, label="target")
        inside = np.mean(np.abs(targets[:, i] - mean[:, i]) <= n_std * std[:, i])
        ax.set_title(f"{names[i]} ({inside:.0%} of targets within ±{n_std:g}σ)", fontsize=10)
        ax.set_xlabel("test point (sorted)")
    axes[0, 0].set_ylabel("network output")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
