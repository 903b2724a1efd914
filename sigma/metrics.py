"""Calibration metrics for error bars and class probabilities (held-out data).

Regression, from predictive means μ, standard deviations σ and targets t, all (N, K), every
metric averaged over all N·K values:

* coverage of the central interval μ ± z σ, z = Φ⁻¹((1 + level)/2) (68%: z = 0.994, 95%: 1.960);
* Gaussian negative log-likelihood ½ ln(2πσ²) + (t − μ)²/(2σ²), in nats per value;
* RMSE and the mean σ.

Classification, from probabilities p (N, K) and labels (integer (N,) or one-hot (N, K)):
accuracy, negative log-likelihood −ln p_true (nats per sample), Brier score Σ_k (p_k − t_k)²
per sample (0 perfect, 2 worst), and the expected calibration error over equal-width bins of
the confidence max_k p_k.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from sigma._checks import as_array

TINY = 1e-300  # probabilities are clipped here before the log
ECE_BINS = 10  # the confidence bins of the expected calibration error in optimize_prior


def _regression_arrays(mean, std, targets):
    mean = as_array(mean, "mean", ndim=(1, 2)).astype(np.float64)
    std = as_array(std, "std", ndim=(1, 2)).astype(np.float64)
    targets = as_array(targets, "targets", ndim=(1, 2)).astype(np.float64)
    if not mean.shape == std.shape == targets.shape:
        raise ValueError(
            f"mean, std and targets must have the same shape (N, K), got {mean.shape}, "
            f"{std.shape} and {targets.shape}"
        )
    if np.any(std <= 0):
        raise ValueError(f"std must be > 0, got {int(np.sum(std <= 0))} value(s) <= 0")
    return mean, std, targets


def normal_quantile(level: float) -> float:
    """z with P(|Z| ≤ z) = ``level`` for a standard normal Z (1.96 for 0.95)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + 0.5 * float(level)))


def coverage(mean, std, targets, level: float = 0.95) -> float:
    """Fraction of targets inside the central ``level`` interval μ ± z σ of a Gaussian."""
    mean, std, targets = _regression_arrays(mean, std, targets)
    return float(np.mean(np.abs(targets - mean) <= normal_quantile(level) * std))


def coverage_curve(mean, std, targets, levels=None) -> tuple[np.ndarray, np.ndarray]:
    """(nominal levels, observed coverage) for a coverage diagram; default levels 0.05..0.95."""
    mean, std, targets = _regression_arrays(mean, std, targets)
    levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, np.float64)
    scaled = np.abs(targets - mean) / std
    return levels, np.array([np.mean(scaled <= normal_quantile(q)) for q in levels])


def gaussian_nll(mean, std, targets) -> float:
    """Mean over all values of −ln N(t; μ, σ²) = ½ ln(2πσ²) + (t − μ)²/(2σ²), nats."""
    mean, std, targets = _regression_arrays(mean, std, targets)
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((targets - mean) / std) ** 2))


def rmse(mean, targets) -> float:
    """sqrt of the mean over all values of (t − μ)²."""
    mean = as_array(mean, "mean").astype(np.float64)
    targets = as_array(targets, "targets").astype(np.float64)
    if mean.shape != targets.shape:
        raise ValueError(
            f"mean and targets must have the same shape, got {mean.shape} and {targets.shape}"
        )
    return float(np.sqrt(np.mean((targets - mean) ** 2)))


def regression_metrics(mean, std, targets) -> dict:
    """{coverage_68, coverage_95, nll, rmse, mean_sigma} over all N·K values."""
    mean, std, targets = _regression_arrays(mean, std, targets)
    return {
        "coverage_68": coverage(mean, std, targets, 0.68),
        "coverage_95": coverage(mean, std, targets, 0.95),
        "nll": gaussian_nll(mean, std, targets),
        "rmse": rmse(mean, targets),
        "mean_sigma": float(np.mean(std)),
    }


# -- classification -----------------------------------------------------------------------------
def _classification_arrays(probs, labels):
    """(N, K) probabilities and integer labels (N,); a binary classifier's (N, 1) P(y = 1)
    becomes the two columns (1 − p, p) and its labels 0/1 (N,) or (N, 1) the class index."""
    probs = as_array(probs, "probs", ndim=2).astype(np.float64)
    if probs.shape[1] == 1:
        if np.any(probs < 0) or np.any(probs > 1):
            raise ValueError("probs of one column must be probabilities P(y = 1) in [0, 1]")
        probs = np.concatenate([1.0 - probs, probs], axis=1)
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
    n, k = probs.shape
    if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("probs must be non-negative with rows that sum to 1 (class probabilities)")
    labels = as_array(labels, "labels", ndim=(1, 2))
    if labels.ndim == 2:
        if (
            labels.shape != (n, k)
            or not np.all((labels == 0) | (labels == 1))
            or not np.all(labels.sum(axis=1) == 1)
        ):
            raise ValueError(f"labels as a 2-D array must be one-hot of shape ({n}, {k})")
        labels = labels.argmax(axis=1)
    if (
        labels.shape != (n,)
        or not np.all(labels == np.round(labels))
        or labels.min() < 0
        or labels.max() >= k
    ):
        raise ValueError(
            f"labels must be {n} integer class labels in [0, {k}) or one-hot ({n}, {k})"
        )
    return probs, labels.astype(int)


