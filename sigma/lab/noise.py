"""Input-dependent noise and conformal calibration, compared
(``notebooks/07_heteroscedastic_and_conformal.py``).

Data whose noise depends on x — a 1-D curve with noise growing along x (:func:`growing_noise`),
Friedman #1 with a noise standard deviation that grows with x₁ (:func:`friedman_growing_noise`),
scikit-learn's diabetes data as they are — and the error bars of several methods from the same
MLP trained for the same epochs (:func:`run`): the Laplace methods (:func:`homoscedastic_laplace`
and :func:`heteroscedastic_laplace`, whose source notebook 07 prints; ``laplaces=`` others) against the **deep
ensemble** with Gaussian heads and **MC dropout** (:mod:`sigma.lab.baselines`).

Each method is then calibrated by split conformal prediction on a calibration set held out
from training (:mod:`sigma.conformal`) and scored on the test set: NLL, RMSE, coverage of the
central 68/90/95% Gaussian intervals before calibration and of the conformal intervals after,
and the mean width of the 90/95% intervals.
"""

from __future__ import annotations

import time

import numpy as np

from sigma import conformal, metrics
from sigma.lab import baselines
from sigma.lab.data import RegressionSplit, standardised
from sigma.lab.models import Recipe, train
from sigma.losses import GaussianNLL

HOMOSCEDASTIC, HETEROSCEDASTIC, ENSEMBLE, DROPOUT = (
    "Laplace (homoscedastic)",
    "Laplace (heteroscedastic)",
    "deep ensemble",
    "MC dropout",
)
LEVELS = (0.68, 0.9, 0.95)


# -- data ---------------------------------------------------------------------------------------
def growing_noise(n: int = 300, *, seed: int = 0, low: float = 0.05, high: float = 0.6):
    """A 1-D curve whose noise grows along x: x ~ U[−1, 1], t = sin(3x) + ε,
    ε ~ N(0, s(x)²) with s(x) = low + (high − low)(x + 1)/2.

    Returns ``x (n, 1), t (n, 1), s (n, 1)`` (s: the true noise standard deviation), float64.
    """
    if n < 2 or not (0 < low and 0 < high):
        raise ValueError(
            f"n must be at least 2 and the noise levels low, high positive, got n={n}, "
            f"low={low}, high={high}"
        )
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, 1))
    s = noise_level(x, low=low, high=high)
    return x, np.sin(3.0 * x) + s * rng.standard_normal(x.shape), s


def noise_level(x, *, low: float = 0.05, high: float = 0.6) -> np.ndarray:
    """The true noise standard deviation of :func:`growing_noise` at x (n, 1)."""
    return low + (high - low) * (np.asarray(x, np.float64) + 1.0) / 2.0


def friedman_growing_noise(
    n_train: int = 1000, n_test: int = 2000, *, low: float = 0.2, high: float = 4.0,
    seed: int = 0,
) -> RegressionSplit:  # fmt: skip
    """Friedman #1 (``make_friedman1``, noise-free) plus noise of standard deviation
    low + (high − low)·x₁ (x₁ ~ U[0, 1], one of the five relevant inputs), standardised with
    the training statistics (:class:`~sigma.lab.data.RegressionSplit`)."""
    from sklearn.datasets import make_friedman1

    if min(n_train, n_test) < 2 or not 0 < low <= high:
        raise ValueError("n_train and n_test must be at least 2 and 0 < low <= high")
    x, y = make_friedman1(n_samples=n_train + n_test, noise=0.0, random_state=seed)
    rng = np.random.default_rng(seed)
    y = y + (low + (high - low) * x[:, 0]) * rng.standard_normal(len(y))
    return standardised(x[:n_train], x[n_train:], y[:n_train], y[n_train:])


