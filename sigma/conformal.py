"""Split conformal prediction on top of a fitted :class:`~sigma.Laplace`: error bars and
prediction sets whose coverage holds in finite samples (``la.conformalize(x_cal, y_cal)``).

Regression (Lei et al. 2018; normalised residual scores): on n calibration pairs never used
for training, the scores s_i = |y_i − μ(x_i)| / σ(x_i) (per output). At level 1 − ε,

    q̂ = the ⌈(n + 1)(1 − ε)⌉-th smallest score,    C(x) = [μ(x) − q̂ σ(x), μ(x) + q̂ σ(x)],

and for a test point exchangeable with the calibration points P(y ∈ C(x)) ≥ 1 − ε (and
< 1 − ε + 1/(n + 1) when the scores have no ties), whatever the model, its σ or the data. The
rank exists only when ⌈(n + 1)(1 − ε)⌉ ≤ n, i.e. n ≥ ⌈1/ε⌉ − 1 (:func:`minimum_size`);
smaller calibration sets are refused.

Classification: adaptive prediction sets (APS; Romano, Sesia & Candès 2020) from the
Laplace's class probabilities π(x). Classes sorted by decreasing π; the score of label y is
E(x, y, u) = Σ_{j ranked above y} π_j + u π_y with u ~ U(0, 1) (randomised, seeded) or u = 1;
the set at level 1 − ε holds every class whose score is at most the same q̂ of the
calibration scores. Same guarantee.

The conformal step is numpy only: :class:`NormalisedScores` and :class:`APSScores` take
predictions as arrays (any predictor's, e.g. a deep ensemble's (μ, σ)), and
:class:`ConformalRegressor` / :class:`ConformalClassifier` wrap a predictor for new inputs.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from sigma import predictive
from sigma._checks import as_array, check_inputs


def minimum_size(level: float) -> int:
    """The smallest calibration set for which level 1 − ε = ``level`` is attainable:
    ⌈(n + 1)·level⌉ ≤ n ⟺ n ≥ level/(1 − level), i.e. ⌈1/ε⌉ − 1 (round-off aside)."""
    level = _check_level(level)
    eps = 1.0 - level
    n = max(1, math.ceil(level / eps - 1e-9))
    while math.ceil((n + 1) * level - 1e-9) > n:  # guard the rounding of level/ε
        n += 1
    return n


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float | np.floating):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1) (a coverage such as 0.9), got {level}")
    return float(level)


def conformal_quantile(sorted_scores: np.ndarray, level: float, name: str = "y_cal"):
    """The ⌈(n + 1)·level⌉-th smallest of n scores sorted along axis 0, (…,); ValueError
    naming the minimum size when n is too small for ``level``."""
    level = _check_level(level)
    n = sorted_scores.shape[0]
    rank = math.ceil((n + 1) * level - 1e-9)
    if rank > n:
        raise ValueError(
            f"the calibration set has {n} samples, too few for level {level:g}: split "
            f"conformal needs at least {minimum_size(level)} ({name} and the calibration "
            f"inputs; ⌈1/ε⌉ − 1 for ε = {1 - level:.3g})"
        )
    return sorted_scores[rank - 1]


# -- regression ---------------------------------------------------------------------------------
class NormalisedScores:
    """Calibration scores |y − μ|/σ per output from arrays mean, std, y (n, K); y (n,) for
    K = 1 is accepted. ``quantile(level)`` (K,); ``interval(mean, std, level)``."""

    def __init__(self, mean, std, y, *, name: str = "y_cal"):
        mean = as_array(mean, "mean", ndim=(1, 2)).astype(np.float64)
        std = as_array(std, "std", ndim=(1, 2)).astype(np.float64)
        y = as_array(y, name, ndim=(1, 2)).astype(np.float64)
        mean, std = _columns(mean), _columns(std)
        y = _columns(y)
        if y.shape != mean.shape or std.shape != mean.shape:
            raise ValueError(
                f"{name} must have the shape of the predictions {mean.shape}, got {y.shape}"
            )
        if np.any(std <= 0):
            raise ValueError(
                f"std must be > 0 on the calibration set, got {int(np.sum(std <= 0))} values <= 0"
            )
        self.name = name
        self.scores = np.sort(np.abs(y - mean) / std, axis=0)  # (n, K)

    @property
    def n(self) -> int:
        return self.scores.shape[0]

    def quantile(self, level: float) -> np.ndarray:
        """q̂ per output (K,) at coverage ``level``."""
        return conformal_quantile(self.scores, level, self.name)

    def interval(self, mean, std, level: float = 0.9):
        """(lower, upper), each (N, K): μ ∓ q̂ σ."""
        mean, std = _columns(np.asarray(mean, np.float64)), _columns(np.asarray(std, np.float64))
        half = self.quantile(level) * std
        return mean - half, mean + half


class ConformalRegressor:
    """Calibrated intervals for a regression predictor ``predict(x) -> (mean, std)`` (N, K).

    ``interval(x, level)`` → (lower, upper) (N, K); ``predict(x, level)`` → (mean, lower,
    upper); ``std(x, level)`` → the calibrated σ, q̂/z · σ, whose central Gaussian interval at
    ``level`` is the conformal one. Attributes: ``scores`` (:class:`NormalisedScores`),
    ``n_calibration``.
    """

    def __init__(self, predict, scores: NormalisedScores):
        self._predict, self.scores = predict, scores

    @property
    def n_calibration(self) -> int:
        return self.scores.n

    def quantile(self, level: float = 0.9) -> np.ndarray:
        return self.scores.quantile(level)

    def interval(self, x, level: float = 0.9):
        self.scores.quantile(level)  # refuses a too small calibration set before predicting
        mean, std = self._predict(x)
        return self.scores.interval(mean, std, level)

    def std(self, x, level: float = 0.9) -> np.ndarray:
        """The calibrated σ (N, K): q̂/z · σ(x), z = Φ⁻¹((1 + level)/2), so that μ ∓ z σ_cal is
        the conformal interval at ``level``."""
        q = self.scores.quantile(level)
        _, std = self._predict(x)
        z = statistics.NormalDist().inv_cdf(0.5 + 0.5 * _check_level(level))
        return q / z * _columns(np.asarray(std, np.float64))

    def predict(self, x, level: float = 0.9):
        self.scores.quantile(level)
        mean, std = self._predict(x)
        lower, upper = self.scores.interval(mean, std, level)
        return _columns(np.asarray(mean, np.float64)), lower, upper


# -- classification -----------------------------------------------------------------------------
def aps_scores(probs, labels, u) -> np.ndarray:
    """E(x, y, u) = Σ_{j ranked above y} π_j + u π_y per sample, (N,). probs (N, K), labels
    (N,) integers, u (N,) in [0, 1]."""
    probs = np.asarray(probs, np.float64)
    idx = np.arange(len(probs))
    p_y = probs[idx, labels]
    # ties broken by class index, the same order as :func:`aps_sets`
    above = (probs > p_y[:, None]) | (
        (probs == p_y[:, None]) & (np.arange(probs.shape[1])[None, :] < labels[:, None])
    )
    return np.sum(np.where(above, probs, 0.0), axis=1) + u * p_y


def aps_sets(probs, threshold: float, u) -> np.ndarray:
    """Boolean (N, K): class y is in the set when E(x, y, u) ≤ ``threshold``."""
    probs = np.asarray(probs, np.float64)
    n, k = probs.shape
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked above each class
    keep_sorted = before + u[:, None] * sorted_p <= threshold
    keep = np.zeros((n, k), bool)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep


class APSScores:
    """Calibration scores of adaptive prediction sets from arrays probs (n, K) and integer
    labels (n,) (or one-hot (n, K)). ``randomised``: u ~ U(0, 1) from ``seed`` (exact
    coverage on average) or u = 1 (deterministic, conservative). The u of :meth:`sets` come
    from a fresh generator seeded by ``seed`` on every call (on a stream apart from the
    calibration's): the same call gives the same sets."""

    def __init__(self, probs, labels, *, randomised: bool = True, seed: int = 0,
                 name: str = "y_cal"):  # fmt: skip
        probs = as_array(probs, "probs", ndim=2).astype(np.float64)
        labels = _labels(labels, probs.shape[1], len(probs), name)
        self.name, self.randomised = name, bool(randomised)
        self.seed = np.random.SeedSequence().entropy if seed is None else seed
        u = self._u(len(probs), np.random.default_rng(self.seed))
        self.scores = np.sort(aps_scores(probs, labels, u))

    def _u(self, n, rng):
        return rng.uniform(size=n) if self.randomised else np.ones(n)

    @property
    def n(self) -> int:
        return self.scores.shape[0]

    def quantile(self, level: float) -> float:
        return float(conformal_quantile(self.scores, level, self.name))

    def sets(self, probs, level: float = 0.9) -> np.ndarray:
        """Boolean (N, K) prediction sets at coverage ``level``."""
        probs = np.asarray(probs, np.float64)
        # a fresh generator per call (the same call gives the same sets), on a stream of its
        # own (the test draws independent of the calibration ones)
        u = self._u(len(probs), np.random.default_rng([self.seed, 1]))
        return aps_sets(probs, self.quantile(level), u)


class ConformalClassifier:
    """Prediction sets for a classifier ``predict_proba(x) -> (N, K)``: ``predict_set(x,
    level)`` → boolean (N, K) (True: the class is in the set). Attributes: ``scores``
    (:class:`APSScores`), ``n_calibration``."""

    def __init__(self, predict_proba, scores: APSScores):
        self._proba, self.scores = predict_proba, scores

    @property
    def n_calibration(self) -> int:
        return self.scores.n

    def quantile(self, level: float = 0.9) -> float:
        return self.scores.quantile(level)

    def predict_set(self, x, level: float = 0.9) -> np.ndarray:
        self.scores.quantile(level)
        return self.scores.sets(self._proba(x), level)


# -- from a Laplace -----------------------------------------------------------------------------
def calibrate(la, x_cal, y_cal, *, level: float | None = None, randomised: bool = True,
              seed: int = 0):  # fmt: skip
    """The calibrated predictor of a fitted posterior ``la`` (a :class:`~sigma.posterior.Posterior`,
    or anything with its predict, predict_proba and parts; see the module docstring).

    x_cal, y_cal : calibration inputs (n, ...) and targets (n, K) (labels (n,) or one-hot for a
    classifier), not used in training. ``level``: when given, refuse now a calibration set too
    small for it. ``randomised``, ``seed``: APS randomisation (classifiers). A model with
    several outputs is not supported (ValueError).
    """
    lik = la.likelihood
    if la.output_layout.kind != "single" or lik.heads is not None or lik.conformal is None:
        raise ValueError(
            "conformalize supports a model with one output (one softmax head for a "
            f"classifier); this one has {len(la.output_layout.sizes)} outputs"
        )
    if lik.conformal == "sets":
        probs = _two_class(_predictive(la, x_cal, "x_cal"))
        scores = APSScores(probs, y_cal, randomised=randomised, seed=seed)
        result = ConformalClassifier(lambda x: _two_class(la.predict_proba(x)), scores)
    else:
        y_arr = as_array(y_cal, "y_cal", ndim=(1, 2))
        mean, std = _predictive(la, x_cal, "x_cal")
        scores = NormalisedScores(mean, std, y_arr, name="y_cal")
        result = ConformalRegressor(la.predict, scores)
    if level is not None:
        result.quantile(level)
    return result


def _predictive(la, x, name):
    """``la.predict(x)`` (the probabilities, for a classifier) with the checks naming ``name``
    (an input or a σ that is NaN or infinite is refused as ``name``'s, not as x's)."""
    la.check_weights_unchanged()
    x = check_inputs(la.model, x, name)
    return predictive.predict(la, la.model, x, name=name, flat=True)


def _two_class(probs):
    """A binary classifier's P(y = 1) (N, 1) as the two classes (N, 2); else unchanged."""
    probs = np.asarray(probs, np.float64)
    return np.concatenate([1.0 - probs, probs], axis=1) if probs.shape[1] == 1 else probs


def _labels(labels, k, n, name):
    arr = as_array(labels, name, ndim=(1, 2))
    if arr.ndim == 2:
        if (
            arr.shape != (n, k)
            or not np.all((arr == 0) | (arr == 1))
            or not np.all(arr.sum(1) == 1)
        ):
            if arr.shape == (n, 1) and k == 2:
                arr = arr[:, 0]
            else:
                raise ValueError(f"{name} must be integer labels (n,) or one-hot (n, {k})")
        else:
            arr = arr.argmax(axis=1)
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} rows but the calibration inputs have {n}")
    if not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= k:
        raise ValueError(f"{name} must hold integer class labels in [0, {k})")
    return arr.astype(np.int64)


def _columns(a: np.ndarray) -> np.ndarray:
    return a[:, None] if a.ndim == 1 else a
