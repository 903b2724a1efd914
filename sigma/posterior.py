"""The Laplace posterior as a value: a fitted structure, the prior, α, β and the data summary.

    A = D_α + β C        (one β)            A = D_α + Σ_k β_k C_k     (one β per output)

A :class:`Posterior` never changes: :meth:`Posterior.replace` returns another one at new
precisions, checked (β finite with a finite noise variance 1/β, A positive definite to
round-off), and shares the fitted structure — changing α or β never refits. The evidence
(:mod:`sigma.evidence.posterior`), the predictive (:mod:`sigma.predictive`) and held-out
tuning (:mod:`sigma.tuning`) are functions of it; :class:`sigma.Laplace` holds the current one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sigma import evidence
from sigma._checks import as_array, check_precision, check_precisions, ill_conditioned_hint
from sigma.outputs import OutputLayout
from sigma.priors import Prior

NO_BETA = (
    "beta is fixed at 1 for likelihood='classification' (the cross-entropy has no noise "
    "precision; beta reads 1/temperature for a tempered likelihood, set by temperature=); "
    "only alpha can be set or optimised"
)


def no_beta(likelihood) -> str:
    """Why this likelihood has no β (its own message, e.g. the heteroscedastic one's)."""
    return getattr(likelihood, "beta_message", NO_BETA)


@dataclass(frozen=True)
class DataSummary:
    """What the evidence needs of the training data (not the data themselves).

    n_data : N samples; n_outputs : K outputs per sample (all outputs flattened);
    data_error : E_D (½ Σ (f − t)² for regression, the cross-entropy for classification);
    data_errors : E_D per output (K,) (regression) or None; output_scale : the RMS of the
    outputs (for telling interpolation from noise); batch_size : as fitted (None: automatic);
    input_scale : the largest |x| of the float training inputs (arrays; None for a dataset or
    a loaded posterior), named when an ill-conditioned A is refused.
    """

    n_data: int
    n_outputs: int
    data_error: float
    data_errors: np.ndarray | None
    output_scale: float
    batch_size: int | None = None
    input_scale: float | None = None


@dataclass(frozen=True)
class Posterior:
    """N(w*, A⁻¹) over the selected weights, at precisions ``alpha`` (G,) and ``beta``.

    structure : the fitted :class:`~sigma.structures.Structure` (C over the selected weights);
    prior : the :class:`~sigma.priors.Prior` groups; selection : the
    :class:`~sigma.weights.Selection`; likelihood, curvature, negative, output_layout : as
    fitted; summary : the :class:`DataSummary`; weight_errors : E_Wg per group (G,);
    alpha : (G,) float64; beta : a float or (K,) (one per output; for a classifier 1/T, its
    likelihood's temperature: A = D_α + C/T); weighted : the structure
    holding Σ_k β_k C_k when β is per output (else None); blocks : C_k (K, P, P) once computed.
    """

    structure: object
    prior: Prior
    selection: object
    likelihood: object
    curvature: str
    negative: str
    output_layout: OutputLayout
    summary: DataSummary
    weight_errors: np.ndarray
    alpha: np.ndarray
    beta: float | np.ndarray = 1.0
    weighted: object = None
    blocks: np.ndarray | None = None

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """P, the number of weights the posterior covers."""
        return int(self.structure.n_params)

    @property
    def weight_error(self) -> float:
        """E_W = ½ ‖w‖² over the posterior's weights."""
        return float(self.weight_errors.sum())

    @property
    def tempered_error(self) -> float:
        """The data term of the evidence: E_D for regression, the cross-entropy/T (β E) for a
        classifier (β holds 1/T there)."""
        e = self.summary.data_error
        return e if self.likelihood.has_beta else float(self.beta) * e

    @property
    def n_obs(self) -> int:
        return self.summary.n_data * self.summary.n_outputs

    # -- precisions ----------------------------------------------------------------------------
    def check_alpha(self, value, name: str = "alpha") -> np.ndarray:
        """α as an array (G,): a number for every group, or one per group (ValueError naming
        ``name`` otherwise)."""
        alpha = check_precisions(value, name, allow_zero=True)
        g = self.prior.n_groups
        if alpha.ndim == 0:
            return np.full(g, float(alpha))
        if alpha.shape != (g,):
            raise ValueError(
                f"{name} must be a number or an array with one prior precision per group, "
                f"shape ({g},) for the groups {list(self.prior.names)[:6]}"
                f"{'…' if g > 6 else ''}, got shape {alpha.shape}"
            )
        return alpha.astype(np.float64)

    def alpha_weights(self, alpha=None):
        """α as the structures take it: a float, or α of each weight (P,)."""
        return self.prior.per_weight(self.alpha if alpha is None else alpha)

    def operator(self):
        """(structure, β) with A = D_α + β C_structure (one β per output: Σ β_k C_k, 1)."""
        if self.weighted is not None:
            return self.weighted, 1.0
        return self.structure, self.beta

    def replace(self, *, alpha=None, beta=None) -> Posterior:
        """This posterior at other precisions (None: keep), checked; ValueError naming the
        precision that is wrong, or saying why A would not be positive definite."""
        alpha = self.alpha if alpha is None else self.check_alpha(alpha)
        if beta is None:
            beta = self.beta
        elif not self.likelihood.has_beta and np.ndim(beta) != 0:
            raise ValueError(no_beta(self.likelihood))
        if np.ndim(beta) == 0:
            beta = check_precision(beta, "beta", allow_zero=False)
            check_noise_variance(beta)
            self.check_positive_definite(alpha, beta)
            return dataclasses.replace(self, alpha=alpha, beta=beta, weighted=None)
        k = self.summary.n_outputs
        beta = as_array(beta, "beta", ndim=1).astype(np.float64)
        if beta.shape != (k,) or not np.all(beta > 0):
            raise ValueError(
                f"beta as an array must hold one positive precision per output, shape "
                f"({k},), got {beta.shape} with minimum {beta.min() if beta.size else None}"
            )
        check_noise_variance(beta)
        if not self.prior.scalar:
            raise ValueError(
                "one beta per output needs prior='scalar' (one alpha); got prior groups "
                f"{list(self.prior.names)[:6]}"
            )
        if self.blocks is None:
            raise ValueError("one beta per output needs the per-output curvature blocks C_k")
        weighted = self.structure.reweighted(np.einsum("k,kpq->pq", beta, self.blocks))
        self.check_positive_definite(alpha, 1.0, weighted)
        return dataclasses.replace(self, alpha=alpha, beta=beta, weighted=weighted)

    def with_blocks(self, blocks) -> Posterior:
        """The same posterior with the per-output curvature blocks C_k (K, P, P) attached."""
        return dataclasses.replace(self, blocks=blocks)

    def check_positive_definite(self, alpha, beta, structure=None) -> None:
        """Refuse A = D_α + βC unless its smallest eigenvalue is clearly positive: above
        round-off of its largest, so σ is never 1/round-off. With several groups the bounds
        are Weyl's: between min α + β λ_min(C) and max α + β λ_max(C)."""
        s = structure or self.structure
        if s.clearly_positive_definite(self.alpha_weights(alpha), beta):
            return
        a_min, a_max = float(np.min(alpha)), float(np.max(alpha))
        lam = s.eigenvalues
        top = a_max + beta * float(np.abs(lam).max()) if lam.size else a_max
        smallest = a_min + beta * float(lam.min()) if lam.size else a_min
        if lam.size < self.n_params:
            smallest = min(smallest, a_min)
        if smallest > evidence.ROUNDOFF * top:
            return
        which = "alpha" if self.prior.scalar else "every group's alpha"
        if lam.size and lam.min() < -evidence.ROUNDOFF * float(np.abs(lam).max()):
            hint = (
                f"the {self.curvature} curvature has negative eigenvalues (down to "
                f"{float(lam.min()):.4g}): use curvature='ggn' (always positive semi-definite), "
                f"negative='clip', or {which} > {-beta * float(lam.min()):.4g}"
            )
        elif 0 < a_min <= evidence.ROUNDOFF * top:  # α is lost in the round-off of βC
            scale = self.summary.input_scale
            hint = ill_conditioned_hint(
                top,
                a_min,
                None if scale is None else np.array([scale]),
                self.prior.scalar,
                tempered=not self.likelihood.has_beta,
            )
        elif lam.size < self.n_params:
            hint = (
                f"use {which} > 0 (structure {s.name!r} keeps {lam.size} of the "
                f"{self.n_params} eigenvalues of C and takes the others as zero)"
            )
        else:
            hint = f"C is singular (it has zero eigenvalues), so use {which} > 0"
        shown = f"{a_min:g}" if self.prior.scalar else f"min {a_min:g}"
        raise ValueError(
            f"the posterior precision A = alpha*I + beta*C is not positive definite "
            f"(smallest eigenvalue {smallest:.4g} with alpha={shown}, beta={beta:g}, "
            f"curvature={self.curvature!r}): {hint}"
        )

    def alpha_from_zero(self) -> float:
        """A proper starting α from α = 0: γ/(2E_W) with γ the rank of the curvature."""
        if not self.weight_error > 0:
            return 1.0
        lam = self.structure.eigenvalues
        rank = float(np.sum(lam > evidence.ROUNDOFF * np.abs(lam).max())) if lam.size else 1.0
        return max(rank, 1.0) / (2.0 * self.weight_error)


def check_noise_variance(beta) -> None:
    """1/β, the noise variance in σ², must be a float64 (β of 2e-311 makes it inf)."""
    smallest = 1.0 / np.finfo(np.float64).max
    if np.any(np.asarray(beta) < smallest):
        raise ValueError(
            f"beta must be at least {smallest:.3g} (its reciprocal, the noise variance, "
            f"overflows float64 below that), got {np.min(beta):.3g}"
        )