def calibration_split(split, fraction: float = 0.2, *, seed: int = 0):
    """Hold out a ``fraction`` of a split's training set for conformal calibration:
    returns ``(x_fit, y_fit, x_cal, y_cal)``."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    x, y = split.x_train, split.y_train
    idx = np.random.default_rng(seed).permutation(len(x))
    n_cal = max(1, int(round(fraction * len(x))))
    cal, fit = idx[:n_cal], idx[n_cal:]
    return x[fit], y[fit], x[cal], y[cal]


# -- methods ------------------------------------------------------------------------------------
def homoscedastic_laplace(x, y, recipe: Recipe, seed: int):
    """An MLP trained on the squared error with :class:`sigma.EvidenceCallback`: one noise
    level 1/β for every input. Returns the callback's Laplace."""
    return _evidence_trained(recipe.network(x.shape[1], y.shape[1], seed), x, y, recipe, "mse",
                             seed)  # fmt: skip


def heteroscedastic_laplace(x, y, recipe: Recipe, seed: int):
    """An MLP with outputs [μ | ln σ²] trained on :class:`sigma.losses.GaussianNLL` with the
    evidence: the noise σ²(x) is the network's own. Returns the callback's Laplace."""
    model = recipe.network(x.shape[1], 2 * y.shape[1], seed)
    return _evidence_trained(model, x, y, recipe, GaussianNLL(), seed)


def _evidence_trained(model, x, y, recipe: Recipe, loss, seed: int):
    options = dict(structure=recipe.structure, prior=recipe.prior, every=recipe.every, verbose=0)
    history = train(model, x, y, loss=loss, seed=seed, evidence=options, **recipe.training())
    return history.evidence.laplace


LAPLACES = {HOMOSCEDASTIC: homoscedastic_laplace, HETEROSCEDASTIC: heteroscedastic_laplace}


def predictors(x, y, recipe: Recipe, *, laplaces: dict = LAPLACES, seed: int = 0) -> dict:
    """Train each method on (x, y): the Laplace methods ``laplaces`` {name: fit(x, y, recipe,
    seed) → a fitted :class:`sigma.Laplace`} (the notebook shows them), then the deep ensemble
    and MC dropout of ``recipe``. Returns {method: (predict(x) -> (mean, std), seconds)}."""
    out = {}
    n_in, k = x.shape[1], y.shape[1]
    for method in (*laplaces, ENSEMBLE, DROPOUT):
        start = time.perf_counter()
        if method in laplaces:
            predict = laplaces[method](x, y, recipe, seed).predict
        elif method == ENSEMBLE:
            ens = baselines.DeepEnsemble(
                n_in, recipe.hidden, k, size=recipe.ensemble_size, head="gaussian",
                activation=recipe.activation, dtype=recipe.dtype, seed=seed,
            ).fit(x, y, **recipe.training())  # fmt: skip
            predict = ens.predict
        else:
            mc = baselines.MCDropout(
                n_in, recipe.hidden, k, rate=recipe.dropout, activation=recipe.activation,
                dtype=recipe.dtype, seed=seed,
            ).fit(x, y, n_samples=recipe.mc_samples, **recipe.training())  # fmt: skip

            def predict(xs, mc=mc):
                return mc.predict(xs, n_samples=recipe.mc_samples, seed=seed)

        out[method] = (predict, time.perf_counter() - start)
    return out


