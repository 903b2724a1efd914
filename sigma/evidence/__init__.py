"""The evidence framework: one log evidence and one maximisation (docs/math.md).

The precisions are α_g, one per group of weights (the prior, A's diagonal D_α), and β_h, one
per precision group of the outputs (:class:`sigma.likelihoods.Groups`: a regression output's
noise precision, free; a classifier's 1/T, fixed), with A = D_α + Σ_h β_h C_h:

    ln p(D | α, β) = −Σ_g α_g E_Wg − Σ_h β_h E_h − ½ ln|A| + Σ_g (P_g/2) ln α_g
                     + Σ_{h noise} (N_h/2) (ln β_h − ln 2π)

(E_h: the data term of group h — ½ Σ (f − t)² for a Gaussian output, the cross-entropy for a
classifier; N_h: the number of its observed values). It depends on the structure of A only
through ln|A| and the effective numbers of parameters

    γ_g = P_g − α_g Tr_g(A⁻¹)   (per group of weights)     γ_h = β_h Tr(A⁻¹ C_h)   (per output group)

(Σ_g γ_g = Σ_h γ_h). :func:`log_evidence_terms` is that formula (the sum of its data fit and its
Occam factor, :func:`log_evidence_parts`); :func:`maximize` finds its
maximum for any structure from a function giving (ln|A|, γ_g, γ_h) at any precisions —
MacKay's fixed point α_g ← γ_g/(2E_Wg), β_h ← (N_h − γ_h)/(2E_h), and where it overshoots
(γ ≥ N) or oscillates, a direct maximisation in (ln α_g, ln β_h) with the exact gradient
∂/∂ln α_g = ½ γ_g − α_g E_Wg, ∂/∂ln β_h = ½ (N_h − γ_h) − β_h E_h. A maximum at the edge of the
space is reported as such (:class:`EvidenceBoundaryError`), never returned as an optimum.

With one α and one β everything follows from the eigenvalues c_i of C (ln|A| = Σ ln(α + βc_i),
γ = Σ βc_i/(βc_i + α)): :func:`log_evidence` (on grids of α, β), :func:`effective_parameters`
and :func:`optimize` (MacKay's fixed point alone, as scikit-learn's BayesianRidge) are that
case of the same formula and loop.
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

    ``beta`` is a float, or an array with one β per precision group (one per output, one per
    head); ``history`` holds (α, β) per iteration, starting with the initial values.
    """

    alpha: float | np.ndarray
    beta: float | np.ndarray
    gamma: float
    n_iter: int
    history: list = field(default_factory=list, repr=False)
    gammas: np.ndarray | None = None  # γ_g per prior group (maximize)
    method: str = "fixed point"  # or "direct" (maximize fell back to it)
    log_evidence: float | None = None
    group_gammas: np.ndarray | None = None  # γ_h = β_h Tr(A⁻¹ C_h) per precision group


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


def broadcast_precisions(alpha, beta, c):
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
    alpha, beta, a = broadcast_precisions(alpha, beta, c)
    return _scalar(np.sum(beta[..., None] * c / a, axis=-1))


def log_evidence_parts(*, logdet, alphas, weight_errors, sizes, betas, errors, counts, noise):
    """ln p(D | α, β) split in two, ``{"data_fit": ..., "occam": ...}`` (nats), whose sum is
    :func:`log_evidence_terms` (which is computed from them):

    * data_fit = −Σ_h β_h E_h + Σ_{h noise} (N_h/2)(ln β_h − ln 2π): the log likelihood of the
      data at the weights w* (a Gaussian output's with its noise precision β_h; a classifier's or
      a heteroscedastic head's −E_h, at its fixed β_h);
    * occam = −Σ_g α_g E_Wg + ½ Σ_g P_g ln α_g − ½ ln|A|: the log of MacKay's Occam factor, the
      prior density at w* times the posterior volume (ln|D_α| − ln|A| compares the prior's
      volume with the posterior's; ≤ 0 up to the prior term).

    Arguments as for :func:`log_evidence_terms`; each part has the grids' shape.
    """
    alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    noise = np.asarray(noise, bool)
    counts = np.where(noise, np.asarray(counts, np.float64), 0.0)
    data_fit = -np.sum(betas * errors, axis=-1) + 0.5 * np.sum(
        counts * (np.log(betas) - np.log(2.0 * np.pi)), axis=-1
    )
    occam = (
        -np.sum(alphas * weight_errors, axis=-1)
        + 0.5 * np.sum(np.asarray(sizes, np.float64) * np.log(alphas), axis=-1)
        - 0.5 * np.asarray(logdet)
    )
    return {"data_fit": _scalar(data_fit), "occam": _scalar(occam)}