def accuracy(probs, labels) -> float:
    """Fraction of samples whose most probable class is the label."""
    probs, labels = _classification_arrays(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def nll(probs, labels) -> float:
    """Mean over samples of −ln p(label), nats."""
    probs, labels = _classification_arrays(probs, labels)
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], TINY))))


def brier(probs, labels) -> float:
    """Mean over samples of Σ_k (p_k − t_k)², t one-hot (0 = perfect, 2 = worst)."""
    probs, labels = _classification_arrays(probs, labels)
    return float(np.mean(np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1)))


def reliability(probs, labels, n_bins: int = 10) -> dict:
    """Reliability diagram data over equal-width confidence bins on [0, 1].

    Returns {"edges": (n_bins + 1,), "confidence": (n_bins,) mean max-probability per bin,
    "accuracy": (n_bins,) fraction correct per bin, "count": (n_bins,)}; empty bins hold NaN.
    """
    probs, labels = _classification_arrays(probs, labels)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, int(n_bins) - 1)
    count = np.bincount(idx, minlength=int(n_bins)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, int(n_bins)) / count
        mean_acc = np.bincount(idx, correct, int(n_bins)) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count}


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """ECE = Σ_b (|B_b|/N) · |accuracy(B_b) − confidence(B_b)| over equal-width bins."""
    r = reliability(probs, labels, n_bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float(np.sum(r["count"][used] * gaps) / np.sum(r["count"]))


def classification_metrics(probs, labels, n_bins: int = 10) -> dict:
    """{accuracy, nll, brier, ece}."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
    }


def check_validation_size(metric: str, n_samples: int, n_values: int, n_tuned: int) -> None:
    """Refuse a held-out set too small to tune ``n_tuned`` precisions on ``metric`` with.

    The metric must be computed from more held-out values than it tunes precisions (with as
    many or fewer the precisions can fit them exactly: the scale of one residual fixes α or β
    to whatever matches it), and the ECE from at least as many samples as it has bins.
    ``n_values`` counts the values the metric averages (N·K for the Gaussian NLL, N samples for
    a classifier's metrics).
    """
    need_values = n_tuned + 1
    if metric == "ece" and n_samples < ECE_BINS:
        raise ValueError(
            f"x_val has {n_samples} sample(s): the expected calibration error over {ECE_BINS} "
            f"confidence bins needs at least {ECE_BINS} held-out samples (metric='ece'); use "
            "more held-out data or metric='nll'"
        )
    if n_values < need_values:
        what = "precision" if n_tuned == 1 else "precisions (alpha and beta)"
        raise ValueError(
            f"x_val has {n_samples} sample(s), {n_values} held-out value(s) for metric="
            f"{metric!r}: tuning {n_tuned} {what} needs at least {need_values} (with as few "
            "values as precisions, the precisions can be chosen to match them); use more "
            "held-out data" + (" or beta=False" if n_tuned > 1 else "")
        )


# -- out-of-distribution detection --------------------------------------------------------------
def _ood_scores(scores_in, scores_out):
    scores_in = as_array(scores_in, "scores_in", ndim=1).astype(np.float64)
    scores_out = as_array(scores_out, "scores_out", ndim=1).astype(np.float64)
    if not (scores_in.size and scores_out.size):
        raise ValueError("scores_in and scores_out must both be non-empty")
    return scores_in, scores_out


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve for telling out-of-distribution inputs (positives) from
    in-distribution ones by a score that is higher out of distribution (e.g. the predictive
    entropy, or minus the largest probability): the probability that an out-of-distribution
    input scores above an in-distribution one, ties counted half (Mann–Whitney U / (n_in
    n_out)). 0.5 is chance, 1 perfect. scores_in (N_in,), scores_out (N_out,)."""
    from scipy.stats import rankdata

    scores_in, scores_out = _ood_scores(scores_in, scores_out)
    ranks = rankdata(np.concatenate([scores_in, scores_out]))  # average ranks for ties
    n_in, n_out = scores_in.size, scores_out.size
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """The fraction of in-distribution inputs flagged (false positives) at the smallest
    threshold that flags ``tpr`` of the out-of-distribution ones (score ≥ threshold flags).
    0 perfect, 1 worst."""
    scores_in, scores_out = _ood_scores(scores_in, scores_out)
    if not 0.0 < float(tpr) <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    ordered = np.sort(scores_out)[::-1]
    threshold = ordered[int(np.ceil(float(tpr) * ordered.size)) - 1]
    return float(np.mean(scores_in >= threshold))


def predictive_entropy(probs) -> np.ndarray:
    """−Σ_k p_k ln p_k per row, nats: (N,) from probabilities (N, K) (a column P(y = 1) is
    the binary (1 − p, p))."""
    probs = as_array(probs, "probs", ndim=2).astype(np.float64)
    if probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return -np.sum(probs * np.log(np.maximum(probs, TINY)), axis=1)
