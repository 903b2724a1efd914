"""Held-out tuning of the precisions, for when the evidence is not trusted.

A bounded search over a common factor of the prior precisions (the α_g ratios kept) — and of
β for regression — within ``span``× of the current values either way, minimising a held-out
metric: Brent's method in 1-D (α), Nelder–Mead in log coordinates in 2-D (α, β). Every trial is
a new :class:`~sigma.posterior.Posterior` (nothing is refitted); the posterior given is never
changed. A search that ends at a bound of its range (within twice its tolerance) says so: a
warning naming ``span``, and the record's ``at_bound``.
"""

from __future__ import annotations

import warnings

import numpy as np

from sigma import metrics, predictive
from sigma._checks import check_inputs, check_positive_int, check_precision
from sigma._checks import n_samples as sample_count
from sigma.posterior import Posterior


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
    search): see :meth:`sigma.Laplace.optimize_prior`.

    The record: alpha, beta, metric, value, evaluations, and ``at_bound`` — {"alpha": "upper"
    or "lower", "beta": ...} for each tuned precision whose best value lies within twice
    ``tol`` (in ln) of the bound of the search, ``span``× its start (empty when none is);
    a RuntimeWarning names them and ``span``."""
    lik = post.likelihood
    if metric not in lik.metrics:
        raise ValueError(f"metric must be one of {lik.metrics} for {lik.name}, got {metric!r}")
    if not isinstance(beta, bool):
        raise ValueError(f"beta must be True or False (also tune β), got {beta!r}")
    span = check_precision(span, "span", allow_zero=False)
    if span <= 1:
        raise ValueError(f"span must be > 1 (a factor either way), got {span}")
    max_iter = check_positive_int(max_iter, "max_iter")
    x_val = check_inputs(model, x_val, "x_val")
    k = post.summary.n_outputs
    n_val = sample_count(x_val)
    y_val = lik.targets(y_val, n_val, k, "y_val", "x_val", layout=post.output_layout)
    # β too when one noise precision covers every output (a factor of it)
    tune_beta = beta and post.n_groups == 1 and bool(post.groups.free[0])
    metrics.check_validation_size(metric, n_val, lik.validation_values(n_val, k), 1 + tune_beta)
    alpha0, beta0 = post.alpha, post.beta
    if post.prior.scalar and alpha0[0] == 0:
        alpha0 = np.full_like(alpha0, post.alpha_from_zero())
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
        prediction = predictive.predict(trial, model, x_val, name="x_val", flat=True)
        return lik.score(prediction, y_val, metric)

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
    at_bound = _at_bound(best, bound, tol, ("alpha", "beta") if tune_beta else ("alpha",))
    if at_bound:
        ends = " and ".join(
            f"{name} at the {side} bound ({'×' if side == 'upper' else '÷'}{span:g} of its start)"
            for name, side in at_bound.items()
        )
        warnings.warn(
            f"optimize_prior: the held-out {metric} is best with {ends}, the edge of the "
            f"search: the best value may lie beyond it. Search a wider range (span={span:g} "
            "now), or start from other precisions",
            RuntimeWarning,
            stacklevel=3,
        )
    record = {
        "alpha": float(found.alpha[0]) if found.prior.scalar else found.alpha.copy(),
        "beta": float(found.beta[0]) if found.beta.size == 1 else found.beta.copy(),
        "metric": metric,
        "value": float(value),
        "evaluations": len(trials),
        "at_bound": at_bound,
    }
    return found, record


def _at_bound(z, bound: float, tol: float, names) -> dict:
    """{name: "upper" | "lower"} for the coordinates of z (ln factors within ±bound) that lie
    within 2·tol of a bound (Brent's bounded search stops within about 0.65·tol of a bound it
    runs into; Nelder–Mead's bounds clip onto it); a range narrower than that: the nearer."""
    out = {}
    for name, value in zip(names, np.asarray(z, np.float64), strict=True):
        upper, lower = bound - value, value + bound  # distances to the two bounds, ≥ 0
        if min(upper, lower) <= 2.0 * tol:
            out[name] = "upper" if upper <= lower else "lower"
    return out