def log_evidence_terms(*, logdet, alphas, weight_errors, sizes, betas, errors, counts, noise):
    """ln p(D | α, β) from ln|A| (see the module docstring), in nats: the sum of the data fit
    and the Occam factor of :func:`log_evidence_parts`.

    alphas, weight_errors, sizes : (G_α,) α_g, E_Wg, P_g.  betas, errors, counts, noise :
    (G_β,) β_h, E_h, N_h and whether h is a noise group (its ln β and ln 2π terms). Any of
    α, β and ln|A| may carry leading grid axes (broadcast, e.g. a meshgrid of one α and one
    β); the result then has that shape.
    """
    parts = log_evidence_parts(
        logdet=logdet, alphas=alphas, weight_errors=weight_errors, sizes=sizes, betas=betas,
        errors=errors, counts=counts, noise=noise,
    )  # fmt: skip
    return _scalar(np.asarray(parts["data_fit"]) + np.asarray(parts["occam"]))


def eigen_terms(eigenvalues, n_params: int):
    """``terms(alphas, betas) -> (ln|A|, γ (1,), γ (1,))`` for one α and one β from the
    eigenvalues of C (α, β of any shape: grids broadcast)."""
    c = padded_eigenvalues(eigenvalues, n_params)

    def terms(alphas, betas):
        a = np.asarray(alphas, np.float64)[..., :1]
        b = np.asarray(betas, np.float64)[..., :1]
        lam = b * c
        logdet = np.sum(np.log(a + lam), axis=-1)
        gamma = np.sum(np.divide(lam, lam + a, out=np.zeros(lam.shape), where=lam > 0), axis=-1)
        return logdet, gamma[..., None], gamma[..., None]

    return terms


def log_evidence(
    eigenvalues, *, data_error: float, weight_error: float, n_params: int, n_obs, alpha, beta=1.0
):
    """ln p(D | α, β) for one α and one β from the eigenvalues c (r,) of C (r ≤ P), in nats.

    Regression: data_error E_D, n_obs NK. A classifier: data_error the cross-entropy, beta
    1/T (1 untempered) and ``n_obs=None`` (no noise terms). α, β floats or
    arrays (broadcast, for a grid); returns a float or an array of their broadcast shape.
    """
    c = padded_eigenvalues(eigenvalues, n_params)
    alpha, beta, _ = broadcast_precisions(alpha, beta, c)
    logdet, _, _ = eigen_terms(c, n_params)(alpha[..., None], beta[..., None])
    noise = n_obs is not None
    return log_evidence_terms(
        logdet=logdet, alphas=alpha[..., None], weight_errors=np.array([weight_error]),
        sizes=np.array([n_params]), betas=beta[..., None], errors=np.array([data_error]),
        counts=np.array([n_obs if noise else 0]), noise=np.array([noise]),
    )  # fmt: skip


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
    """MacKay's fixed point for one α and one β from the eigenvalues of C (as scikit-learn's
    BayesianRidge): :func:`maximize` without its direct fallback. Classification passes
    ``n_obs=None`` (β held at its value). Raises :class:`EvidenceError` (with the last α, β)
    when an update is not a positive finite number or after ``max_iter`` iterations."""
    c = padded_eigenvalues(eigenvalues, n_params)
    if n_obs is None and not fix_beta:
        fix_beta = True
    if alpha == 0:  # one step from the improper prior gives a proper starting α
        lam = beta * c
        gamma = float(np.sum(lam > 0))
        alpha = gamma / (2.0 * weight_error) if weight_error > 0 else 1.0
    result = maximize(
        eigen_terms(c, n_params), weight_errors=[weight_error], sizes=[n_params],
        errors=[data_error], counts=[0 if n_obs is None else n_obs], noise=[n_obs is not None],
        alphas=[alpha], betas=[beta], fix_alpha=fix_alpha, fix_beta=fix_beta, tol=tol,
        max_iter=max_iter, direct=False,
    )  # fmt: skip
    result.alpha = float(np.asarray(result.alpha).reshape(-1)[0])
    result.beta = float(np.asarray(result.beta).reshape(-1)[0])
    result.gamma = effective_parameters(c, n_params, result.alpha, result.beta)
    return result


