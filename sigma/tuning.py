"""Held-out tuning of the precisions, for when the evidence is not trusted.

A bounded search over a common factor of the prior precisions (the α_g ratios kept) — and of
β for regression — within ``span``× of the current values either way, minimising a held-out
metric: Brent's method in 1-D (α), Nelder–Mead in log coordinates in 2-D (α, β). Every trial is
a new :class:`~sigma.posterior.Posterior` (nothing is refitted); the posterior given is never
changed.
"""

from __future__ import annotations

import numpy as np

from sigma import heteroscedastic, metrics, predictive
from sigma._checks import check_inputs, check_positive_int, check_precision
from sigma._checks import n_samples as sample_count
from sigma.posterior import Posterior

METRICS = {
    "regression": ("nll",),
    "classification": ("nll", "brier", "ece"),
    "heteroscedastic": ("nll",),
}
_SCORES = {"nll": metrics.nll, "brier": metrics.brier, "ece": metrics.expected_calibration_error}


def optimize_prior(
    post: Posterior,
    model,
    x_val,
    y_val,
    *,
    metric: str = "nll",
    beta: bool = True,
    span: float = 1e4,
    tol: float = 1e-3,
    max_iter: int = 100,
) -> tuple[Posterior, dict]:
    """(the posterior at the best value of ``metric`` on (x_val, y_val), a record of the
    search): see :meth:`sigma.Laplace.optimize_prior`."""
    kind = "regression" if post.likelihood.has_beta else post.likelihood.name
    if metric not in METRICS[kind]:
        raise ValueError(f"metric must be one of {METRICS[kind]} for {kind}, got {metric!r}")
    if not isinstance(beta, bool):
        raise ValueError(f"beta must be True or False (also tune β), got {beta!r}")
    span = check_precision(span, "span", allow_zero=False)
    if span <= 1:
        raise ValueError(f"span must be > 1 (a factor either way), got {span}")
    max_iter = check_positive_int(max_iter, "max_iter")
    x_val = check_inputs(model, x_val, "x_val")
    k = post.summary.n_outputs
    y_val = post.likelihood.targets(
        y_val, sample_count(x_val), k, "y_val", "x_val", layout=post.output_layout
    )
    tune_beta = beta and post.likelihood.has_beta and post.n_groups == 1
    n_val = sample_count(x_val)
    n_values = n_val * k if post.likelihood.has_beta else n_val
    metrics.check_validation_size(metric, n_val, n_values, 1 + tune_beta)
    alpha0, beta0 = post.alpha, post.beta
    if post.prior.scalar and alpha0[0] == 0:
        alpha0 = np.full_like(alpha0, post.alpha_from_zero())
    heads = post.likelihood.heads or [(0, k)]
    trials = []

    def at(z) -> Posterior | None:
        try:
            return post.replace(
                alpha=alpha0 * np.exp(z[0]), beta=beta0 * np.exp(z[1]) if tune_beta else None
            )
        except ValueError:
            return None  # A not positive definite there

    def score(z):
        trial = at(z)
        if trial is None:
            return np.inf
        trials.append(1)
        if post.likelihood.has_beta:
            return metrics.gaussian_nll(
                *predictive.mean_and_std(trial, model, x_val, name="x_val"), y_val
            )
        if kind == "heteroscedastic":  # α only, the NLL of noise head + weight uncertainty
            mean, std = heteroscedastic.predict(trial, model, x_val, name="x_val")
            return metrics.gaussian_nll(mean, std, y_val[:, : mean.shape[1]])
        probs = predictive.probabilities(trial, model, x_val, name="x_val")
        return sum(_SCORES[metric](probs[:, s:e], y_val[:, s:e]) for s, e in heads)

    import scipy.optimize

    bound = float(np.log(span))
    if tune_beta:
        res = scipy.optimize.minimize(
            score, np.zeros(2), method="Nelder-Mead", bounds=[(-bound, bound)] * 2,
            options={"xatol": tol, "fatol": tol * 1e-3, "maxfev": max_iter},
        )  # fmt: skip
        best = res.x
    else:
        res = scipy.optimize.minimize_scalar(
            lambda s: score([s]), bounds=(-bound, bound), method="bounded",
            options={"xatol": tol, "maxiter": max_iter},
        )  # fmt: skip
        best = np.array([res.x])
    value = score(best)
    found = at(best)
    if found is None or not np.isfinite(value):
        shown = float(post.alpha[0]) if post.prior.scalar else post.alpha
        raise ValueError(
            f"no alpha within a factor {span:g} of {shown} gives a positive definite "
            "posterior precision: widen span or fit with another structure"
        )
    record = {
        "alpha": float(found.alpha[0]) if found.prior.scalar else found.alpha.copy(),
        "beta": float(found.beta[0]) if found.beta.size == 1 else found.beta.copy(),
        "metric": metric,
        "value": float(value),
        "evaluations": len(trials),
    }
    return found, record
