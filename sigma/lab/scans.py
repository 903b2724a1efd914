"""Scans over the precisions of a fitted Laplace: the evidence next to held-out calibration.

Notebook helpers: :func:`beta_scan` (regression, over β) and :func:`alpha_scan` (classification,
over α) change the precisions of one fitted ``Laplace`` — never refitting and, with the
curvature engine, never tracing again — and restore them afterwards.
"""

from __future__ import annotations

import numpy as np

from sigma._checks import as_array
from sigma.metrics import classification_metrics, regression_metrics


def beta_scan(laplace, betas, x_test, y_test, *, optimize_alpha: bool = True) -> dict:
    """Evidence and held-out calibration of a regression Laplace over noise precisions β.

    For each β (one shared by all outputs): α re-estimated by the evidence with β fixed
    (``optimize_alpha``) or kept; then the log evidence, γ and :func:`regression_metrics` of
    the predictive on (x_test, y_test). The Laplace's α, β are restored afterwards.

    Returns a dict of (len(betas),) arrays: beta, alpha, log_evidence, gamma, coverage_68,
    coverage_95, nll, rmse, mean_sigma.
    """
    betas = as_array(betas, "betas", ndim=1).astype(np.float64)
    saved = laplace.posterior, laplace.evidence_result  # an immutable value: restored as is
    rows = []
    try:
        for b in betas:
            laplace.beta = float(b)
            if optimize_alpha:
                laplace.optimize_evidence(fix_beta=True, per_output=False)
            mean, std = laplace.predict(x_test)
            rows.append(
                {
                    "beta": float(b),
                    "alpha": laplace.alpha,
                    "log_evidence": laplace.log_evidence(),
                    "gamma": laplace.gamma,
                    **regression_metrics(mean, std, y_test),
                }
            )
    finally:
        laplace.posterior, laplace.evidence_result = saved
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def alpha_scan(
    laplace, alphas, x_test, labels, *, method: str = "probit", n_samples: int = 1000, seed: int = 0
) -> dict:
    """Evidence and held-out calibration of a classification Laplace over prior precisions α.

    For each α: the log evidence, γ and :func:`classification_metrics` of
    ``laplace.predict_proba(x_test, method=..., n_samples=..., seed=...)`` against ``labels``.
    The Laplace's α is restored afterwards. Returns a dict of (len(alphas),) arrays: alpha,
    log_evidence, gamma, accuracy, nll, brier, ece.
    """
    alphas = as_array(alphas, "alphas", ndim=1).astype(np.float64)
    saved = laplace.posterior
    rows = []
    try:
        for a in alphas:
            laplace.alpha = float(a)
            probs = laplace.predict_proba(x_test, method=method, n_samples=n_samples, seed=seed)
            rows.append(
                {
                    "alpha": float(a),
                    "log_evidence": laplace.log_evidence(),
                    "gamma": laplace.gamma,
                    **classification_metrics(probs, labels),
                }
            )
    finally:
        laplace.posterior = saved
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}
