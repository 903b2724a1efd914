"""The evidence framework: log evidence and MacKay's re-estimation of α and β (docs/math.md).

Pure functions of the eigenvalues c_i of the curvature C (length r ≤ P; the P − r others are
zero), the data error E_D, the weight error E_W, the number of weights P, of observed values
NK, and the precisions. Every structure exposes ``eigenvalues``, so every structure gets the
evidence from these functions.

Regression, A = α I + β C:

    ln p(D | α, β) = −α E_W − β E_D − ½ ln|A| + (P/2) ln α + (NK/2) ln β − (NK/2) ln 2π
    γ = Σ_i β c_i / (β c_i + α)          α ← γ / (2 E_W)          β ← (NK − γ) / (2 E_D)

Classification (cross-entropy E on logits, A = α I + G, no β):

    ln p(D | α) = −E − α E_W − ½ ln|A| + (P/2) ln α          α ← γ / (2 E_W),  γ = Σ c_i/(c_i + α)

One β_k per output (regression, A = α I + Σ_k β_k C_k, C_k = Σ_n J_nkᵀ J_nk): the derivative
of the log evidence in β_k vanishes at β_k = (N − γ_k) / (2 E_Dk), γ_k = β_k Tr(A⁻¹ C_k), and
Σ_k γ_k = γ = P − α Tr A⁻¹; see :func:`optimize_per_output`.

One α_g per group of weights (A = D_α + β C, docs/math.md "Weight groups"):

    ln p(D | α, β) = −Σ_g α_g E_Wg − β E_D − ½ ln|A| + Σ_g (P_g/2) ln α_g + (NK/2) ln β − …
    γ_g = P_g − α_g Tr_g(A⁻¹)          α_g ← γ_g / (2 E_Wg)          β ← (NK − Σ γ_g) / (2 E_D)

:func:`maximize` finds the maximum for any structure from two numbers it can compute at any
α, β — ln|A| and the γ_g — by the fixed point, and where that oscillates or overshoots
(γ ≥ NK), by a direct maximisation in (ln α_g, ln β) with the exact gradient
∂/∂ln α_g = ½ γ_g − α_g E_Wg, ∂/∂ln β = ½ (NK − γ) − β E_D. A maximum at the edge of the
space is reported as such (:class:`EvidenceBoundaryError`), never returned as an optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Eigenvalues above −ROUNDOFF · max|c| count as zero (eigh of a PSD matrix returns ~−1e−15).
ROUNDOFF = 1e-9


class EvidenceError(RuntimeError):
    """The re-estimation of α, β diverged or did not converge; holds the last iterate."""

    def __init__(self, message, *, alpha, beta, n_iter):
        super().__init__(message)
        self.alpha, self.beta, self.n_iter = alpha, beta, n_iter


class EvidenceBoundaryError(EvidenceError):
    """The evidence has no interior maximum: it keeps growing towards the edge of the space
    (β → ∞ for a network that interpolates its data, α_g → 0, β → 0). ``which`` names the
    precision that runs away."""

    def __init__(self, message, *, alpha, beta, n_iter, which):
        super().__init__(message, alpha=alpha, beta=beta, n_iter=n_iter)
        self.which = which


@dataclass
class EvidenceResult:
    """The fixed point of MacKay's re-estimation and how it was reached.

    ``beta`` is a float, or a (K,) array for one β per output; ``history`` holds (α, β) per
    iteration, starting with the initial values.
    """

    alpha: float | np.ndarray
    beta: float | np.ndarray
    gamma: float
    n_iter: int
    history: list = field(default_factory=list, repr=False)
    gammas: np.ndarray | None = None  # γ_g per prior group (maximize)
    method: str = "fixed point"  # or "direct" (maximize fell back to it)
    log_evidence: float | None = None


def negative_eigenvalues(eigenvalues) -> tuple[int, float]:
    """(how many, most negative) among eigenvalues below −ROUNDOFF · max|c| (0, 0.0 if none)."""
    c = np.asarray(eigenvalues, dtype=np.float64)
    if c.size == 0:
        return 0, 0.0
    bad = c < -ROUNDOFF * np.abs(c).max()
    return int(bad.sum()), float(c.min()) if bad.any() else 0.0


def padded_eigenvalues(eigenvalues, n_params: int) -> np.ndarray:
    """All P eigenvalues of C: the given r, round-off negatives set to 0, then P − r zeros.

    Raises ValueError on a genuinely negative eigenvalue (the evidence needs C ⪰ 0).
    """
    c = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if c.size > n_params:
        raise ValueError(f"eigenvalues has {c.size} entries but n_params is {n_params}")
    count, worst = negative_eigenvalues(c)
    if count:
        raise ValueError(
            f"the curvature has {count} negative eigenvalue(s) (most negative {worst:.4g}): "
            "the evidence needs a positive semi-definite C; clip them or use the Gauss–Newton"
        )
    return np.concatenate([np.maximum(c, 0.0), np.zeros(n_params - c.size)])


def _broadcast(alpha, beta, c):
    """α, β as arrays broadcast against each other, with a trailing axis for the eigenvalues."""
    alpha, beta = np.broadcast_arrays(np.asarray(alpha, np.float64), np.asarray(beta, np.float64))
    if np.any(~np.isfinite(alpha)) or np.any(alpha <= 0):
        raise ValueError("alpha must be finite and > 0 for the evidence")
    if np.any(~np.isfinite(beta)) or np.any(beta <= 0):
        raise ValueError("beta must be finite and > 0 for the evidence")
    return alpha, beta, alpha[..., None] + beta[..., None] * c  # eigenvalues of A


def _scalar(value):
    return float(value) if np.ndim(value) == 0 else value


def effective_parameters(eigenvalues, n_params: int, alpha, beta=1.0):
    """γ = Σ_i β c_i / (β c_i + α), the number of well-determined parameters (0 ≤ γ ≤ P).

    α, β may be arrays (broadcast); returns a float or an array of their broadcast shape.
    """
    c = padded_eigenvalues(eigenvalues, n_params)
    alpha, beta, a = _broadcast(alpha, beta, c)
    return _scalar(np.sum(beta[..., None] * c / a, axis=-1))


def log_evidence(
    eigenvalues, *, data_error: float, weight_error: float, n_params: int, n_obs: int, alpha, beta
):
    """Regression log evidence ln p(D | α, β) (MATH.md, constants included), in nats.

    eigenvalues : (r,) eigenvalues of C (r ≤ P).  data_error : E_D (summed).  weight_error :
    E_W = ½ wᵀw.  n_obs : NK, the number of observed target values.  α, β : floats or arrays
    (broadcast, for a grid); returns a float or an array of their broadcast shape.
    """
    c = padded_eigenvalues(eigenvalues, n_params)
    alpha, beta, a = _broadcast(alpha, beta, c)
    value = (
        -alpha * weight_error
        - beta * data_error
        - 0.5 * np.sum(np.log(a), axis=-1)
        + 0.5 * n_params * np.log(alpha)
        + 0.5 * n_obs * np.log(beta)
        - 0.5 * n_obs * np.log(2.0 * np.pi)
    )
    return _scalar(value)


def log_evidence_classification(
    eigenvalues, *, cross_entropy: float, weight_error: float, n_params: int, alpha
):
    """Classification log evidence ln p(D | α) = −E − α E_W − ½ ln|αI + G| + (P/2) ln α.

    eigenvalues : (r,) eigenvalues of the generalised Gauss–Newton G.  cross_entropy : the
    summed cross-entropy E at the trained weights. α may be an array.
    """
    c = padded_eigenvalues(eigenvalues, n_params)
    alpha, _, a = _broadcast(alpha, 1.0, c)
    value = (
        -cross_entropy
        - alpha * weight_error
        - 0.5 * np.sum(np.log(a), axis=-1)
        + 0.5 * n_params * np.log(alpha)
    )
    return _scalar(value)


def _check_errors(data_error, weight_error, fix_alpha, fix_beta):
    if not fix_alpha and not weight_error > 0:
        raise ValueError(
            f"E_W = {weight_error:g}: all weights are zero, so alpha → ∞; use fix_alpha=True"
        )
    if not fix_beta and not np.all(np.asarray(data_error) > 0):
        raise ValueError(
            f"E_D = {data_error}: the network fits the training targets exactly, so beta → ∞; "
            "use fix_beta=True"
        )


def _step_ok(alpha, beta):
    return np.isfinite(alpha) and alpha > 0 and np.all(np.isfinite(beta)) and np.all(beta > 0)


def _iterate(update, alpha, beta, *, tol, max_iter):
    """Run ``(α, β) ← update(α, β)`` until the largest relative change is below ``tol``."""
    if not (tol > 0 and int(max_iter) >= 1):
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    history = [(alpha, beta)]
    for it in range(1, int(max_iter) + 1):
        new_alpha, new_beta, gamma = update(alpha, beta)
        if not _step_ok(new_alpha, new_beta):
            raise EvidenceError(
                f"the evidence re-estimation diverged at iteration {it}: the update gave "
                f"alpha={new_alpha}, beta={new_beta} (gamma={gamma:.6g}) from the last valid "
                f"alpha={alpha!r}, beta={beta!r}; the model may have as many well-determined "
                "weights as data (γ ≥ NK): fix beta, or use more data or fewer weights",
                alpha=alpha,
                beta=beta,
                n_iter=it,
            )
        change = max(
            abs(np.log(new_alpha / alpha)) if alpha > 0 else np.inf,
            float(np.max(np.abs(np.log(np.asarray(new_beta) / np.asarray(beta))))),
        )
        alpha, beta = new_alpha, new_beta
        history.append((alpha, beta))
        if change < tol:
            return alpha, beta, it, history
    raise EvidenceError(
        f"the evidence re-estimation did not converge in {max_iter} iterations (last relative "
        f"change {change:.3g} > tol={tol:g}); last alpha={alpha!r}, beta={beta!r}: raise "
        "max_iter or tol",
        alpha=alpha,
        beta=beta,
        n_iter=int(max_iter),
    )


def optimize(
    eigenvalues,
    *,
    data_error: float,
    weight_error: float,
    n_params: int,
    n_obs: int | None,
    alpha: float,
    beta: float = 1.0,
    fix_alpha: bool = False,
    fix_beta: bool = False,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> EvidenceResult:
    """MacKay's fixed point for α and β at fixed weights (MATH.md), iterated to convergence.

    Both precisions are updated from the same γ = Σ β c_i/(β c_i + α) (as scikit-learn's
    BayesianRidge does). ``fix_alpha``/``fix_beta`` hold one at its given value; classification
    passes ``n_obs=None`` with ``fix_beta=True, beta=1``. Converged when the relative change of
    every precision is below ``tol``. Raises :class:`EvidenceError` (with the last α, β) if an
    update is not a positive finite number or after ``max_iter`` iterations.
    """
    c = padded_eigenvalues(eigenvalues, n_params)
    if n_obs is None and not fix_beta:
        raise ValueError("n_obs (NK) is needed to re-estimate beta")
    if fix_alpha and fix_beta:
        raise ValueError("fix_alpha and fix_beta are both set: nothing to optimise")
    _check_errors(data_error, weight_error, fix_alpha, fix_beta)
    if not (alpha > 0 or not fix_alpha) or not beta > 0:
        raise ValueError(f"starting values must be > 0, got alpha={alpha}, beta={beta}")

    def update(a, b):
        lam = b * c
        # γ; at α = 0 the zero eigenvalues contribute 0 (limit of λ/(λ+α) for λ = 0 < α)
        gamma = float(np.sum(np.divide(lam, lam + a, out=np.zeros_like(lam), where=lam > 0)))
        new_a = a if fix_alpha else gamma / (2.0 * weight_error)
        new_b = b if fix_beta else (n_obs - gamma) / (2.0 * data_error)
        return new_a, new_b, gamma

    if alpha == 0:  # one step from the improper prior gives a proper starting α
        alpha = update(alpha, beta)[0]
    alpha, beta, n_iter, history = _iterate(
        update, float(alpha), float(beta), tol=tol, max_iter=max_iter
    )
    gamma = effective_parameters(c, n_params, alpha, beta)
    return EvidenceResult(alpha, beta, gamma, n_iter, history)


# -- one β per output ---------------------------------------------------------------------------
def _weighted_eigh(blocks, betas):
    """Eigen-decomposition of Σ_k β_k C_k: (eigenvalues (P,), eigenvectors (P, P))."""
    m = np.einsum("k,kpq->pq", betas, blocks)
    return np.linalg.eigh(0.5 * (m + m.T))


def per_output_gammas(blocks, alpha: float, betas) -> np.ndarray:
    """γ_k = β_k Tr(A⁻¹ C_k), A = α I + Σ_k β_k C_k; (K,). Σ_k γ_k = γ."""
    betas = np.asarray(betas, np.float64)
    m, u = _weighted_eigh(blocks, betas)
    inv = 1.0 / (alpha + np.maximum(m, 0.0))
    # Tr(A⁻¹ C_k) = Σ_i (u_iᵀ C_k u_i) / (α + m_i)
    return betas * np.einsum("pi,kpq,qi,i->k", u, blocks, u, inv)


def log_evidence_per_output(
    blocks, *, data_errors, weight_error: float, n_data: int, alpha: float, betas
) -> float:
    """ln p(D | α, β_1..β_K) = −α E_W − Σ_k β_k E_Dk − ½ ln|A| + (P/2) ln α
    + (N/2) Σ_k ln β_k − (NK/2) ln 2π, with A = α I + Σ_k β_k C_k.

    blocks : (K, P, P) per-output Gauss–Newton blocks C_k.  data_errors : (K,) E_Dk.
    """
    betas = np.asarray(betas, np.float64)
    data_errors = np.asarray(data_errors, np.float64)
    k, p = blocks.shape[0], blocks.shape[1]
    m, _ = _weighted_eigh(blocks, betas)
    return float(
        -alpha * weight_error
        - betas @ data_errors
        - 0.5 * np.sum(np.log(alpha + np.maximum(m, 0.0)))
        + 0.5 * p * np.log(alpha)
        + 0.5 * n_data * np.sum(np.log(betas))
        - 0.5 * n_data * k * np.log(2.0 * np.pi)
    )


def optimize_per_output(
    blocks,
    *,
    data_errors,
    weight_error: float,
    n_data: int,
    alpha: float,
    betas,
    fix_alpha: bool = False,
    fix_beta: bool = False,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> EvidenceResult:
    """Fixed point for α and one β_k per output: α ← γ/(2E_W), β_k ← (N − γ_k)/(2E_Dk).

    blocks : (K, P, P) with C_k = Σ_n J_nkᵀ J_nk.  data_errors : (K,) E_Dk = ½ Σ_n (f_nk − t_nk)².
    n_data : N.  betas : (K,) starting values. Raises :class:`EvidenceError` as :func:`optimize`.
    """
    blocks = np.asarray(blocks, np.float64)
    data_errors = np.asarray(data_errors, np.float64)
    betas = np.asarray(betas, np.float64)
    if blocks.ndim != 3 or blocks.shape[1] != blocks.shape[2] or betas.shape != blocks.shape[:1]:
        raise ValueError(
            f"blocks must be (K, P, P) and betas (K,), got {blocks.shape} and {betas.shape}"
        )
    if fix_alpha and fix_beta:
        raise ValueError("fix_alpha and fix_beta are both set: nothing to optimise")
    _check_errors(data_errors, weight_error, fix_alpha, fix_beta)
    if not (alpha > 0 and np.all(betas > 0)):
        raise ValueError(f"starting values must be > 0, got alpha={alpha}, betas={betas}")

    def update(a, b):
        gammas = per_output_gammas(blocks, a, b)
        gamma = float(gammas.sum())
        new_a = a if fix_alpha else gamma / (2.0 * weight_error)
        new_b = b if fix_beta else (n_data - gammas) / (2.0 * data_errors)
        return new_a, new_b, gamma

    alpha, betas, n_iter, history = _iterate(
        update, float(alpha), betas, tol=tol, max_iter=max_iter
    )
    gamma = float(per_output_gammas(blocks, alpha, betas).sum())
    return EvidenceResult(alpha, betas, gamma, n_iter, history)


# -- one α per group of weights, any structure ------------------------------------------------
def log_evidence_groups(
    *, logdet, data_error, weight_errors, sizes, n_obs, alphas, beta, has_beta=True
) -> float:
    """ln p(D | α, β) for one α_g per group (regression), or ln p(D | α) for classification
    (``has_beta=False``: ``data_error`` is the cross-entropy, no β terms).

    logdet : ln|A| at these precisions.  weight_errors, sizes, alphas : (G,) E_Wg, P_g, α_g.
    """
    alphas = np.asarray(alphas, np.float64)
    value = -float(alphas @ weight_errors) - 0.5 * logdet + 0.5 * float(sizes @ np.log(alphas))
    if not has_beta:
        return value - data_error
    return (
        value - beta * data_error + 0.5 * n_obs * np.log(beta) - 0.5 * n_obs * np.log(2.0 * np.pi)
    )


def eigen_terms(eigenvalues, n_params: int):
    """``terms(alphas, beta) -> (ln|A|, γ (1,))`` for one α from the eigenvalues of C."""
    c = padded_eigenvalues(eigenvalues, n_params)

    def terms(alphas, beta):
        a = float(np.asarray(alphas).reshape(-1)[0])
        lam = beta * c
        gamma = float(np.sum(np.divide(lam, lam + a, out=np.zeros_like(lam), where=lam > 0)))
        return float(np.sum(np.log(a + lam))), np.array([gamma])

    return terms


def maximize(
    terms,
    *,
    data_error: float,
    weight_errors,
    sizes,
    n_obs: int | None,
    alphas,
    beta: float = 1.0,
    fix_alpha: bool = False,
    fix_beta: bool = False,
    tol: float = 1e-8,
    max_iter: int = 1000,
    fixed_point_iter: int = 100,
) -> EvidenceResult:
    """The maximum of the log evidence over α_g (and β), for any structure.

    terms : ``terms(alphas (G,), beta) -> (ln|A|, γ (G,))`` at those precisions.
    data_error : E_D (regression) or the cross-entropy (classification: ``n_obs=None``,
        β held at 1).  weight_errors, sizes : (G,) E_Wg and P_g.  alphas, beta : start.

    MacKay's fixed point first (at most ``fixed_point_iter`` iterations); if it overshoots
    (an update ≤ 0, e.g. γ ≥ NK) or has not converged, a direct maximisation in
    (ln α_g, ln β) with the exact gradient (L-BFGS-B), from the best point seen, within
    α_g ≤ P_g/(2E_Wg) and β ≤ NK/(2E_D) (the maximum is always below both). ``max_iter``
    caps the iterations of both together. Raises :class:`EvidenceBoundaryError` when the
    maximum is at the edge of the space (α_g → 0, β → 0) and :class:`EvidenceError` when the
    iterations run out.
    """
    has_beta = n_obs is not None
    weight_errors = np.asarray(weight_errors, np.float64)
    sizes = np.asarray(sizes, np.float64)
    alphas = np.array(alphas, np.float64).reshape(-1)
    if not has_beta:
        fix_beta, beta = True, 1.0
    if fix_alpha and fix_beta:
        raise ValueError("fix_alpha and fix_beta are both set: nothing to optimise")
    if not (tol > 0) or int(max_iter) < 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    if not fix_alpha and not np.all(weight_errors > 0):
        g = int(np.argmin(weight_errors))
        raise ValueError(
            f"E_W = {weight_errors[g]:g} for prior group {g}: its weights are all zero, so its "
            "alpha → ∞; use fix_alpha=True or a prior without that group"
        )
    if not fix_beta and not data_error > 0:
        raise ValueError(
            f"E_D = {data_error}: the network fits the training targets exactly, so beta → ∞; "
            "use fix_beta=True"
        )
    if not (np.all(alphas > 0) and beta > 0):
        raise ValueError(f"starting values must be > 0, got alpha={alphas}, beta={beta}")

    def evaluate(a, b):
        logdet, gammas = terms(a, b)
        value = log_evidence_groups(
            logdet=logdet, data_error=data_error, weight_errors=weight_errors, sizes=sizes,
            n_obs=n_obs, alphas=a, beta=b, has_beta=has_beta,
        )  # fmt: skip
        return value, np.asarray(gammas, np.float64)

    history, n_iter = [(_out(alphas), beta)], 0
    value, gammas = evaluate(alphas, beta)
    best = (value, alphas, beta)
    converged = False
    for _ in range(min(int(fixed_point_iter), int(max_iter))):
        n_iter += 1
        new_a = alphas if fix_alpha else gammas / (2.0 * weight_errors)
        new_b = beta if fix_beta else (n_obs - gammas.sum()) / (2.0 * data_error)
        if not (
            np.all(np.isfinite(new_a)) and np.all(new_a > 0) and np.isfinite(new_b) and new_b > 0
        ):
            break  # the fixed point overshoots (e.g. γ ≥ NK): maximise directly
        change = max(
            float(np.max(np.abs(np.log(new_a) - np.log(alphas)))),
            abs(float(np.log(new_b) - np.log(beta))),
        )
        alphas, beta = new_a, float(new_b)
        history.append((_out(alphas), beta))
        value, gammas = evaluate(alphas, beta)
        if value > best[0]:
            best = (value, alphas, beta)
        if change < tol:
            converged = True
            break
    method = "fixed point"
    if not converged:
        budget = int(max_iter) - n_iter
        if budget <= 0:
            raise EvidenceError(
                f"the evidence maximisation did not converge in {max_iter} iterations; last "
                f"alpha={_out(alphas)!r}, beta={beta!r}: raise max_iter or tol",
                alpha=_out(alphas),
                beta=beta,
                n_iter=int(max_iter),
            )
        alphas, beta, used = _direct(
            evaluate, best, weight_errors=weight_errors, sizes=sizes, data_error=data_error,
            n_obs=n_obs, fix_alpha=fix_alpha, fix_beta=fix_beta, tol=tol, budget=budget,
            iterations=n_iter,
        )  # fmt: skip
        n_iter += used
        history.append((_out(alphas), beta))
        value, gammas = evaluate(alphas, beta)
        method = "direct"
    return EvidenceResult(
        _out(alphas), beta, float(gammas.sum()), n_iter, history, gammas, method, float(value)
    )


def _out(alphas):
    return float(alphas[0]) if alphas.size == 1 else alphas.copy()


def _direct(evaluate, best, *, weight_errors, sizes, data_error, n_obs, fix_alpha, fix_beta,
            tol, budget, iterations):  # fmt: skip
    """L-BFGS-B on −ln p(D | α, β) in log coordinates, from ``best``; the box is
    [1e-12·max, max] with α_g ≤ P_g/(2E_Wg), β ≤ NK/(2E_D) (the maximum lies below both:
    there the gradient points inwards). A maximum at the box's lower edge, with the evidence
    still growing towards it, is the edge of the space (:class:`EvidenceBoundaryError`).

    Each derivative is a difference of two terms that balance at the maximum,
    ∂/∂ln α_g = ½γ_g − α_g E_Wg and ∂/∂ln β = ½(NK − γ) − β E_D, and both shrink with the
    precision: where the data determine almost none of a group's weights (γ_g → 0, e.g. a
    likelihood tempered by T = 1e30) the slope falls below an absolute tolerance long before
    the box's edge or a balance is reached. A stop where a derivative is not small against
    its own terms (relative to √tol) is no maximum: the search goes on from there with the
    tolerance scaled to those terms, until the terms balance or the edge is reached."""
    import scipy.optimize

    _, a0, b0 = best
    g = a0.size
    hi = np.r_[
        np.log(sizes / (2.0 * weight_errors)), np.log(n_obs / (2.0 * data_error)) if n_obs else 0.0
    ]
    x0 = np.r_[np.log(a0), np.log(b0)]
    free = np.r_[np.full(g, not fix_alpha), not fix_beta]
    hi = np.where(free, np.maximum(hi, x0), x0)
    lo = np.where(free, hi - np.log(1e12), x0)
    x0 = np.clip(x0, lo, hi)

    def parts(z):
        """(ln p, the data's and the prior's terms of each derivative (free coordinates))."""
        x = x0.copy()
        x[free] = z
        a, b = np.exp(x[:g]), float(np.exp(x[g]))
        value, gammas = evaluate(a, b)
        pull = np.r_[0.5 * gammas, 0.5 * (n_obs - gammas.sum()) if n_obs else 0.0]
        push = np.r_[a * weight_errors, b * data_error if n_obs else 0.0]
        return value, pull[free], push[free]

    def objective(z, unit=1.0):
        value, pull, push = parts(z)
        return -value / unit, (push - pull) / unit

    def minimize(z, unit, gtol, maxiter):
        return scipy.optimize.minimize(
            objective, z, args=(unit,), jac=True, method="L-BFGS-B",
            bounds=list(zip(lo[free], hi[free], strict=True)),
            options={"maxiter": maxiter, "ftol": 0.0, "gtol": gtol},
        )  # fmt: skip

    res = minimize(x0[free], 1.0, tol * max(1.0, float(sizes.sum())), budget)
    nit = int(res.nit)
    for _ in range(8):  # each restart in the units of the terms where the last one stopped
        _, pull, push = parts(res.x)
        scale = np.abs(pull) + np.abs(push)
        inside = (res.x > lo[free] + 1e-9) & (res.x < hi[free] - 1e-9)
        loose = inside & (np.abs(pull - push) > np.sqrt(tol) * scale)
        if not np.any(loose) or nit >= budget:
            break
        res = minimize(res.x, float(np.min(scale[loose])), tol, budget - nit)
        nit += int(res.nit)
    x = x0.copy()
    x[free] = res.x
    a, b = np.exp(x[:g]), float(np.exp(x[g]))
    _, grad = objective(res.x)
    names = [f"alpha[{i}]" if g > 1 else "alpha" for i in range(g)] + ["beta"]
    at_low = [
        names[i]
        for i, (v, lo_i, gr) in enumerate(zip(x[free], lo[free], grad, strict=True))
        if v <= lo_i + 1e-9 and gr > 0
    ]  # fmt: skip (gr is −∂ln p: > 0 means the evidence still grows towards the bound)
    if at_low:
        raise EvidenceBoundaryError(
            f"the evidence has no interior maximum: it keeps growing as {', '.join(at_low)} → 0 "
            f"(reached alpha={_out(a)!r}, beta={b!r}). The data do not determine "
            f"{'these precisions' if len(at_low) > 1 else 'it'}: hold it ("
            f"{' / '.join(sorted({'fix_beta=True' if n == 'beta' else 'fix_alpha=True' for n in at_low}))}"
            "), use a prior with fewer groups, or more data",
            alpha=_out(a),
            beta=b,
            n_iter=iterations + nit,
            which=at_low,
        )
    if not res.success and nit >= budget:
        raise EvidenceError(
            f"the evidence maximisation did not converge in {iterations + budget} iterations "
            f"(direct maximisation: {res.message}); last alpha={_out(a)!r}, beta={b!r}: raise "
            "max_iter or tol",
            alpha=_out(a),
            beta=b,
            n_iter=iterations + nit,
        )
    return a, b, nit
