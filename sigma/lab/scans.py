"""Scans over the precisions of a fitted Laplace: the evidence next to held-out calibration.

Notebook helpers: :func:`beta_scan` (regression, over β) and :func:`alpha_scan` (classification,
over α) change the precisions of one fitted ``Laplace`` — never refitting and, with the
curvature engine, never tracing again — as posteriors of their own: the Laplace is not changed.
"""

from __future__ import annotations

import numpy as np

from sigma._checks import as_array
from sigma.metrics import classification_metrics, regression_metrics


def beta_scan(laplace, betas, x_test, y_test, *, optimize_alpha: bool = True) -> dict:
    """Evidence and held-out calibration of a regression Laplace over noise precisions β.

    For each β (one shared by all outputs): α re-estimated by the evidence with β fixed
    (``optimize_alpha``) or kept; then the log evidence, γ and :func:`regression_metrics` of
    the predictive on (x_test, y_test). The Laplace is not changed (each β is a posterior of its
    own).

    Returns a dict of (len(betas),) arrays: beta, alpha, log_evidence, gamma, coverage_68,
    coverage_95, nll, rmse, mean_sigma.
    """
    betas = as_array(betas, "betas", ndim=1).astype(np.float64)
    post = getattr(laplace, "posterior", laplace)  # a value: every β its own posterior
    rows = []
    for b in betas:
        at = post.replace(beta=float(b))
        if optimize_alpha:
            at = at.optimize_evidence(fix_beta=True, per_output=False)
        mean, std = at.predict(x_test)
        rows.append(
            {
                "beta": float(b),
                "alpha": float(at.alpha[0]) if at.prior.scalar else at.alpha.copy(),
                "log_evidence": at.log_evidence(),
                "gamma": at.gamma,
                **regression_metrics(mean, std, y_test),
            }
        )
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def alpha_scan(
    laplace, alphas, x_test, labels, *, method: str = "probit", n_samples: int = 1000, seed: int = 0
) -> dict:
    """Evidence and held-out calibration of a classification Laplace over prior precisions α.

    For each α: the log evidence, γ and :func:`classification_metrics` of
    ``laplace.predict_proba(x_test, method=..., n_samples=..., seed=...)`` against ``labels``.
    The Laplace is not changed (each α is a posterior of its own). Returns a dict of (len(alphas),) arrays: alpha,
    log_evidence, gamma, accuracy, nll, brier, ece.
    """
    alphas = as_array(alphas, "alphas", ndim=1).astype(np.float64)
    post = getattr(laplace, "posterior", laplace)  # a value: every α its own posterior
    rows = []
    for a in alphas:
        at = post.replace(alpha=float(a))
        probs = at.predict_proba(x_test, method=method, n_samples=n_samples, seed=seed)
        rows.append(
            {
                "alpha": float(a),
                "log_evidence": at.log_evidence(),
                "gamma": at.gamma,
                **classification_metrics(probs, labels),
            }
        )
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}