def maximize(
    terms,
    *,
    weight_errors,
    sizes,
    errors,
    counts,
    noise,
    alphas,
    betas,
    fix_alpha: bool = False,
    fix_beta: bool = False,
    tol: float = 1e-8,
    max_iter: int = 1000,
    fixed_point_iter: int = 100,
    direct: bool = True,
) -> EvidenceResult:
    """The maximum of the log evidence over the α_g and the free β_h, for any structure.

    terms : ``terms(alphas (G_α,), betas (G_β,)) -> (ln|A|, γ_g (G_α,), γ_h (G_β,))``.
    weight_errors, sizes : (G_α,) E_Wg and P_g.  errors, counts, noise : (G_β,) E_h, N_h, and
    which groups have a free noise precision (the others' β is held).  alphas, betas : start.

    MacKay's fixed point first (at most ``fixed_point_iter`` iterations); if it overshoots (an
    update ≤ 0, e.g. γ_h ≥ N_h), has not converged, or converges so slowly that ``tol`` is
    more than :data:`SLOW` iterations away (its steps shrinking by a constant factor, as with
    several prior groups that trade weights between them; judged from the tenth iteration on,
    at the rate of the last five steps; only with ``direct``), a direct maximisation in
    (ln α_g, ln β_h) with the exact gradient (L-BFGS-B), from the best point seen, within
    α_g ≤ P_g/(2E_Wg) and β_h ≤ N_h/(2E_h) (the maximum is always below both), then the fixed
    point again from its result for as long as that contracts (to ``tol``, which L-BFGS-B on
    ln p cannot resolve; at most 2·SLOW iterations). ``direct=False``: no hand-over, and an
    overshoot or the end of the iterations raises :class:`EvidenceError`. ``max_iter`` caps
    the iterations of all three together.
    Raises :class:`EvidenceBoundaryError` when the maximum is at the edge of the space
    (α_g → 0, β_h → 0) and :class:`EvidenceError` when the iterations run out.
    """
    weight_errors = np.asarray(weight_errors, np.float64).reshape(-1)
    sizes = np.asarray(sizes, np.float64).reshape(-1)
    errors = np.asarray(errors, np.float64).reshape(-1)
    counts = np.asarray(counts, np.float64).reshape(-1)
    noise = np.asarray(noise, bool).reshape(-1)
    alphas = np.array(alphas, np.float64).reshape(-1)
    betas = np.array(betas, np.float64).reshape(-1)
    free_beta = noise & (not fix_beta)
    if fix_alpha and not free_beta.any():
        raise ValueError("fix_alpha and fix_beta are both set: nothing to optimise")
    if not (tol > 0) or int(max_iter) < 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    if not fix_alpha and not np.all(weight_errors > 0):
        g = int(np.argmin(weight_errors))
        which = f" for prior group {g}" if weight_errors.size > 1 else ""
        raise ValueError(
            f"E_W = {weight_errors[g]:g}{which}: its weights are all zero, so alpha → ∞; use "
            "fix_alpha=True" + (" or a prior without that group" if weight_errors.size > 1 else "")
        )
    if np.any(free_beta & ~(errors > 0)):
        h = int(np.flatnonzero(free_beta & ~(errors > 0))[0])
        raise ValueError(
            f"E_D = {errors[h]:g}: the network fits the training targets exactly, so beta → ∞; "
            "use fix_beta=True"
        )
    if not (np.all(alphas > 0) and np.all(betas > 0)):
        raise ValueError(f"starting values must be > 0, got alpha={alphas}, beta={betas}")

    def evaluate(a, b):
        logdet, gammas, group_gammas = terms(a, b)
        value = log_evidence_terms(
            logdet=logdet, alphas=a, weight_errors=weight_errors, sizes=sizes, betas=b,
            errors=errors, counts=counts, noise=noise,
        )  # fmt: skip
        return value, np.asarray(gammas, np.float64), np.asarray(group_gammas, np.float64)

    history, n_iter = [(_out(alphas), _out(betas))], 0
    value, gammas, group_gammas = evaluate(alphas, betas)
    best = (value, alphas, betas)
    converged = False
    steps = []  # the fixed point's steps (largest change of a log precision)

    def update(alphas, betas, gammas, group_gammas):
        """MacKay's re-estimation: (α, β, whether both are positive and finite)."""
        new_a = alphas if fix_alpha else gammas / (2.0 * weight_errors)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_b = np.where(free_beta, (counts - group_gammas) / (2.0 * errors), betas)
        valid = (
            np.all(np.isfinite(new_a)) and np.all(new_a > 0)
            and np.all(np.isfinite(new_b)) and np.all(new_b > 0)
        )  # fmt: skip
        return new_a, new_b, valid

    def change_of(new_a, new_b, alphas, betas):
        return max(
            float(np.max(np.abs(np.log(new_a) - np.log(alphas)))),
            float(np.max(np.abs(np.log(new_b) - np.log(betas)))),
        )

    for _ in range(min(int(fixed_point_iter) if direct else int(max_iter), int(max_iter))):
        n_iter += 1
        new_a, new_b, valid = update(alphas, betas, gammas, group_gammas)
        if not valid:
            if not direct:
                raise EvidenceError(
                    f"the evidence re-estimation diverged at iteration {n_iter}: the update gave "
                    f"alpha={_out(new_a)}, beta={_out(new_b)} (gamma={float(gammas.sum()):.6g}) "
                    f"from the last valid alpha={_out(alphas)!r}, beta={_out(betas)!r}; the model "
                    "may have as many well-determined weights as data (γ ≥ NK): fix beta, or use "
                    "more data or fewer weights",
                    alpha=_out(alphas), beta=_out(betas), n_iter=n_iter,
                )  # fmt: skip
            break  # the fixed point overshoots (e.g. γ ≥ NK): maximise directly
        change = change_of(new_a, new_b, alphas, betas)
        alphas, betas = new_a, new_b
        history.append((_out(alphas), _out(betas)))
        value, gammas, group_gammas = evaluate(alphas, betas)
        if value > best[0]:
            best = (value, alphas, betas)
        if change < tol:
            converged = True
            break
        steps.append(change)
        if direct and _slow(steps, tol):
            break  # the direct maximisation gets there in fewer evaluations
    method = "fixed point"
    if converged:
        _refuse_below_box(alphas, betas, gammas, weight_errors=weight_errors,
                          sizes=sizes, errors=errors, counts=counts, free_beta=free_beta,
                          fix_alpha=fix_alpha, n_iter=n_iter)  # fmt: skip
    if not converged:
        budget = int(max_iter) - n_iter
        if budget <= 0 or not direct:
            raise EvidenceError(
                f"the evidence re-estimation did not converge in {max_iter} iterations; last "
                f"alpha={_out(alphas)!r}, beta={_out(betas)!r}: raise max_iter or tol",
                alpha=_out(alphas),
                beta=_out(betas),
                n_iter=int(max_iter),
            )
        alphas, betas, used = _direct(
            evaluate, best, weight_errors=weight_errors, sizes=sizes, errors=errors,
            counts=counts, free_alpha=not fix_alpha, free_beta=free_beta, tol=tol, budget=budget,
            iterations=n_iter,
        )  # fmt: skip
        n_iter += used
        history.append((_out(alphas), _out(betas)))
        value, gammas, group_gammas = evaluate(alphas, betas)
        method = "direct"
        # L-BFGS-B works on ln p, whose round-off leaves the precisions ~1e-7 (relative) from
        # the maximum; the fixed point, contracting there, takes them to tol. Only while it
        # contracts (where it oscillates or overshoots, the direct search's point stands).
        last = np.inf
        for _ in range(min(2 * SLOW, int(max_iter) - n_iter)):
            new_a, new_b, valid = update(alphas, betas, gammas, group_gammas)
            change = change_of(new_a, new_b, alphas, betas) if valid else np.inf
            if not change < last:
                break
            n_iter, last = n_iter + 1, change
            alphas, betas = new_a, new_b
            history.append((_out(alphas), _out(betas)))
            value, gammas, group_gammas = evaluate(alphas, betas)
            if change < tol:
                break
    if not fix_alpha:
        _check_determined(np.atleast_1d(gammas), sizes, alphas, betas, n_iter)
    return EvidenceResult(
        _out(alphas), _out(betas), float(gammas.sum()), n_iter, history, gammas, method,
        float(value), group_gammas,
    )  # fmt: skip


