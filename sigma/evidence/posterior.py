"""The evidence of a :class:`~sigma.posterior.Posterior`, and its maximisation.

Which formula of :mod:`sigma.evidence` applies depends on the posterior: with one α and a
structure whose A is diagonal in C's eigenbasis, everything follows from C's eigenvalues
(:func:`~sigma.evidence.log_evidence`, :func:`~sigma.evidence.eigen_terms`); with several
prior groups (or lowrank's diagonal) from ln|A| and diag(A⁻¹) of the structure
(:func:`~sigma.evidence.log_evidence_groups`); with one β per output from the blocks C_k
(:func:`~sigma.evidence.log_evidence_per_output`). :func:`optimize` returns a new posterior
at the maximum — the posterior it is given does not change.
"""

from __future__ import annotations

import functools

import numpy as np

from sigma import evidence
from sigma._checks import check_precisions
from sigma.posterior import Posterior, no_beta

# Residuals below this many units of the model dtype's precision (relative to the outputs)
# are round-off: the network interpolates its training data and β has no finite optimum.
INTERPOLATION = 100


def from_eigenvalues(post: Posterior, structure=None) -> bool:
    """The evidence follows from C's eigenvalues: one α and a structure whose A is diagonal
    in C's eigenbasis."""
    return post.prior.scalar and (structure or post.structure).evidence_from_eigenvalues


def checked_eigenvalues(post: Posterior, structure=None) -> np.ndarray:
    """C's eigenvalues; ValueError for a curvature with negative ones (the evidence needs
    a positive semi-definite C)."""
    lam = (structure or post.structure).eigenvalues
    count, worst = evidence.negative_eigenvalues(lam)
    if count:
        raise ValueError(
            f"the {post.curvature} curvature has {count} negative eigenvalue(s) out of "
            f"{post.n_params} (most negative {worst:.4g}; largest {lam.max():.4g}): the "
            "evidence needs a positive semi-definite curvature. Build the Laplace with "
            "negative='clip' (sets them to zero, with a warning) or curvature='ggn'"
        )
    return lam


def terms(post: Posterior, structure=None):
    """``terms(alphas (G,), β) -> (ln|A|, γ (G,))`` for :func:`sigma.evidence.maximize`."""
    s = structure or post.structure
    if from_eigenvalues(post, s):
        return evidence.eigen_terms(checked_eigenvalues(post, s), post.n_params)
    checked_eigenvalues(post, s)  # refuses an indefinite curvature
    sizes, prior = post.prior.sizes, post.prior

    def at(alphas, beta):
        alpha_w = prior.per_weight(alphas)
        traces = prior.group_sums(s.inverse_diagonal(alpha_w, beta))
        return s.logdet(alpha_w, beta), sizes - np.asarray(alphas) * traces

    return at


def gammas(post: Posterior) -> np.ndarray:
    """γ_g = P_g − α_g Tr_g(A⁻¹) per prior group, (G,), within [0, P_g]."""
    structure, beta = post.operator()
    values = terms(post, structure)(post.alpha, beta)[1]
    return np.clip(values, 0.0, post.prior.sizes)  # 0 ≤ γ_g ≤ P_g also at round-off


def gamma(post: Posterior) -> float:
    """γ = Σ_g γ_g (= Σ_i λ_i/(λ_i + α), λ_i the eigenvalues of β C, for one α)."""
    structure, beta = post.operator()
    if from_eigenvalues(post, structure):
        return evidence.effective_parameters(
            checked_eigenvalues(post, structure), post.n_params, post.alpha[0], beta
        )
    return float(gammas(post).sum())


def log_evidence(post: Posterior, alpha=None, beta=None):
    """ln p(D | α, β) in nats (see :meth:`sigma.Laplace.log_evidence`): at the posterior's
    precisions by default; with one group, ``alpha``/``beta`` may be broadcasting grids."""
    has_beta = post.likelihood.has_beta
    if not has_beta and beta is not None:
        raise ValueError(no_beta(post.likelihood))
    if beta is not None:
        check_precisions(beta, "beta", allow_zero=False)
    if post.prior.scalar:
        alpha = post.alpha[0] if alpha is None else check_precisions(alpha, "alpha")
        if np.ndim(alpha) and beta is not None and np.ndim(beta):
            try:
                np.broadcast_shapes(np.shape(alpha), np.shape(beta))
            except ValueError:
                raise ValueError(
                    f"alpha and beta must broadcast against each other (e.g. a meshgrid), "
                    f"got shapes {np.shape(alpha)} and {np.shape(beta)}"
                ) from None
    else:
        alpha = post.alpha if alpha is None else post.check_alpha(alpha)
    summary = post.summary
    if beta is None and post.weighted is not None:
        if np.ndim(alpha) != 0:
            raise ValueError("with one beta per output, alpha must be a single number")
        return evidence.log_evidence_per_output(
            post.blocks,
            data_errors=summary.data_errors,
            weight_error=post.weight_error,
            n_data=summary.n_data,
            alpha=float(alpha),
            betas=post.beta,
        )
    beta = post.beta if beta is None else beta
    if from_eigenvalues(post):
        if not has_beta:
            return evidence.log_evidence_classification(
                post.beta * checked_eigenvalues(post),  # tempered: C/T, E/T
                cross_entropy=post.tempered_error,
                weight_error=post.weight_error,
                n_params=post.n_params,
                alpha=alpha,
            )
        return evidence.log_evidence(
            checked_eigenvalues(post),
            data_error=summary.data_error,
            weight_error=post.weight_error,
            n_params=post.n_params,
            n_obs=post.n_obs,
            alpha=alpha,
            beta=beta,
        )
    try:
        alphas = np.broadcast_to(np.asarray(alpha, np.float64), (post.prior.n_groups,))
    except ValueError:  # not one alpha per group (e.g. a grid)
        alphas = np.zeros(0)
    if np.ndim(beta) or alphas.size == 0 or not np.all(alphas > 0):
        raise ValueError(
            "with several prior groups (or structure 'lowrank' with its diagonal), the "
            "evidence takes one alpha per group (> 0) and one beta, not a grid"
        )
    post.check_positive_definite(alphas, float(beta))  # ln|A| by Cholesky needs it
    logdet, _ = terms(post)(alphas, float(beta))
    return evidence.log_evidence_groups(
        logdet=logdet,
        data_error=post.tempered_error,
        weight_errors=post.weight_errors,
        sizes=post.prior.sizes,
        n_obs=post.n_obs,
        alphas=alphas,
        beta=float(beta),
        has_beta=has_beta,
    )


