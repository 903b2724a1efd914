"""The evidence of a :class:`~sigma.posterior.Posterior`, and its maximisation.

One formula (:func:`sigma.evidence.log_evidence_terms`) and one maximisation
(:func:`sigma.evidence.maximize`), fed by what the structure gives at any precisions: ln|A|,
γ_g = P_g − α_g Tr_g(A⁻¹) per group of weights and γ_h = β_h Tr(A⁻¹ C_h) per precision group
(:func:`terms`). With one α and one precision group, both come from C's eigenvalues when the
structure keeps them (:func:`sigma.evidence.eigen_terms`: α and β may then be grids).
:func:`optimize` returns a new posterior at the maximum — the posterior it is given does not
change.
"""

from __future__ import annotations

import numpy as np

import sigma
from sigma import evidence
from sigma._checks import check_precisions

# Residuals below this many units of the model dtype's precision (relative to the outputs)
# are round-off: the network interpolates its training data and β has no finite optimum.
INTERPOLATION = 100


def from_eigenvalues(post: sigma.Posterior, structure=None) -> bool:
    """The evidence follows from C's eigenvalues: one α, one precision group and a structure
    whose A is diagonal in C's eigenbasis."""
    s = structure or post.structure
    return post.prior.scalar and post.n_groups == 1 and s.evidence_from_eigenvalues


def checked_eigenvalues(post: sigma.Posterior, structure=None) -> np.ndarray:
    """C's eigenvalues; ValueError for a curvature with negative ones (the evidence needs
    a positive semi-definite C)."""
    lam = (structure or post.operator()[0]).eigenvalues
    count, worst = evidence.negative_eigenvalues(lam)
    if count:
        raise ValueError(
            f"the {post.curvature} curvature has {count} negative eigenvalue(s) out of "
            f"{post.n_params} (most negative {worst:.4g}; largest {lam.max():.4g}): the "
            "evidence needs a positive semi-definite curvature. Build the Laplace with "
            "negative='clip' (sets them to zero, with a warning) or curvature='ggn'"
        )
    return lam


def terms(post: sigma.Posterior):
    """``terms(alphas (G_α,), betas (G_β,)) -> (ln|A|, γ_g (G_α,), γ_h (G_β,))`` for
    :func:`sigma.evidence.maximize`."""
    if from_eigenvalues(post):
        return evidence.eigen_terms(checked_eigenvalues(post), post.n_params)
    structure, prior, sizes = post.structure, post.prior, post.prior.sizes

    def at(alphas, betas):
        combined, b = structure.combine(betas)
        checked_eigenvalues(post, combined)  # refuses an indefinite curvature
        alpha_w = prior.per_weight(alphas)
        traces = prior.group_sums(combined.inverse_diagonal(alpha_w, b))
        group_gammas = np.asarray(betas) * structure.group_traces(alpha_w, betas)
        return combined.logdet(alpha_w, b), sizes - np.asarray(alphas) * traces, group_gammas

    return at


def gammas(post: sigma.Posterior) -> np.ndarray:
    """γ_g = P_g − α_g Tr_g(A⁻¹) per prior group, (G,), within [0, P_g]."""
    values = terms(post)(post.alpha, post.beta)[1]
    return np.clip(np.asarray(values, np.float64).reshape(-1), 0.0, post.prior.sizes)


def group_gammas(post: sigma.Posterior) -> np.ndarray:
    """γ_h = β_h Tr(A⁻¹ C_h) per precision group, (G_β,): how many parameters each group's
    data determine (Σ_h γ_h = Σ_g γ_g)."""
    values = terms(post)(post.alpha, post.beta)[2]
    return np.clip(np.asarray(values, np.float64).reshape(-1), 0.0, post.n_params)


def gamma(post: sigma.Posterior) -> float:
    """γ = Σ_g γ_g (= Σ_i λ_i/(λ_i + α), λ_i the eigenvalues of β C, for one α)."""
    if from_eigenvalues(post):
        return evidence.effective_parameters(
            checked_eigenvalues(post), post.n_params, post.alpha[0], post.beta[0]
        )
    return float(gammas(post).sum())


def _formula(post: sigma.Posterior, logdet, alphas, betas, parts=False):
    formula = evidence.log_evidence_parts if parts else evidence.log_evidence_terms
    return formula(
        logdet=logdet, alphas=alphas, weight_errors=post.weight_errors, sizes=post.prior.sizes,
        betas=betas, errors=post.group_errors, counts=post.group_counts,
        noise=post.groups.free,
    )  # fmt: skip


def log_evidence_parts(post: sigma.Posterior) -> dict:
    """ln p(D | α, β) at the posterior's precisions as ``{"data_fit", "occam"}`` (floats, nats;
    :func:`sigma.evidence.log_evidence_parts`): their sum is :func:`log_evidence`."""
    if not from_eigenvalues(post):
        structure, b = post.operator()
        post.check_positive_definite(post.alpha, b, structure)
    logdet, _, _ = terms(post)(post.alpha, post.beta)
    parts = _formula(post, logdet, post.alpha, post.beta, parts=True)
    return {name: float(np.asarray(value).reshape(())) for name, value in parts.items()}