# A prior group whose weights the data determine this much less than the best-determined group's
# (γ_g/P_g against the largest γ_h/P_h) has no curvature to speak of: its α_g would be whatever
# the stopping rule left (1e-7 for an attention key projection under KFAC's positions="reduce",
# whose sensitivities sum to 0 over positions). Relative, because a huge temperature makes every
# γ tiny and still has an interior maximum.
UNDETERMINED = 1e-6


def _check_determined(gammas, sizes, alphas, betas, n_iter) -> None:
    """EvidenceBoundaryError if the data determine (almost) none of a prior group's weights."""
    fractions = gammas / np.maximum(np.asarray(sizes, np.float64), 1.0)
    low = np.flatnonzero(fractions < UNDETERMINED * fractions.max())
    if low.size == 0 or fractions.max() <= 0:
        return
    names = [f"alpha[{i}]" if gammas.size > 1 else "alpha" for i in low]
    raise EvidenceBoundaryError(
        f"the data determine none of the weights of {', '.join(names)} (γ = "
        f"{', '.join(f'{gammas[i]:.3g} of {int(sizes[i])}' for i in low)}): the curvature "
        "gives them no information, so the evidence sends their α towards 0 (reached "
        f"alpha={_out(alphas)!r}). Hold α (fix_alpha=True), put these weights in a group with "
        "others (a prior with fewer groups), or use a structure that sees their curvature",
        alpha=_out(alphas),
        beta=_out(betas),
        n_iter=n_iter,
        which=names,
    )


