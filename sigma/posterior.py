"""The Laplace posterior as a value: a fitted structure, the prior, α, β and the data summary.

    A = D_α + Σ_h β_h C_h      (β_h: one precision per precision group of the outputs)

One group for a plain model (A = D_α + β C); one per output with one β per output; one per
head with a likelihood per head (:class:`sigma.likelihoods.Groups`: a regression head's β is
free, a classifier's is its 1/T). A :class:`Posterior` never changes:
:meth:`Posterior.replace` returns another one at new precisions, checked (β finite with a
finite noise variance 1/β, A positive definite to round-off), and shares the fitted structure —
changing α or β never refits. The evidence (:mod:`sigma.evidence.posterior`), the predictive
(:mod:`sigma.predictive`) and held-out tuning (:mod:`sigma.tuning`) are functions of it;
:class:`sigma.Laplace` holds the current one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sigma import evidence
from sigma._checks import as_array, check_precision, check_precisions, ill_conditioned_hint
from sigma.likelihoods import Groups
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
    data_error : the likelihood's data term E (½ Σ (f − t)² for regression, the cross-entropy
    for classification), summed; data_errors : ½ Σ_n (f_nk − t_nk)² per output (K,)
    (regression) or None; group_errors : the data term of each precision group (G,) (None:
    one group, ``data_error``); output_scale : the RMS of the outputs (for telling
    interpolation from noise); batch_size : as fitted (None: automatic); input_scale : the
    largest |x| of the float training inputs (arrays; None for a dataset or a loaded
    posterior), named when an ill-conditioned A is refused.
    """

    n_data: int
    n_outputs: int
    data_error: float
    data_errors: np.ndarray | None
    output_scale: float
    batch_size: int | None = None
    input_scale: float | None = None
    group_errors: np.ndarray | None = None


@dataclass(frozen=True)
class Posterior:
    """N(w*, A⁻¹) over the selected weights, at precisions ``alpha`` (G_α,) and ``beta``
    (G_β,), A = D_α + Σ_h β_h C_h.

    structure : the fitted :class:`~sigma.structures.Structure` (C_h over the selected
    weights, one per precision group); prior : the :class:`~sigma.priors.Prior` groups;
    selection : the :class:`~sigma.weights.Selection`; likelihood, curvature, negative,
    output_layout : as fitted; summary : the :class:`DataSummary`; weight_errors : E_Wg per
    prior group (G_α,); groups : the likelihood's precision groups; alpha : (G_α,) float64;
    beta : (G_β,) float64 — a noise group's β, a classifier's 1/T (its temperature), 1 for a
    heteroscedastic head.
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
    beta: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(1))
    groups: Groups | None = None

    def __post_init__(self):
        if self.groups is None:
            k = self.summary.n_outputs
            object.__setattr__(self, "groups", self.likelihood.groups(k))
        object.__setattr__(
            self,
            "beta",
            np.broadcast_to(np.asarray(self.beta, np.float64), (self.n_groups,)).copy(),
        )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """P, the number of weights the posterior covers."""
        return int(self.structure.n_params)

    @property
    def n_groups(self) -> int:
        """G_β, the number of precision groups of the outputs."""
        return self.groups.n_groups

    @property
    def weight_error(self) -> float:
        """E_W = ½ ‖w‖² over the posterior's weights."""
        return float(self.weight_errors.sum())

    @property
    def group_errors(self) -> np.ndarray:
        """E_h, the data term of each precision group, (G_β,)."""
        if self.summary.group_errors is not None:
            return np.asarray(self.summary.group_errors, np.float64)
        return np.array([self.summary.data_error])

    @property
    def group_counts(self) -> np.ndarray:
        """N_h, the observed values of each precision group: N times its outputs, (G_β,)."""
        return self.summary.n_data * self.groups.sizes().astype(np.float64)

    @property
    def n_obs(self) -> int:
        return self.summary.n_data * self.summary.n_outputs

    @property
    def noise_beta(self) -> np.ndarray:
        """The noise precision of every output, (K,): β of its group (for the noise term 1/β
        of a regression output's σ²)."""
        return self.beta[self.groups.outputs]

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

    def check_beta(self, value) -> np.ndarray:
        """β as an array (G_β,): a number sets every free (noise) group — or, without one,
        the one group —, an array one value per group. ValueError naming ``beta``."""
        free = self.groups.free
        if np.ndim(value) == 0:
            b = check_precision(value, "beta", allow_zero=False)
            if not free.any():
                if self.n_groups != 1:
                    raise ValueError(no_beta(self.likelihood))
                return np.array([b])
            return np.where(free, b, self.beta)
        beta = as_array(value, "beta", ndim=1).astype(np.float64)
        g = self.n_groups
        if beta.shape != (g,) or not np.all(beta > 0):
            what = "output" if self.groups.names[0].startswith("output") else "precision group"
            raise ValueError(
                f"beta as an array must hold one positive precision per {what}, shape ({g},) "
                f"for {list(self.groups.names)[:6]}, got {beta.shape} with minimum "
                f"{beta.min() if beta.size else None}"
            )
        return beta

    def alpha_weights(self, alpha=None):
        """α as the structures take it: a float, or α of each weight (P,)."""
        return self.prior.per_weight(self.alpha if alpha is None else alpha)

    def operator(self, beta=None):
        """(structure, b) with A = D_α + b·C_structure at the posterior's β (or ``beta``):
        the structure itself for one precision group, Σ_h β_h C_h for several."""
        return self.structure.combine(self.beta if beta is None else beta)

    def replace(self, *, alpha=None, beta=None) -> Posterior:
        """This posterior at other precisions (None: keep), checked; ValueError naming the
        precision that is wrong, or saying why A would not be positive definite."""
        alpha = self.alpha if alpha is None else self.check_alpha(alpha)
        beta = self.beta if beta is None else self.check_beta(beta)
        check_noise_variance(beta)
        structure, b = self.operator(beta)
        self.check_positive_definite(alpha, b, structure)
        return dataclasses.replace(self, alpha=alpha, beta=beta)

    def check_positive_definite(self, alpha, beta, structure=None) -> None:
        """Refuse A = D_α + βC unless its smallest eigenvalue is clearly positive: above
        round-off of its largest, so σ is never 1/round-off. With several groups the bounds
        are Weyl's: between min α + β λ_min(C) and max α + β λ_max(C)."""
        if structure is None:
            structure, beta = self.operator()
        s = structure
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
        lam = self.operator()[0].eigenvalues
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