def interpolates(post: Posterior, eps: float) -> bool:
    """The training residuals are at the float precision ``eps`` of the model's outputs."""
    s = post.summary
    residual = np.sqrt(2.0 * s.data_error / (s.n_data * s.n_outputs))
    return bool(residual <= INTERPOLATION * eps * max(s.output_scale, 1e-300))


def optimize(
    post: Posterior,
    *,
    fix_alpha: bool,
    fix_beta: bool,
    per_output: bool,
    tol: float,
    max_iter: int,
    eps: float,
) -> tuple[Posterior, evidence.EvidenceResult]:
    """(the posterior at the maximum of the evidence, how it was reached): MacKay's fixed
    point from the current α, β, or a direct maximisation where it overshoots or oscillates
    (see :meth:`sigma.Laplace.optimize_evidence`). ``per_output`` needs ``post.blocks``;
    ``eps``: the precision of the model's dtype (to tell interpolation from noise)."""
    has_beta = post.likelihood.has_beta
    if not has_beta and per_output:
        raise ValueError(no_beta(post.likelihood))
    start = post.alpha.copy()
    if np.any(start == 0):
        start = np.where(start == 0, post.alpha_from_zero(), start)
    summary = post.summary
    if per_output:
        result = evidence.optimize_per_output(
            post.blocks,
            data_errors=summary.data_errors,
            weight_error=post.weight_error,
            n_data=summary.n_data,
            alpha=float(start[0]),
            betas=np.broadcast_to(post.beta, (summary.n_outputs,)),
            fix_alpha=fix_alpha,
            fix_beta=fix_beta,
            tol=tol,
            max_iter=max_iter,
        )
        result.alpha = np.array([result.alpha])
    else:
        if has_beta and not fix_beta and interpolates(post, eps):
            raise evidence.EvidenceBoundaryError(
                "the network interpolates its training data (E_D = "
                f"{summary.data_error:.3g}, residuals at the float precision of its outputs), "
                "so the evidence grows without bound as beta → ∞: there is no noise level "
                "to find. Train with the evidence (sigma.EvidenceCallback keeps E_D away "
                "from zero), hold beta (optimize_evidence(fix_beta=True)), or use more "
                "data or fewer weights",
                alpha=float(post.alpha[0]) if post.prior.scalar else post.alpha.copy(),
                beta=post.beta,
                n_iter=0,
                which=["beta"],
            )
        at = terms(post)
        if not has_beta:  # β is held at 1/T (the temperature): maximize holds it at 1
            at = functools.partial(_fixed_beta, at, post.beta)
        try:
            result = evidence.maximize(
                at,
                data_error=post.tempered_error,
                weight_errors=post.weight_errors,
                sizes=post.prior.sizes,
                n_obs=post.n_obs if has_beta else None,
                alphas=start,
                beta=float(np.mean(post.beta)),
                fix_alpha=fix_alpha,
                fix_beta=fix_beta,
                tol=tol,
                max_iter=max_iter,
            )
        except evidence.EvidenceBoundaryError as exc:
            if not has_beta and float(post.beta) != 1.0:  # a tempered likelihood, C/T
                exc.add_note(
                    f"(the likelihood is tempered by temperature={1.0 / float(post.beta):g}: "
                    "a smaller temperature gives the data more weight; a classifier's alpha "
                    "can also be set directly, la.alpha = ...)"
                )
            raise
        result.alpha = np.atleast_1d(np.asarray(result.alpha, np.float64))
        if not has_beta:
            result.beta = post.beta
    best = post.replace(alpha=result.alpha, beta=result.beta)
    if post.prior.scalar:
        result.alpha = float(result.alpha[0])
    return best, result


def _fixed_beta(at, beta, alphas, _):
    """``at`` (ln|A| and γ) at the given β whatever β it is asked at."""
    return at(alphas, beta)