# The fixed point converges linearly: where its steps shrink by a factor ρ each, reaching tol
# from a step s takes ln(tol/s)/ln ρ more. With several prior groups ρ can be 0.8 or more
# (hundreds of iterations, each a decomposition of A for a full structure); the direct search
# (L-BFGS-B with the exact gradient) then needs a few tens of evaluations.
SLOW = 20


def _slow(steps: list, tol: float) -> bool:
    """Whether the fixed point, after at least ten steps, would need more than :data:`SLOW`
    further ones to reach ``tol`` at the rate of its last five."""
    if len(steps) < 10:
        return False
    first, last = steps[-5], steps[-1]
    if not (0 < last < first):
        return True  # not shrinking
    rate = (last / first) ** 0.25
    return np.log(tol / last) / np.log(rate) > SLOW


def _out(values):
    values = np.asarray(values, np.float64).reshape(-1)
    return float(values[0]) if values.size == 1 else values.copy()


BOX = 1e12  # the direct search's box: [max / BOX, max] for each precision (see _direct)


def _refuse_below_box(
    alphas, betas, gammas, *, weight_errors, sizes, errors, counts, free_beta, fix_alpha, n_iter
) -> None:
    """EvidenceBoundaryError for a fixed point with a free precision more than 12 decades
    (:data:`BOX`) below its bound, α_g ≤ P_g/(2E_Wg) or β_h ≤ N_h/(2E_h): the direct search's
    box ends there, and a stationary point beyond it (a likelihood tempered by T = 1e30:
    α ≈ 1e-15, γ ≈ 1e-14, a log evidence at round-off) is the edge of the space, α → 0, as
    the box's edge is for the direct search — never returned as an optimum."""
    low_a = (not fix_alpha) & (alphas * BOX < sizes / (2.0 * weight_errors))
    with np.errstate(divide="ignore", invalid="ignore"):
        low_b = free_beta & (betas * BOX < counts / (2.0 * errors))
    if not (np.any(low_a) or np.any(low_b)):
        return
    names = _precision_names(alphas.size, betas.size)
    low = [n for n, is_low in zip(names, np.r_[low_a, low_b], strict=True) if is_low]
    raise _edge_error(
        f"the evidence's maximum lies more than {np.log10(BOX):.0f} decades below its bound, "
        f"at alpha={_out(alphas)!r}, beta={_out(betas)!r}, where the data determine "
        f"γ = {float(np.sum(gammas)):.3g} weights: treated as the edge of the space, "
        f"{', '.join(low)} → 0.",
        low, alphas, betas, n_iter,
    )  # fmt: skip


def _precision_names(n_alpha: int, n_beta: int) -> list[str]:
    """ "alpha" or "alpha[g]" for each α, then "beta" or "beta[h]" for each β."""
    names = [f"alpha[{i}]" if n_alpha > 1 else "alpha" for i in range(n_alpha)]
    return names + [f"beta[{i}]" if n_beta > 1 else "beta" for i in range(n_beta)]


