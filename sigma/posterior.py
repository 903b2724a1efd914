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

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np

from sigma import evidence, fitting, saving
from sigma._checks import (
    as_array,
    check_inputs,
    check_positive_int,
    check_precision,
    check_precisions,
    check_seed,
    ill_conditioned_hint,
)
from sigma._grappler import own_calls
from sigma.likelihoods import Groups
from sigma.outputs import OutputLayout
from sigma.priors import Prior
from sigma.progress import mode as progress_mode
from sigma.summary import DataSummary, frozen_state


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
    # the model it belongs to, at the weights (and non-trainable state) it was fitted at
    model: object = dataclasses.field(default=None, repr=False, compare=False)
    w_map: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    state: list | None = dataclasses.field(default=None, repr=False, compare=False)
    # the training data (arrays or a dataset; None once loaded), for refitting one β per output
    data: object = dataclasses.field(default=None, repr=False, compare=False)
    # the checked training targets (N, K) that came with array data (None for a dataset)
    targets: object = dataclasses.field(default=None, repr=False, compare=False)
    memory_estimate: int | None = None  # bytes the structure was estimated to need
    progress: bool | None = None  # bars for long work (sigma.progress)
    evidence_result: object = dataclasses.field(default=None, repr=False, compare=False)
    prior_result: dict | None = dataclasses.field(default=None, repr=False, compare=False)
    # a classifier's link to probabilities when none is asked for (optimize_prior sets the
    # one it tuned with; sigma.classification.METHODS)
    link: str = "probit"

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
                    self.likelihood.require_beta()
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
        precision that is wrong, or saying why A would not be positive definite. Its
        ``evidence_result`` and ``prior_result`` are kept only if the precisions are
        unchanged: at others, they no longer say how these were reached."""
        alpha = self.alpha if alpha is None else self.check_alpha(alpha)
        beta = self.beta if beta is None else self.check_beta(beta)
        check_noise_variance(beta)
        structure, b = self.operator(beta)
        self.check_positive_definite(alpha, b, structure)
        if np.array_equal(alpha, self.alpha) and np.array_equal(beta, self.beta):
            return dataclasses.replace(self, alpha=alpha, beta=beta)
        return dataclasses.replace(
            self, alpha=alpha, beta=beta, evidence_result=None, prior_result=None
        )

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
                tempered=self.likelihood.tempered or (None if not self.likelihood.noise else False),
                alpha_max=a_max,
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

    @property
    def temperature(self) -> float:
        """The likelihood's temperature T (a classifier's: p(y | f)^(1/T); else 1)."""
        tempered = np.array(self.groups.kinds) == "tempered"
        return 1.0 / float(self.beta[tempered][0]) if tempered.any() else 1.0

    def with_temperature(self, value) -> Posterior:
        """This posterior at temperature T (its classifier outputs' β = 1/T; nothing refitted)."""
        value = fitting.check_temperature(value, self.likelihood)
        tempered = np.array(self.groups.kinds) == "tempered"
        if not tempered.any():
            return self
        return self.replace(beta=np.where(tempered, 1.0 / value, self.beta))

    # -- the model ------------------------------------------------------------------------------
    def check_weights_unchanged(self) -> None:
        """ValueError when the model's weights (or its non-trainable state) changed since the
        fit: the posterior belongs to the weights it was fitted at."""
        from sigma.curvature import engine

        if not np.array_equal(engine(self.model).flat_weights(), self.w_map) or any(
            not np.array_equal(a, b)
            for a, b in zip(frozen_state(self.model), self.state, strict=True)
        ):
            raise ValueError(
                "model weights (or its non-trainable state, e.g. BatchNorm statistics) changed "
                "since this Laplace was fitted: build a new Laplace"
            )

    def inputs(self, x, name: str = "x"):
        """x checked against the model's inputs (and the weights against the fit's)."""
        self.check_weights_unchanged()
        return check_inputs(self.model, x, name)

    # -- the predictive -----------------------------------------------------------------------------
    def predict(self, x, *, noise=True, batch_size=None, method=None, n_samples=1000,
                seed=0, split=False):  # fmt: skip
        """The likelihood's prediction at inputs x (see :meth:`sigma.Laplace.predict`;
        ``method`` None: :attr:`link`)."""
        from sigma import predictive
        from sigma.classification import check_method

        method = self.link if method is None else method

        for flag, flag_name in ((noise, "noise"), (split, "split")):
            check_flag(flag, flag_name)
        with self._calls():
            return predictive.predict(
                self, self.model, self.inputs(x), batch_size=batch_size, noise=noise,
                split=split, method=check_method(method), n_samples=check_samples(n_samples),
                seed=check_seed(seed),
            )  # fmt: skip

    def predict_proba(self, x, *, method=None, n_samples=1000, seed=0, batch_size=None):
        """Class probabilities at inputs x (see :meth:`sigma.Laplace.predict_proba`)."""
        self.likelihood.probabilities(None)  # a classifier's, or refused
        prediction = self.predict(
            x, method=method, n_samples=n_samples, seed=seed, batch_size=batch_size
        )
        return self.likelihood.probabilities(prediction)

    def predictive_covariance(self, x, *, noise=True, batch_size=None) -> np.ndarray:
        """Σ(x) = β⁻¹ I + J A⁻¹ Jᵀ (N, K, K) (see :meth:`sigma.Laplace.predictive_covariance`)."""
        from sigma import predictive

        with self._calls():
            return predictive.covariance(
                self, self.model, self.inputs(x), noise=noise, batch_size=batch_size
            )

    # -- the evidence -----------------------------------------------------------------------------
    @property
    def gammas(self) -> np.ndarray:
        """γ_g = P_g − α_g Tr_g(A⁻¹) per prior group (G,)."""
        from sigma.evidence import posterior as posterior_evidence

        return posterior_evidence.gammas(self)

    @property
    def gamma(self) -> float:
        """γ = Σ_g γ_g, the effective number of well-determined parameters."""
        from sigma.evidence import posterior as posterior_evidence

        return posterior_evidence.gamma(self)

    @property
    def beta_gammas(self) -> np.ndarray:
        """γ_h = β_h Tr(A⁻¹ C_h) per precision group (Σ_h γ_h = γ)."""
        from sigma.evidence import posterior as posterior_evidence

        return posterior_evidence.group_gammas(self)

    def log_evidence(self, alpha=None, beta=None):
        """ln p(D | α, β) (see :meth:`sigma.Laplace.log_evidence`)."""
        from sigma.evidence import posterior as posterior_evidence

        self.check_weights_unchanged()
        return posterior_evidence.log_evidence(self, alpha, beta)

    def log_evidence_parts(self) -> dict:
        """ln p(D | α, β) as its data fit and Occam factor (see
        :meth:`sigma.Laplace.log_evidence_parts`)."""
        from sigma.evidence import posterior as posterior_evidence

        self.check_weights_unchanged()
        return posterior_evidence.log_evidence_parts(self)

    def optimize_evidence(self, *, fix_alpha=False, fix_beta=False, per_output=None, tol=1e-8,
                          max_iter=1000, confidence_check=True) -> Posterior:  # fmt: skip
        """The posterior at the maximum of the evidence, its ``evidence_result`` saying how
        it was reached (see :meth:`sigma.Laplace.optimize_evidence`). ``confidence_check``
        (a classifier): warn when its predictive is less confident than the network on the
        training data (:func:`sigma.tuning.check_confidence`)."""
        from sigma import tuning
        from sigma.evidence import posterior as posterior_evidence

        self.check_weights_unchanged()
        for flag, name in ((fix_alpha, "fix_alpha"), (fix_beta, "fix_beta"),
                           (confidence_check, "confidence_check")):  # fmt: skip
            check_flag(flag, name)
        if per_output is not None:
            check_flag(per_output, "per_output", "True, False or None")
        max_iter = check_positive_int(max_iter, "max_iter")
        tol = check_precision(tol, "tol", allow_zero=False)
        post = self
        if per_output:
            self.likelihood.require_beta()
        if per_output is not None and per_output != getattr(self.likelihood, "per_output", False):
            with self._calls():
                post = fitting.regroup(self, per_output=per_output)
        best, result = posterior_evidence.optimize(
            post, fix_alpha=fix_alpha, fix_beta=fix_beta, tol=tol, max_iter=max_iter,
            eps=float(np.finfo(str(self.w_dtype)).eps),
        )  # fmt: skip
        best = dataclasses.replace(best, evidence_result=result)
        if confidence_check:
            with self._calls():
                tuning.check_confidence(best)
        return best

    def optimize_prior(self, x_val, y_val, *, metric="nll", beta=True, temperature=None,
                       method="probit", span=1e4, tol=1e-3, max_iter=100) -> Posterior:  # fmt: skip
        """The posterior at the best value of a held-out metric, its ``prior_result``
        recording the search (see :meth:`sigma.Laplace.optimize_prior`)."""
        from sigma import tuning

        self.check_weights_unchanged()
        with self._calls():
            best, record = tuning.optimize_prior(
                self, self.model, x_val, y_val, metric=metric, beta=beta,
                temperature=temperature, method=method, span=span, tol=tol, max_iter=max_iter,
            )  # fmt: skip
        return dataclasses.replace(best, prior_result=record)

    def conformalize(self, x_cal, y_cal, *, level=None, randomised=True, seed=0):
        """A calibrated predictor by split conformal prediction (:mod:`sigma.conformal`)."""
        from sigma import conformal

        with self._calls():
            return conformal.calibrate(
                self, x_cal, y_cal, level=level, randomised=randomised, seed=seed
            )

    # -- saving and serving -----------------------------------------------------------------------
    def save(self, path):
        """Write this posterior to ``path`` atomically (:mod:`sigma.saving`); returns the path."""
        self.check_weights_unchanged()
        return saving.save(self, path)

    def to_keras(self, *, name=None):
        """A ``keras.Model`` serving this posterior's predictive (:mod:`sigma.serving`)."""
        from sigma import serving

        self.check_weights_unchanged()
        return serving.to_keras(self.model, self, name=name)

    @property
    def w_dtype(self) -> str:
        """The dtype of the model's trainable weights."""
        return str(self.model.trainable_variables[0].dtype)

    def _calls(self):
        """sigma's options for its own calls on the model (:func:`sigma._grappler.own_calls`)
        and the posterior's progress bars."""
        return calls(self.model, self.progress)

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


@contextlib.contextmanager
def calls(model, progress=None):
    """sigma's graph-optimiser options for the model's graphs and the bars of ``progress``."""
    with own_calls(model), progress_mode(progress):
        yield


def check_flag(value, name: str, allowed: str = "True or False") -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_samples(n_samples) -> int:
    from sigma.classification import MAX_SAMPLES

    n_samples = check_positive_int(n_samples, "n_samples")
    if n_samples > MAX_SAMPLES:
        raise ValueError(f"n_samples must be at most {MAX_SAMPLES:.0e}, got {n_samples}")
    return n_samples


# -- the two ways to a posterior: fitting one, and loading a saved one ---------------------------
def fit(model, x, y=None, **options) -> Posterior:
    fields, alpha, beta = fitting.fitted(model, x, y, **options)
    return Posterior(**fields).replace(alpha=alpha, beta=beta)


def load(path, model) -> Posterior:
    """The :class:`Posterior` saved in ``path`` (:mod:`sigma.saving`), for ``model`` — refused
    (ValueError naming the difference) unless it is the model it was fitted on."""
    fields, alpha, beta = saving.read_posterior(path, model)
    return Posterior(**fields).replace(alpha=alpha, beta=beta)


def _fit_doc() -> str:
    doc = fitting.fitted.__doc__ or ""
    return (
        "The Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras model, fitted\n"
        "    once: a :class:`Posterior` (a value: its methods predict, give the evidence and\n"
        "    return new posteriors at other precisions; nothing is refitted).\n\n    "
        + doc[doc.index("Parameters") :]
    )


fit.__doc__ = _fit_doc()
fit.__signature__ = inspect.signature(fitting.fitted).replace(return_annotation="Posterior")