def log_evidence(post: sigma.Posterior, alpha=None, beta=None):
    """ln p(D | α, β) in nats (see :meth:`sigma.Laplace.log_evidence`): at the posterior's
    precisions by default; with one prior group and one precision group, ``alpha``/``beta``
    may be broadcasting grids."""
    if beta is not None:
        post.likelihood.require_beta()
    if beta is not None:
        check_precisions(beta, "beta", allow_zero=False)
    if from_eigenvalues(post):
        alpha = post.alpha[0] if alpha is None else check_precisions(alpha, "alpha")
        beta = post.beta[0] if beta is None else beta
        try:
            shape = np.broadcast_shapes(np.shape(alpha), np.shape(beta))
        except ValueError:
            raise ValueError(
                f"alpha and beta must broadcast against each other (e.g. a meshgrid), got "
                f"shapes {np.shape(alpha)} and {np.shape(beta)}"
            ) from None
        a = np.broadcast_to(np.asarray(alpha, np.float64), shape)[..., None]
        b = np.broadcast_to(np.asarray(beta, np.float64), shape)[..., None]
        evidence.broadcast_precisions(a, b, np.zeros(0))  # refuses α, β ≤ 0 by name
        logdet, _, _ = terms(post)(a, b)
        return _formula(post, logdet, a, b)
    alphas = post.alpha if alpha is None else post.check_alpha(alpha)
    betas = post.beta if beta is None else post.check_beta(beta)
    if not (np.all(alphas > 0) and np.ndim(alpha if alpha is not None else 0) <= 1):
        raise ValueError(
            "with several prior groups, several precision groups (or structure 'lowrank' with "
            "its diagonal), the evidence takes one alpha per group (> 0) and one beta per "
            "precision group, not a grid"
        )
    structure, b = post.operator(betas)
    post.check_positive_definite(alphas, b, structure)  # ln|A| by Cholesky needs it
    logdet, _, _ = terms(post)(alphas, betas)
    return float(_formula(post, logdet, alphas, betas))


def interpolates(post: sigma.Posterior, eps: float) -> bool:
    """The training residuals of a noise group are at the float precision ``eps`` of the
    model's outputs."""
    s = post.summary
    free = post.groups.free
    if not free.any():
        return False
    residual = np.sqrt(2.0 * post.group_errors[free] / np.maximum(post.group_counts[free], 1))
    return bool(np.any(residual <= INTERPOLATION * eps * max(s.output_scale, 1e-300)))


def optimize(
    post: sigma.Posterior,
    *,
    fix_alpha: bool,
    fix_beta: bool,
    tol: float,
    max_iter: int,
    eps: float,
) -> tuple[sigma.Posterior, evidence.EvidenceResult]:
    """(the posterior at the maximum of the evidence, how it was reached): MacKay's fixed
    point from the current α, β, or a direct maximisation where it overshoots or oscillates
    (see :meth:`sigma.Laplace.optimize_evidence`). ``eps``: the precision of the model's dtype
    (to tell interpolation from noise)."""
    start = post.alpha.copy()
    if np.any(start == 0):
        start = np.where(start == 0, post.alpha_from_zero(), start)
    free = post.groups.free
    if free.any() and not fix_beta and interpolates(post, eps):
        raise evidence.EvidenceBoundaryError(
            "the network interpolates its training data (E_D = "
            f"{post.summary.data_error:.3g}, residuals at the float precision of its outputs), "
            "so the evidence grows without bound as beta → ∞: there is no noise level "
            "to find. Train with the evidence (sigma.EvidenceCallback keeps E_D away "
            "from zero), hold beta (optimize_evidence(fix_beta=True)), or use more "
            "data or fewer weights",
            alpha=float(post.alpha[0]) if post.prior.scalar else post.alpha.copy(),
            beta=_public(post.beta),
            n_iter=0,
            which=["beta"],
        )
    tempered = np.array(post.groups.kinds) == "tempered"
    try:
        result = evidence.maximize(
            terms(post),
            weight_errors=post.weight_errors,
            sizes=post.prior.sizes,
            errors=post.group_errors,
            counts=post.group_counts,
            noise=free,
            alphas=start,
            betas=post.beta,
            fix_alpha=fix_alpha,
            fix_beta=fix_beta or not free.any(),
            tol=tol,
            max_iter=max_iter,
        )
    except evidence.EvidenceBoundaryError as exc:
        names = post.prior.names
        groups = [f"{w} is the prior group {names[int(w[6:-1])]!r}" for w in exc.which
                  if w.startswith("alpha[") and len(names) > 1]  # fmt: skip
        if groups:
            exc.add_note(f"({'; '.join(groups)})")
        if tempered.any() and np.any(post.beta[tempered] != 1.0):  # a tempered likelihood
            temperature = 1.0 / float(post.beta[tempered][0])
            exc.add_note(
                f"(the likelihood is tempered by temperature={temperature:g}: a smaller "
                "temperature gives the data more weight; a classifier's alpha can also be set "
                "directly, la.alpha = ...)"
            )
        raise
    alphas = np.atleast_1d(np.asarray(result.alpha, np.float64))
    betas = np.atleast_1d(np.asarray(result.beta, np.float64))
    best = post.replace(alpha=alphas, beta=betas)
    result.alpha = float(alphas[0]) if post.prior.scalar else alphas
    result.beta = _public(betas)
    return best, result


def _public(beta):
    beta = np.atleast_1d(np.asarray(beta, np.float64))
    return float(beta[0]) if beta.size == 1 else beta.copy()