def _edge_error(message: str, names, alphas, betas, n_iter) -> EvidenceBoundaryError:
    """The error for precisions ``names`` whose maximum is the edge of the space (→ 0):
    ``message``, then what to do."""
    fixes = sorted({"fix_beta=True" if n.startswith("beta") else "fix_alpha=True" for n in names})
    return EvidenceBoundaryError(
        f"{message} The data do not determine "
        f"{'these precisions' if len(names) > 1 else 'it'}: hold it ({' / '.join(fixes)}), "
        "use a prior with fewer groups, or more data",
        alpha=_out(alphas),
        beta=_out(betas),
        n_iter=n_iter,
        which=list(names),
    )


def _direct(evaluate, best, *, weight_errors, sizes, errors, counts, free_alpha, free_beta, tol,
            budget, iterations):  # fmt: skip
    """L-BFGS-B on −ln p(D | α, β) in log coordinates, from ``best``; the box is
    [1e-12·max, max] with α_g ≤ P_g/(2E_Wg), β_h ≤ N_h/(2E_h) (the maximum lies below both:
    there the gradient points inwards). A maximum at the box's lower edge, with the evidence
    still growing towards it, is the edge of the space (:class:`EvidenceBoundaryError`).

    Each derivative is a difference of two terms that balance at the maximum,
    ∂/∂ln α_g = ½γ_g − α_g E_Wg and ∂/∂ln β_h = ½(N_h − γ_h) − β_h E_h, and both shrink with
    the precision: where the data determine almost none of a group's weights (γ_g → 0, e.g. a
    likelihood tempered by T = 1e30) the slope falls below an absolute tolerance long before
    the box's edge or a balance is reached. A stop where a derivative is not small against
    its own terms (relative to √tol) is no maximum: the search goes on from there with the
    tolerance scaled to those terms, until the terms balance or the edge is reached."""
    import scipy.optimize

    _, a0, b0 = best
    ga = a0.size
    with np.errstate(divide="ignore"):
        hi_b = np.where(free_beta, np.log(np.maximum(counts, 1e-300) / (2.0 * errors)), 0.0)
    hi = np.r_[np.log(sizes / (2.0 * weight_errors)), hi_b]
    x0 = np.r_[np.log(a0), np.log(b0)]
    free = np.r_[np.full(ga, free_alpha), free_beta]
    hi = np.where(free, np.maximum(hi, x0), x0)
    lo = np.where(free, hi - np.log(BOX), x0)
    x0 = np.clip(x0, lo, hi)

    def parts(z):
        """(ln p, the data's and the prior's terms of each derivative (free coordinates))."""
        x = x0.copy()
        x[free] = z
        a, b = np.exp(x[:ga]), np.exp(x[ga:])
        value, gammas, group_gammas = evaluate(a, b)
        pull = np.r_[0.5 * gammas, np.where(free_beta, 0.5 * (counts - group_gammas), 0.0)]
        push = np.r_[a * weight_errors, np.where(free_beta, b * errors, 0.0)]
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
    a, b = np.exp(x[:ga]), np.exp(x[ga:])
    _, grad = objective(res.x)
    names = [n for n, f in zip(_precision_names(ga, b.size), free, strict=True) if f]
    at_low = [
        names[i]
        for i, (v, lo_i, gr) in enumerate(zip(x[free], lo[free], grad, strict=True))
        if v <= lo_i + 1e-9 and gr > 0
    ]  # fmt: skip (gr is −∂ln p: > 0 means the evidence still grows towards the bound)
    if at_low:
        raise _edge_error(
            f"the evidence has no interior maximum: it keeps growing as {', '.join(at_low)} → 0 "
            f"(reached alpha={_out(a)!r}, beta={_out(b)!r}).",
            at_low, a, b, iterations + nit,
        )  # fmt: skip
    if not res.success and nit >= budget:
        raise EvidenceError(
            f"the evidence maximisation did not converge in {iterations + budget} iterations "
            f"(direct maximisation: {res.message}); last alpha={_out(a)!r}, beta={_out(b)!r}: "
            "raise max_iter or tol",
            alpha=_out(a),
            beta=_out(b),
            n_iter=iterations + nit,
        )
    return a, b, nit