def scores(mean, std, y, *, mean_cal, std_cal, y_cal, scale: float = 1.0, resplits: int = 200,
           seed: int = 0) -> dict:  # fmt: skip
    """Test metrics of one method before and after conformal calibration, in units of
    ``scale``: nll, rmse, mean_sigma, coverage_<L> and width_<L> of the central Gaussian
    intervals on the test set, and conformal_coverage_<L>, conformal_width_<L> of the
    split-conformal intervals, L in 68/90/95.

    The conformal guarantee is about the average over calibration sets, so with ``resplits``
    > 0 the calibration and test points are pooled and re-split at random ``resplits`` times
    (calibration sets of the same size, numpy only) and the conformal coverage and width are
    the means over the re-splits; with 0, the one given split.
    """
    mean, std, y = (np.asarray(a, np.float64) * scale for a in (mean, std, y))
    mean_cal, std_cal, y_cal = (np.asarray(a, np.float64) * scale
                                for a in (mean_cal, std_cal, y_cal))  # fmt: skip
    row = {"nll": metrics.gaussian_nll(mean, std, y), "rmse": metrics.rmse(mean, y),
           "mean_sigma": float(np.mean(std))}  # fmt: skip
    for level in LEVELS:
        tag = f"{round(100 * level)}"
        z = metrics.normal_quantile(level)
        row[f"coverage_{tag}"] = float(np.mean(np.abs(y - mean) <= z * std))
        row[f"width_{tag}"] = float(np.mean(2 * z * std))
    pool = [np.concatenate(p) for p in ((mean_cal, mean), (std_cal, std), (y_cal, y))]
    n_cal = len(y_cal)
    rng = np.random.default_rng(seed)
    splits = [np.arange(len(pool[0]))] if resplits == 0 else [
        rng.permutation(len(pool[0])) for _ in range(resplits)]  # fmt: skip
    found = {}
    for idx in splits:
        cal, test = idx[:n_cal], idx[n_cal:]
        calibrated = conformal.NormalisedScores(*(p[cal] for p in pool))
        m, s, t = (p[test] for p in pool)
        for level in LEVELS:
            lo, hi = calibrated.interval(m, s, level)
            tag = f"{round(100 * level)}"
            found.setdefault(f"conformal_coverage_{tag}", []).append(np.mean((t >= lo) & (t <= hi)))
            found.setdefault(f"conformal_width_{tag}", []).append(np.mean(hi - lo))
    row.update({k: float(np.mean(v)) for k, v in found.items()})
    return row


def run(split, recipe: Recipe, *, laplaces: dict = LAPLACES, seed: int = 0,
        calibration: float = 0.2,
        resplits: int = 200):  # fmt: skip
    """Every method of :func:`predictors` on one split: trained on the training set minus a ``calibration``
    fraction, calibrated on that fraction, scored on the test set (original target units).
    Returns a list of rows {method, seed, seconds, <metrics of :func:`scores`>}."""
    x_fit, y_fit, x_cal, y_cal = calibration_split(split, calibration, seed=seed)
    rows = []
    for method, (predict, seconds) in predictors(
        x_fit, y_fit, recipe, laplaces=laplaces, seed=seed
    ).items():
        mean, std = predict(split.x_test)
        mean_cal, std_cal = predict(x_cal)
        row = scores(mean, std, split.y_test, mean_cal=mean_cal, std_cal=std_cal, y_cal=y_cal,
                     scale=split.y_scale, resplits=resplits, seed=seed)  # fmt: skip
        rows.append({"method": method, "seed": seed, "seconds": seconds, **row})
    return rows


# -- the 1-D picture ----------------------------------------------------------------------------
def coverage_by_region(mean, std, y, x, *, edges=(-1.0, -0.33, 0.33, 1.0), level=0.95):
    """Coverage of the central ``level`` Gaussian interval in each x region (between
    consecutive ``edges``): a list of {region, coverage, n}."""
    z = metrics.normal_quantile(level)
    inside = np.abs(np.asarray(y) - mean) <= z * std
    rows = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = (x[:, 0] >= a) & (x[:, 0] <= b)
        rows.append({"region": f"x in [{a:g}, {b:g}]", "coverage": float(np.mean(inside[sel])),
                     "n": int(sel.sum())})  # fmt: skip
    return rows


def plot_bands(x_train, y_train, grid, truth_sd, bands: dict, *, n_std: float = 2.0):
    """One panel per method: the training data, the mean ± n_std σ band, and the true noise
    band ± n_std s(x) around the mean. ``bands``: {method: (mean, std)} on ``grid`` (G, 1)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bands), figsize=(5 * len(bands), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    g = grid[:, 0]
    for ax, (name, (mean, std)) in zip(axes, bands.items(), strict=True):
        m, s = mean[:, 0], std[:, 0]
        ax.plot(x_train[:, 0], y_train[:, 0], ".", color="0.6", ms=3, label="data")
        ax.fill_between(g, m - n_std * s, m + n_std * s, alpha=0.3, label=f"± {n_std:g} σ")
        ax.plot(g, m, lw=1.5, label="mean")
        for sign in (-1, 1):
            ax.plot(g, m + sign * n_std * truth_sd[:, 0], "k--", lw=0.8,
                    label="true noise" if sign > 0 else None)  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("x")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
