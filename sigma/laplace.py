"""The Laplace approximation around trained weights: error bars σ for every output.

    A = D_α + β C        C = Gauss–Newton G or exact Hessian H of E_D (docs/math.md)
    σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x),   g_k(x) = ∂f_k(x)/∂w at the trained weights

D_α = α I for one prior precision, or α_g on each group of weights (``prior=``).

The facade over the layers below it: a structure (:mod:`sigma.structures`) holds C, the
model's curvature engine (:mod:`sigma.curvature`) computes it, the evidence for α, β (and their
re-estimation) is :mod:`sigma.evidence`, the prior groups :mod:`sigma.priors`, class
probabilities for ``likelihood="classification"`` :mod:`sigma.classification`.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np
import tensorflow as tf

from sigma import (
    conformal,
    evidence,
    heteroscedastic,
    likelihoods,
    metrics,
    saving,
    serving,
    structures,
)
from sigma._checks import (
    as_array,
    check_finite_outputs,
    check_inputs,
    check_model,
    check_positive_int,
    check_precision,
    check_precisions,
    check_seed,
    ill_conditioned_hint,
    model_dtype,
)
from sigma._checks import n_samples as sample_count
from sigma.classification import MAX_SAMPLES, check_logits, check_method, probabilities
from sigma.curvature import engine, prepare
from sigma.curvature.accumulate import (
    ArrayBatches,
    check_dataset,
    current_strategy,
    first_samples,
    is_dataset,
    prepare_dataset,
)
from sigma.outputs import OutputLayout
from sigma.priors import Prior, build_prior, owners_of
from sigma.structures import Structure, fit_structure
from sigma.weights import from_index as weights_from_index
from sigma.weights import select

CURVATURES = ("ggn", "hessian")
NEGATIVE = ("keep", "clip")
PRIOR_METRICS = {
    "regression": ("nll",),
    "classification": ("nll", "brier", "ece"),
    "heteroscedastic": ("nll",),
}
# Residuals below this many units of the model dtype's precision (relative to the outputs)
# are round-off: the network interpolates its training data and β has no finite optimum.
INTERPOLATION = 100
_NO_BETA = (
    "beta is fixed at 1 for likelihood='classification' (the cross-entropy has no noise "
    "precision; beta reads 1/temperature for a tempered likelihood, set by temperature=); "
    "only alpha can be set or optimised"
)


class Laplace:
    """Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras model.

    Parameters
    ----------
    model : keras.Model, built and trained; f(x) ∈ R^K per sample.
    x : array (N, ...) of training inputs, matching the model's input shape; or a
        ``tf.data.Dataset`` yielding ``(x, y)`` batches (then ``y`` is None). Every streaming
        structure (all four built in) consumes the dataset batch by batch.
    y : array (N, K) of training targets.
    curvature : "ggn" (Gauss–Newton, always PSD) or "hessian" (exact, nested tapes).
    weights : which weights the posterior covers (:mod:`sigma.weights`): "all" (default),
        "last_layer" (the last Dense layer's), a list of the model's trainable variables (e.g.
        Keras' LoRA adapters), or a boolean mask per trainable variable; the others are held
        at their trained values and P is the number selected.
    structure : how C is stored: a registered name (:mod:`sigma.structures`; "full": P×P,
        "diag": the exact GGN diagonal, "kfac": Kronecker factors per Dense/Conv layer,
        "lowrank": top-k eigenpairs by block Lanczos (+ the exact diagonal of the rest); see
        README "Structures and layers") or an unfitted :class:`~sigma.structures.Structure`.
        "last_layer" stands for ``weights="last_layer", structure="full"``.
    structure_options : keyword arguments for the structure's constructor, e.g.
        ``{"rank": 50}`` for "lowrank".
    prior : the groups of weights that share a prior precision (:mod:`sigma.priors`):
        "scalar" (one α), "layer" (one α per layer), "variable" (one per trainable variable:
        kernel and bias apart), or an integer array (P,) of group ids 0 … G−1 (one group per
        weight: automatic relevance determination).
    alpha : prior precision α ≥ 0 (w ~ N(0, α⁻¹ I)); with several groups a number (all groups)
        or an array (G,) in the order of :attr:`prior_groups`.
    beta : noise precision β > 0 (t ~ N(f, β⁻¹ I)), or a (K,) array with one β_k per output
        (A = α I + Σ_k β_k C_k, ``curvature="ggn"``, ``structure="full"``, one α). Fixed at 1
        for ``likelihood="classification"``.
    likelihood : "regression" (squared error, y (N, K)) or "classification" (softmax
        cross-entropy on linear logits; y one-hot (N, K) or integer labels (N,); a model with
        one logit is a binary classifier, Bernoulli with a sigmoid link, y labels 0/1) or
        "heteroscedastic" (a Gaussian NLL with the model's own noise: 2K outputs [μ | ln σ²],
        y (N, K); or :class:`sigma.likelihoods.Heteroscedastic` for another parameterisation;
        no β; :mod:`sigma.heteroscedastic`).
    temperature : T > 0, classification only: the tempered likelihood p(y | f)^(1/T), exact
        in the curvature (C/T, i.e. A = D_α + C/T) and in the evidence (cross-entropy/T);
        :attr:`beta` then reads 1/T. T < 1 sharpens the likelihood (less weight
        uncertainty), T > 1 flattens it. Default 1 (the plain likelihood).
    negative : what to do with negative eigenvalues of the exact Hessian: "keep" them (A must
        still be positive definite; the evidence refuses them) or "clip" them to zero (C → its
        positive semi-definite part, for predictions and evidence alike, with a warning saying
        how many and how large).
    batch_size : samples per batch when accumulating the curvature (default: automatic; a
        dataset is re-batched to it when given).
    strategy : a ``tf.distribute.Strategy`` to accumulate the curvature under (per-replica sums
        reduced); default: the strategy whose ``scope()`` is active, if any.
    max_memory : the memory the structure may use, bytes or a string like "2GB" (default: 80%
        of the memory available); a structure estimated to need more is refused before any
        large allocation, with :class:`sigma.memory.InsufficientMemoryError` naming structures
        that fit.
    progress : show progress bars while accumulating.

    Raises ValueError for bad input and when A is not positive definite.

    Evidence: :meth:`log_evidence`, :meth:`optimize_evidence`, :attr:`gamma`,
    :attr:`gammas`; held-out tuning: :meth:`optimize_prior`. Classification:
    :meth:`predict_proba` (``predict`` returns the same for a classifier).
    """

    def __init__(
        self,
        model,
        x,
        y=None,
        *,
        likelihood: str = "regression",
        temperature: float = 1.0,
        curvature: str = "ggn",
        structure: str | Structure = "full",
        weights="all",
        prior="scalar",
        alpha=1.0,
        beta=1.0,
        batch_size: int | None = None,
        negative: str = "keep",
        structure_options: dict | None = None,
        strategy=None,
        max_memory: int | str | None = None,
        progress: bool = False,
    ):
        if not isinstance(curvature, str) or curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        structure, weights = structures.resolve(structure, weights)
        if isinstance(structure, Structure):
            if structure_options is not None and not isinstance(structure_options, dict):
                raise ValueError(
                    "structure_options must be a dict of keyword arguments, got "
                    f"{type(structure_options).__name__}"
                )
            if structure_options:
                raise ValueError("structure_options apply to a structure name, not an instance")
        else:
            structure = structures.get(structure).from_options(structure_options)
        if curvature not in structure.curvatures:
            others = sorted(n for n, c in Structure.registry.items() if curvature in c.curvatures)
            supported = " or ".join(f"curvature={c!r}" for c in structure.curvatures)
            raise ValueError(
                f"structure={structure.name!r} supports {supported} only, got "
                f"curvature={curvature!r}: use {supported}, or structure={others} for the "
                f"{curvature} of a small model"
            )
        if not isinstance(negative, str) or negative not in NEGATIVE:
            raise ValueError(f"negative must be one of {NEGATIVE}, got {negative!r}")
        check_precisions(alpha, "alpha", allow_zero=True)
        _check_flag(progress, "progress")
        self.likelihood = likelihoods.get(likelihood)
        check_model(model)
        self.selection = select(model, weights)
        structure = structure.on(self.selection)
        if not is_dataset(x):
            x = check_inputs(model, x)
            self.output_layout = engine(model).output_layout(x)
        else:
            check_dataset(x, model)
            first = check_inputs(model, first_samples(x, 1), "x (dataset batch 0)")
            self.output_layout = engine(model).output_layout(first)
        # one softmax head per output for a classifier with several outputs
        self.likelihood = likelihoods.get(self.likelihood, self.output_layout)
        heads = self.likelihood.heads
        if not self.likelihood.has_beta and not (
            isinstance(beta, numbers.Real) and float(beta) == 1.0
        ):
            raise ValueError(_no_beta(self.likelihood))
        if np.ndim(beta) == 0:
            check_precision(beta, "beta", allow_zero=False)
        temperature = _check_temperature(temperature, self.likelihood)
        if not self.likelihood.has_beta:
            beta = 1.0 / temperature  # the tempered likelihood's curvature is C/T
        self._beta, self._weighted, self._blocks = 1.0, None, None
        if is_dataset(x):
            if y is not None:
                raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
            x, n, k, e_d, e_dk, square = prepare_dataset(
                model, x, self.likelihood, batch_size=batch_size, layout=self.output_layout
            )
            if not self.likelihood.has_beta:
                first = tf.nest.map_structure(lambda t: t.numpy(), next(iter(x))[0])
                if self.likelihood.name == "heteroscedastic":
                    heteroscedastic.check_heads(
                        model, engine(model).outputs(first), self.likelihood, self.output_layout
                    )
                else:
                    check_logits(model, engine(model).outputs(first), heads)
        else:
            if y is None:
                raise ValueError(
                    "y is required when x is an array: pass the training targets, shape (N, K) "
                    "(or integer labels (N,) for classification), or pass x as a "
                    "tf.data.Dataset of (x, y) batches"
                )
            x, y, k = prepare(model, x, y, self.likelihood)
            if self.likelihood.name == "classification":
                check_logits(model, engine(model).outputs(x), heads)
            elif self.likelihood.name == "heteroscedastic":
                heteroscedastic.check_heads(
                    model, engine(model).outputs(x), self.likelihood, self.output_layout
                )
            # E_D and, for regression, E_Dk = ½ Σ_n (f_nk − t_nk)² per output (Σ_k E_Dk = E_D)
            n, e_d, e_dk, square = engine(model).summary(
                ArrayBatches((x, y), 4096), self.likelihood
            )
            if not (np.isfinite(e_d) and np.isfinite(square)):
                check_finite_outputs(model, x, engine(model).outputs(x))
        self.model = model
        self.curvature = curvature
        self.batch_size = batch_size
        self.n_data, self.n_outputs = n, k
        self.w_map = engine(model).flat_weights().astype(np.float64)
        self._state = _frozen_state(model)
        self.data_error = e_d
        self.data_errors = e_dk if self.likelihood.has_beta else None
        self._output_scale = float(np.sqrt(square / max(n * k, 1)))
        self._x = x
        self.memory_estimate = structures.check_memory(
            structure,
            model,
            n_data=n,
            n_outputs=k,
            batch_size=batch_size,
            curvature=curvature,
            max_memory=max_memory,
        )  # bytes; refuses (InsufficientMemoryError) before any large allocation
        self.structure = fit_structure(
            structure,
            model,
            x,
            y,
            likelihood=self.likelihood,
            curvature=curvature,
            batch_size=batch_size,
            strategy=current_strategy(strategy),
            progress=progress,
        )
        # The posterior's weights: those of the selection (all of them by default).
        self.n_params = self.structure.n_params
        self.prior = build_prior(
            prior,
            self.selection.variables(model),
            owners_of(model),
            sizes=self.selection.sizes,
        )
        self.structure.check_prior(self.prior)
        w_post = np.asarray(self.structure.posterior_weights(model), np.float64)
        self.weight_errors = self.prior.weight_errors(w_post)  # E_Wg per group
        self.negative = negative
        self._clip_negative()
        self._alpha = None
        self._set_precisions(self._check_alpha(alpha), beta)
        self.evidence_result = None  # an evidence.EvidenceResult after optimize_evidence()
        self.prior_result = None  # a dict after optimize_prior()

    # -- precisions -----------------------------------------------------------------------------
    @property
    def prior_groups(self) -> tuple[str, ...]:
        """The names of the prior groups, in the order of :attr:`alpha` (one: ("all",))."""
        return self.prior.names

    @property
    def weight_error(self) -> float:
        """E_W = ½ ‖w‖² over the posterior's weights (Σ of :attr:`weight_errors`)."""
        return float(self.weight_errors.sum())

    @property
    def alpha(self) -> float | np.ndarray:
        """Prior precision: a float for one group, else an array (G,) over :attr:`prior_groups`."""
        return float(self._alpha[0]) if self.prior.scalar else self._alpha.copy()

    @alpha.setter
    def alpha(self, value):
        self._set_precisions(self._check_alpha(value), self._beta)

    @property
    def temperature(self) -> float:
        """The likelihood's temperature T (classification: p(y | f)^(1/T); 1 for regression).
        Settable (classification): the curvature is not refitted, A = D_α + C/T."""
        return 1.0 if self.likelihood.has_beta else 1.0 / float(self._beta)

    @temperature.setter
    def temperature(self, value):
        value = _check_temperature(value, self.likelihood)
        if not self.likelihood.has_beta:
            self._set_precisions(self._alpha, 1.0 / value)

    def _tempered_error(self) -> float:
        """The data term of the evidence: E_D for regression, cross-entropy/T for
        classification (β holds 1/T there)."""
        return self.data_error if self.likelihood.has_beta else self._beta * self.data_error

    @property
    def beta(self) -> float | np.ndarray:
        """Noise precision β: a float, or a (K,) array with one β_k per output."""
        return self._beta.copy() if isinstance(self._beta, np.ndarray) else self._beta

    @beta.setter
    def beta(self, value):
        if not self.likelihood.has_beta:
            raise ValueError(_no_beta(self.likelihood))
        self._set_precisions(self._alpha, value)

    def _check_alpha(self, value, name: str = "alpha") -> np.ndarray:
        """α as an array (G,): a number for every group, or one per group."""
        alpha = check_precisions(value, name, allow_zero=True)
        if alpha.ndim == 0:
            return np.full(self.prior.n_groups, float(alpha))
        if alpha.shape != (self.prior.n_groups,):
            raise ValueError(
                f"{name} must be a number or an array with one prior precision per group, "
                f"shape ({self.prior.n_groups},) for the groups {list(self.prior.names)[:6]}"
                f"{'…' if self.prior.n_groups > 6 else ''}, got shape {alpha.shape}"
            )
        return alpha.astype(np.float64)

    def _alpha_weights(self, alpha=None):
        """α as the structures take it: a float, or α of each weight (P,)."""
        return self.prior.per_weight(self._alpha if alpha is None else alpha)

    def _set_precisions(self, alpha, beta):
        """Validate β (float or (K,)), check A is positive definite, then set both."""
        if np.ndim(beta) == 0:
            beta = check_precision(beta, "beta", allow_zero=False)
            _check_noise_variance(beta)
            self._check_positive_definite(alpha, beta)
            self._alpha, self._beta, self._weighted = alpha, beta, None
            return
        beta = as_array(beta, "beta", ndim=1).astype(np.float64)
        if beta.shape != (self.n_outputs,) or not np.all(beta > 0):
            raise ValueError(
                f"beta as an array must hold one positive precision per output, shape "
                f"({self.n_outputs},), got {beta.shape} with minimum {beta.min() if beta.size else None}"
            )
        _check_noise_variance(beta)
        if not self.prior.scalar:
            raise ValueError(
                "one beta per output needs prior='scalar' (one alpha); got prior groups "
                f"{list(self.prior.names)[:6]}"
            )
        blocks = self._output_blocks()
        weighted = self.structure.reweighted(np.einsum("k,kpq->pq", beta, blocks))
        self._check_positive_definite(alpha, 1.0, weighted)
        self._alpha, self._beta, self._weighted = alpha, beta, weighted

    def _output_blocks(self):
        """C_k = Σ_n J_nkᵀ J_nk, (K, P, P), computed once (one β per output)."""
        if self.curvature != "ggn":
            raise ValueError(
                "one beta per output needs curvature='ggn' (the exact Hessian does not split "
                f"into per-output Gauss–Newton blocks), got curvature={self.curvature!r}"
            )
        if self._blocks is None:
            self._check_weights_unchanged()
            if self._x is None:
                raise ValueError(
                    "one beta per output needs the training data, which a Laplace loaded from "
                    "a file does not have: fit a new Laplace for it"
                )
            if is_dataset(self._x):
                raise ValueError(
                    "one beta per output needs the training data as arrays, not a dataset"
                )
            if not self.structure.per_output_beta:
                raise ValueError(
                    f"structure {self.structure.name!r} does not support one beta per output; "
                    "use structure='full' or a single beta"
                )
            self._blocks = self.structure.output_blocks(
                self.model, self._x, batch_size=self.batch_size
            )
        return self._blocks

    def _clip_negative(self):
        if self.negative != "clip":
            return
        count, worst = evidence.negative_eigenvalues(self.structure.eigenvalues)
        if not count:
            return
        if not self.structure.can_clip:
            raise ValueError(
                f"structure {self.structure.name!r} cannot clip negative eigenvalues; use "
                "negative='keep' or curvature='ggn'"
            )
        self.structure.clip_negative()
        warnings.warn(
            f"the {self.curvature} curvature has {count} negative eigenvalue(s) out of "
            f"{self.n_params} (most negative {worst:.4g}; largest {self.structure.eigenvalues.max():.4g}): "
            "clipped to zero (negative='clip'), so A = alpha*I + beta*C+ with C+ the positive "
            "part, for predictions and the evidence alike",
            RuntimeWarning,
            stacklevel=3,
        )

    def _check_positive_definite(self, alpha, beta, structure=None):
        """Refuse A = D_α + βC unless its smallest eigenvalue is clearly positive: above
        round-off of its largest, so σ is never 1/round-off. With several groups the bounds
        are Weyl's: between min α + β λ_min(C) and max α + β λ_max(C)."""
        s = structure or self.structure
        alpha_w = self._alpha_weights(alpha)
        if s.clearly_positive_definite(alpha_w, beta):
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
            hint = ill_conditioned_hint(top, a_min, getattr(self, "_x", None), self.prior.scalar)
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

    # -- prediction -----------------------------------------------------------------------------
    def _check_weights_unchanged(self):
        if not np.array_equal(engine(self.model).flat_weights(), self.w_map) or any(
            not np.array_equal(a, b)
            for a, b in zip(_frozen_state(self.model), self._state, strict=True)
        ):
            raise ValueError(
                "model weights (or its non-trainable state, e.g. BatchNorm statistics) changed "
                "since this Laplace was fitted: build a new Laplace"
            )

    def _inputs(self, x, name: str = "x"):
        self._check_weights_unchanged()
        return check_inputs(self.model, x, name)

    def _posterior(self):
        """(structure, β) such that A = D_α + β C_structure (one β per output: Σ β_k C_k, 1)."""
        if self._weighted is not None:
            return self._weighted, 1.0
        return self.structure, self._beta

    def predict(
        self,
        x,
        *,
        noise: bool = True,
        batch_size: int | None = None,
        method: str = "probit",
        n_samples: int = 1000,
        seed: int = 0,
        split: bool = False,
    ):
        """Regression: predictive mean and standard deviation at inputs x (N, ...; a list or
        dict of arrays for a model with several inputs).

        Returns ``(mean, std)``, both (N, K) float64 — for a model with several outputs, a
        list (or a dict by output name) of (N, K_i) arrays each. ``std² = 1/β + gᵀA⁻¹g``
        (noise included; 1/β_k per output when β is an array); with ``noise=False`` only
        ``gᵀA⁻¹g``.

        ``split=True`` returns ``(mean, aleatoric std, epistemic std)``: the noise (1/√β)
        and the weight uncertainty √(gᵀA⁻¹g) apart.

        Heteroscedastic (``likelihood="heteroscedastic"``): mean (N, K) and std (N, K) with
        std² = σ²_noise(x) + the weight uncertainty of the mean (:mod:`sigma.heteroscedastic`);
        ``split=True`` gives the two apart.

        Classification: the class probabilities (N, K) of :meth:`predict_proba` (``method``,
        ``n_samples``, ``seed`` are passed on; ``noise`` and ``split`` do not apply).
        """
        if self.likelihood.name == "classification":
            return self.predict_proba(
                x, method=method, n_samples=n_samples, seed=seed, batch_size=batch_size
            )
        _check_flag(noise, "noise")
        _check_flag(split, "split")
        if self.likelihood.name == "heteroscedastic":
            return heteroscedastic.predict(
                self, self._inputs(x), noise=noise, split=split, batch_size=batch_size
            )
        x = self._inputs(x)
        if split:
            mean, epistemic = self._predict(x, False, batch_size)
            noise_std = np.broadcast_to(self._beta**-0.5, mean.shape).copy()
            parts = (mean, noise_std, epistemic)
            return tuple(self.output_layout.unflatten(p) for p in parts)
        mean, std = self._predict(x, noise, batch_size)
        return self.output_layout.unflatten(mean), self.output_layout.unflatten(std)

    def _predict(self, x, noise=True, batch_size=None, name="x"):
        """(mean, std), each (N, K) flat, for checked inputs x."""
        mean = engine(self.model).outputs(x)
        check_finite_outputs(self.model, x, mean, name)
        structure, beta = self._posterior()
        var = structure.predictive_variance(
            self.model, x, self._alpha_weights(), beta, batch_size=batch_size
        )
        _check_finite_variance(var, name)
        if noise:
            var = var + 1.0 / self._beta
        return mean, np.sqrt(var)

    def predictive_covariance(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Σ(x) = β⁻¹ I + J(x) A⁻¹ J(x)ᵀ for each input: (N, K, K), float64 (all outputs
        flattened and concatenated, see :attr:`output_layout`).

        Classification: the logit covariance J(x) A⁻¹ J(x)ᵀ (there is no noise term).
        """
        x = self._inputs(x)
        structure, beta = self._posterior()
        cov = structure.predictive_covariance(
            self.model, x, self._alpha_weights(), beta, batch_size=batch_size
        )
        if noise and self.likelihood.has_beta:
            cov = cov + np.diag(np.broadcast_to(1.0 / self._beta, (self.n_outputs,)))
        return cov

    def predict_proba(
        self,
        x,
        *,
        method: str = "probit",
        n_samples: int = 1000,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Predictive class probabilities E[softmax(f)] at inputs x: (N, K), rows sum to 1 (a
        list or dict of (N, K_i), one softmax head per output, for several outputs). A model
        with one logit per output is a binary classifier: its column is P(y = 1) = σ(f),
        probit σ(μ / sqrt(1 + π/8 · Σ)), the way Keras' own sigmoid output reads.

        The logits are f ~ N(f(x; w*), J A⁻¹ Jᵀ) (K×K covariance per input). ``method``
        (:mod:`sigma.classification`): "probit" (default), softmax(μ / sqrt(1 + π/8 · diag Σ));
        "mc", the mean of softmax over ``n_samples`` draws of the logits with the full
        covariance, from a generator seeded by ``seed``; "mean_field" (Lu et al. 2020, the
        variances of the logit differences, Σ_kk + Σ_jj − 2Σ_kj) and "mean_field_diag"
        (Σ_kk + Σ_jj); "bridge", the mean of the Laplace bridge's Dirichlet (Hobbhahn et al.
        2022). Classification only (ValueError for regression).
        """
        if self.likelihood.name != "classification":
            raise ValueError(
                "predict_proba needs likelihood='classification'; for regression use predict"
            )
        check_method(method)
        n_samples = check_positive_int(n_samples, "n_samples")
        if n_samples > MAX_SAMPLES:
            raise ValueError(f"n_samples must be at most {MAX_SAMPLES:.0e}, got {n_samples}")
        seed = check_seed(seed)
        probs = self._proba(self._inputs(x), method, n_samples, seed, batch_size)
        return self.output_layout.unflatten(probs)

    def _proba(self, x, method="probit", n_samples=1000, seed=0, batch_size=None, name="x"):
        """Class probabilities (N, K) flat (one softmax per head) for checked inputs x."""
        mean = engine(self.model).outputs(x)
        check_finite_outputs(self.model, x, mean, name)
        structure, beta = self._posterior()
        cov = structure.predictive_covariance(
            self.model, x, self._alpha_weights(), beta, batch_size=batch_size
        )
        _check_finite_variance(cov, name)
        return probabilities(
            mean, cov, method=method, n_samples=n_samples, seed=seed, heads=self.likelihood.heads
        )

    # -- evidence -------------------------------------------------------------------------------
    def _spectral(self, structure=None) -> bool:
        """The evidence follows from C's eigenvalues: one α and a structure whose A is
        diagonal in C's eigenbasis."""
        return self.prior.scalar and getattr(structure or self.structure, "spectral", True)

    def _evidence_eigenvalues(self, structure=None):
        lam = (structure or self.structure).eigenvalues
        count, worst = evidence.negative_eigenvalues(lam)
        if count:
            raise ValueError(
                f"the {self.curvature} curvature has {count} negative eigenvalue(s) out of "
                f"{self.n_params} (most negative {worst:.4g}; largest {lam.max():.4g}): the "
                "evidence needs a positive semi-definite curvature. Build the Laplace with "
                "negative='clip' (sets them to zero, with a warning) or curvature='ggn'"
            )
        return lam

    def _terms(self, structure=None):
        """``terms(alphas (G,), β) -> (ln|A|, γ (G,))`` for :func:`sigma.evidence.maximize`."""
        s = structure or self.structure
        if self._spectral(s):
            return evidence.eigen_terms(self._evidence_eigenvalues(s), self.n_params)
        self._evidence_eigenvalues(s)  # refuses an indefinite curvature
        sizes = self.prior.sizes

        def terms(alphas, beta):
            alpha_w = self.prior.per_weight(alphas)
            traces = self.prior.group_sums(s.inverse_diagonal(alpha_w, beta))
            return s.logdet(alpha_w, beta), sizes - np.asarray(alphas) * traces

        return terms

    @property
    def gammas(self) -> np.ndarray:
        """γ_g = P_g − α_g Tr_g(A⁻¹) per prior group, (G,): how many of each group's weights
        the data determine."""
        structure, beta = self._posterior()
        gammas = self._terms(structure)(self._alpha, beta)[1]
        return np.clip(gammas, 0.0, self.prior.sizes)  # 0 ≤ γ_g ≤ P_g also at round-off

    @property
    def gamma(self) -> float:
        """γ = Σ_g γ_g (= Σ_i λ_i/(λ_i + α), λ_i the eigenvalues of β C, for one α): the
        effective number of well-determined parameters at the current α, β (0 ≤ γ ≤ P)."""
        structure, beta = self._posterior()
        if self._spectral(structure):
            return evidence.effective_parameters(
                self._evidence_eigenvalues(structure), self.n_params, self._alpha[0], beta
            )
        return float(self.gammas.sum())

    def log_evidence(self, alpha=None, beta=None):
        """ln p(D | α, β) in nats, constants included (docs/math.md); defaults: the current α, β.

        With one prior group, ``alpha`` and ``beta`` may be arrays (broadcast against each
        other, e.g. a meshgrid): the result then has their broadcast shape, for drawing the
        evidence surface. With several groups ``alpha`` is one α per group (G,) or a number
        for all. A given ``beta`` is one noise precision shared by all outputs; with one β_k
        per output set, ``log_evidence()`` (beta=None) uses them. Classification:
        ln p(D | α), no β.
        """
        self._check_weights_unchanged()
        if not self.likelihood.has_beta and beta is not None:
            raise ValueError(_no_beta(self.likelihood))
        if beta is not None:
            check_precisions(beta, "beta", allow_zero=False)
        if self.prior.scalar:
            alpha = self._alpha[0] if alpha is None else check_precisions(alpha, "alpha")
            if np.ndim(alpha) and beta is not None and np.ndim(beta):
                try:
                    np.broadcast_shapes(np.shape(alpha), np.shape(beta))
                except ValueError:
                    raise ValueError(
                        f"alpha and beta must broadcast against each other (e.g. a meshgrid), "
                        f"got shapes {np.shape(alpha)} and {np.shape(beta)}"
                    ) from None
        else:
            alpha = self._alpha if alpha is None else self._check_alpha(alpha)
        if beta is None and self._weighted is not None:
            if np.ndim(alpha) != 0:
                raise ValueError("with one beta per output, alpha must be a single number")
            return evidence.log_evidence_per_output(
                self._output_blocks(),
                data_errors=self.data_errors,
                weight_error=self.weight_error,
                n_data=self.n_data,
                alpha=float(alpha),
                betas=self._beta,
            )
        beta = self._beta if beta is None else beta
        if self._spectral():
            if not self.likelihood.has_beta:
                return evidence.log_evidence_classification(
                    self._beta * self._evidence_eigenvalues(),  # tempered: C/T, E/T
                    cross_entropy=self._tempered_error(),
                    weight_error=self.weight_error,
                    n_params=self.n_params,
                    alpha=alpha,
                )
            return evidence.log_evidence(
                self._evidence_eigenvalues(),
                data_error=self.data_error,
                weight_error=self.weight_error,
                n_params=self.n_params,
                n_obs=self.n_data * self.n_outputs,
                alpha=alpha,
                beta=beta,
            )
        try:
            alphas = np.broadcast_to(np.asarray(alpha, np.float64), (self.prior.n_groups,))
        except ValueError:  # not one alpha per group (e.g. a grid)
            alphas = np.zeros(0)
        if np.ndim(beta) or alphas.size == 0 or not np.all(alphas > 0):
            raise ValueError(
                "with several prior groups (or structure 'lowrank' with its diagonal), the "
                "evidence takes one alpha per group (> 0) and one beta, not a grid"
            )
        self._check_positive_definite(alphas, float(beta))  # ln|A| by Cholesky needs it
        logdet, _ = self._terms()(alphas, float(beta))
        return evidence.log_evidence_groups(
            logdet=logdet,
            data_error=self._tempered_error(),
            weight_errors=self.weight_errors,
            sizes=self.prior.sizes,
            n_obs=self.n_data * self.n_outputs,
            alphas=alphas,
            beta=float(beta),
            has_beta=self.likelihood.has_beta,
        )

    def _interpolates(self) -> bool:
        """The training residuals are at the float precision of the model's outputs."""
        eps = float(np.finfo(model_dtype(self.model)).eps)
        residual = np.sqrt(2.0 * self.data_error / (self.n_data * self.n_outputs))
        return bool(residual <= INTERPOLATION * eps * max(self._output_scale, 1e-300))

    def optimize_evidence(
        self,
        *,
        fix_alpha: bool = False,
        fix_beta: bool = False,
        per_output: bool | None = None,
        tol: float = 1e-8,
        max_iter: int = 1000,
    ) -> Laplace:
        """Set α (every α_g) and β to the maximum of the evidence at the trained weights.

        MacKay's fixed point, α_g ← γ_g/(2E_Wg), β ← (NK − γ)/(2E_D), from the current α, β
        until the relative change is below ``tol``; where it overshoots (γ ≥ NK) or oscillates,
        a direct maximisation in (ln α_g, ln β) (:func:`sigma.evidence.maximize`).
        ``fix_alpha`` / ``fix_beta`` hold one precision at its current value. ``per_output``:
        one β_k per output (β_k ← (N − γ_k)/(2E_Dk)); default: keep the current form of β.
        Classification re-estimates α only (β is fixed at 1). Returns self.

        Afterwards ``alpha``, ``beta``, ``gamma`` and ``log_evidence()`` refer to the optimum and
        ``evidence_result`` records how it was reached. Raises
        :class:`sigma.evidence.EvidenceBoundaryError` when the evidence has no interior maximum
        (the network interpolates its training data, so β → ∞; or an α_g → 0), saying what
        to do; :class:`sigma.evidence.EvidenceError` (with the last α, β) when the iterations
        run out; ValueError for a curvature with negative eigenvalues (see ``negative``).
        """
        self._check_weights_unchanged()
        for flag, name in ((fix_alpha, "fix_alpha"), (fix_beta, "fix_beta")):
            _check_flag(flag, name)
        if per_output is not None:
            _check_flag(per_output, "per_output", "True, False or None")
        max_iter = check_positive_int(max_iter, "max_iter")
        tol = check_precision(tol, "tol", allow_zero=False)
        if per_output is None:
            per_output = self._weighted is not None
        if not self.likelihood.has_beta and per_output:
            raise ValueError(_no_beta(self.likelihood))
        start = self._alpha.copy()
        if np.any(start == 0):
            start = np.where(start == 0, self._alpha_from_zero(), start)
        if per_output:
            result = evidence.optimize_per_output(
                self._output_blocks(),
                data_errors=self.data_errors,
                weight_error=self.weight_error,
                n_data=self.n_data,
                alpha=float(start[0]),
                betas=np.broadcast_to(self._beta, (self.n_outputs,)),
                fix_alpha=fix_alpha,
                fix_beta=fix_beta,
                tol=tol,
                max_iter=max_iter,
            )
            result.alpha = np.array([result.alpha])
        else:
            has_beta = self.likelihood.has_beta
            if has_beta and not fix_beta and self._interpolates():
                raise evidence.EvidenceBoundaryError(
                    "the network interpolates its training data (E_D = "
                    f"{self.data_error:.3g}, residuals at the float precision of its outputs), "
                    "so the evidence grows without bound as beta → ∞: there is no noise level "
                    "to find. Train with the evidence (sigma.EvidenceCallback keeps E_D away "
                    "from zero), hold beta (optimize_evidence(fix_beta=True)), or use more "
                    "data or fewer weights",
                    alpha=self.alpha,
                    beta=self._beta,
                    n_iter=0,
                    which=["beta"],
                )
            terms = self._terms()
            if not has_beta:  # β is held at 1/T (the temperature): maximize holds it at 1
                terms = functools.partial(_fixed_beta, terms, self._beta)
            result = evidence.maximize(
                terms,
                data_error=self._tempered_error(),
                weight_errors=self.weight_errors,
                sizes=self.prior.sizes,
                n_obs=self.n_data * self.n_outputs if has_beta else None,
                alphas=start,
                beta=float(np.mean(self._beta)),
                fix_alpha=fix_alpha,
                fix_beta=fix_beta,
                tol=tol,
                max_iter=max_iter,
            )
            result.alpha = np.atleast_1d(np.asarray(result.alpha, np.float64))
            if not has_beta:
                result.beta = self._beta
        self._set_precisions(result.alpha, result.beta)
        if self.prior.scalar:
            result.alpha = float(result.alpha[0])
        self.evidence_result = result
        return self

    def _alpha_from_zero(self):
        """A proper starting α from α = 0: γ/(2E_W) with γ the rank of the curvature."""
        if not self.weight_error > 0:
            return 1.0
        lam = self.structure.eigenvalues
        rank = float(np.sum(lam > evidence.ROUNDOFF * np.abs(lam).max())) if lam.size else 1.0
        return max(rank, 1.0) / (2.0 * self.weight_error)

    # -- conformal calibration ----------------------------------------------------------------
    def conformalize(self, x_cal, y_cal, *, level=None, randomised: bool = True, seed: int = 0):
        """A calibrated predictor from held-out calibration data (x_cal (n, ...), y_cal (n, K);
        labels for a classifier) by split conformal prediction (:mod:`sigma.conformal`):
        regression → :class:`~sigma.conformal.ConformalRegressor` (``interval(x, level)``,
        coverage ≥ level in finite samples); classification →
        :class:`~sigma.conformal.ConformalClassifier` (adaptive prediction sets,
        ``predict_set(x, level)``). Needs n ≥ ⌈1/ε⌉ − 1 for level 1 − ε (checked now when
        ``level`` is given, else when an interval is asked for)."""
        return conformal.calibrate(
            self, x_cal, y_cal, level=level, randomised=randomised, seed=seed
        )

    # -- held-out tuning ------------------------------------------------------------------------
    def optimize_prior(
        self,
        x_val,
        y_val,
        *,
        metric: str = "nll",
        beta: bool = True,
        span: float = 1e4,
        tol: float = 1e-3,
        max_iter: int = 100,
    ) -> Laplace:
        """Set α (and β, for regression) to the best value of a held-out metric; returns self.

        For when the evidence is not trusted: a bounded search over a common factor of the
        prior precisions (α_g ratios kept) — and of β for regression with ``beta=True`` —
        within ``span``× of the current values either way, minimising ``metric`` on
        (x_val, y_val): "nll" (Gaussian NLL per value for regression; NLL per sample for
        classification), "brier" or "ece" (classification). Heteroscedastic: α only, on the
        Gaussian NLL of the predictive (noise head + weight uncertainty). A bounded 1-D search
        (Brent's method) or 2-D search (Nelder–Mead in log coordinates), no fixed grid.
        ``prior_result`` records the values found and how many predictions it took.
        """
        kind = self.likelihood.name  # heteroscedastic: α only, the Gaussian NLL
        kind = "regression" if self.likelihood.has_beta else kind
        if metric not in PRIOR_METRICS[kind]:
            raise ValueError(
                f"metric must be one of {PRIOR_METRICS[kind]} for {kind}, got {metric!r}"
            )
        if not isinstance(beta, bool):
            raise ValueError(f"beta must be True or False (also tune β), got {beta!r}")
        span = check_precision(span, "span", allow_zero=False)
        if span <= 1:
            raise ValueError(f"span must be > 1 (a factor either way), got {span}")
        max_iter = check_positive_int(max_iter, "max_iter")
        x_val = self._inputs(x_val, "x_val")
        y_val = self.likelihood.targets(
            y_val, sample_count(x_val), self.n_outputs, "y_val", "x_val", layout=self.output_layout
        )
        tune_beta = beta and self.likelihood.has_beta and self._weighted is None
        n_val = sample_count(x_val)
        n_values = n_val * self.n_outputs if self.likelihood.has_beta else n_val
        metrics.check_validation_size(metric, n_val, n_values, 1 + tune_beta)
        saved = self._alpha.copy(), self._beta
        alpha0, beta0 = saved
        if self.prior.scalar and alpha0[0] == 0:
            alpha0 = np.full_like(alpha0, self._alpha_from_zero())
        heads = self.likelihood.heads or [(0, self.n_outputs)]
        calls = []

        def score(z):
            a = alpha0 * np.exp(z[0])
            b = beta0 * np.exp(z[1]) if tune_beta else beta0
            try:
                self._set_precisions(a, b)
            except ValueError:
                return np.inf  # A not positive definite there
            calls.append(1)
            if self.likelihood.has_beta:
                return metrics.gaussian_nll(*self._predict(x_val, name="x_val"), y_val)
            if kind == "heteroscedastic":
                mean, std = heteroscedastic.predict(self, x_val, name="x_val")
                return metrics.gaussian_nll(mean, std, y_val[:, : mean.shape[1]])
            probs = self._proba(x_val, name="x_val")
            score = {"nll": metrics.nll, "brier": metrics.brier,
                     "ece": metrics.expected_calibration_error}[metric]  # fmt: skip
            return sum(  # per softmax head, summed
                score(probs[:, s:e], y_val[:, s:e]) for s, e in heads
            )

        import scipy.optimize

        bound = float(np.log(span))
        try:  # on any failure (or Ctrl-C) the precisions are restored
            if tune_beta:
                res = scipy.optimize.minimize(
                    score, np.zeros(2), method="Nelder-Mead",
                    bounds=[(-bound, bound)] * 2,
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
        except BaseException:
            self._set_precisions(*saved)
            raise
        if not np.isfinite(value):
            self._set_precisions(*saved)
            raise ValueError(
                f"no alpha within a factor {span:g} of {self.alpha} gives a positive definite "
                "posterior precision: widen span or fit with another structure"
            )
        self.prior_result = {
            "alpha": self.alpha,
            "beta": self.beta,
            "metric": metric,
            "value": float(value),
            "evaluations": len(calls),
        }
        return self

    # -- serving ----------------------------------------------------------------------------------
    def to_keras(self, *, name: str | None = None):
        """A ``keras.Model`` from the model's inputs to this posterior's predictive — ``{"mean",
        "std"}`` (N, K) for regression, class probabilities (N, K) for classification — with
        the variance computed inside the graph at the current α, β (:mod:`sigma.serving`).
        ``.save("m.keras")`` reloads with ``keras.saving.load_model`` where sigma is installed;
        ``.export("dir")`` writes a SavedModel whose ``serve`` signature needs no sigma."""
        return serving.to_keras(self, name=name)

    # -- saving -----------------------------------------------------------------------------------
    def save(self, path):
        """Write this Laplace to ``path`` (a ``.npz`` archive in the versioned format of
        :mod:`sigma.saving`: the structure's state, α, β, the prior groups, the data summary
        the evidence needs and the model's fingerprint — not the training data), atomically.
        Returns the path."""
        self._check_weights_unchanged()
        return saving.save(self, path)

    @classmethod
    def load(cls, path, model) -> Laplace:
        """The Laplace saved in ``path``, for ``model`` — which must be the model it was fitted
        on: same architecture, same weights, same non-trainable state (ValueError otherwise,
        naming the difference). Nothing is refitted; predictions, the evidence and its
        optimisation work as before saving. (One β per output needs the saved blocks; a file
        from another format version is refused.)"""
        header, arrays = saving.read(path)
        check_model(model)
        saving.check_fingerprint(header["fingerprint"], model, path)
        spec = header["structure"]
        if "weights_index" in arrays:
            selection = weights_from_index(
                model, arrays["weights_index"], header["weights"]["kind"]
            )
        else:  # format 1: every weight, or the last layer for structure "last_layer"
            selection = select(model, structures.resolve(spec["name"], "all")[1])
        structure = structures.get(spec["name"]).from_options(spec["options"]).on(selection)
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("structure/")}
        structure.restore(model, state, spec["info"])
        la = cls.__new__(cls)
        la.selection = selection
        data, layout = header["data"], header["output_layout"]
        lik = header["likelihood"]
        la.likelihood = likelihoods.get(lik["name"])
        if lik["heads"]:
            la.likelihood = likelihoods.Classification(lik["heads"])
        if lik.get("parameterisation"):
            la.likelihood = likelihoods.Heteroscedastic(lik["parameterisation"])
        la.output_layout = OutputLayout(
            layout["kind"], tuple(layout["names"]), tuple(layout["sizes"])
        )
        la.model, la.curvature, la.negative = model, header["curvature"], header["negative"]
        la.batch_size = data["batch_size"]
        la.n_data, la.n_outputs = int(data["n_data"]), int(data["n_outputs"])
        la.w_map = arrays["w_map"]
        la._state = _frozen_state(model)
        la.data_error = float(data["data_error"])
        la.data_errors = None if data["data_errors"] is None else np.asarray(data["data_errors"])
        la._output_scale = float(data["output_scale"])
        la._x, la.memory_estimate = None, None
        la.structure, la.n_params = structure, structure.n_params
        prior = header["prior"]
        la.prior = Prior(
            arrays["prior_groups"].astype(np.int64), tuple(prior["names"]), prior["kind"]
        )
        la.weight_errors = np.asarray(header["weight_errors"], np.float64)
        la._beta, la._weighted, la._alpha = 1.0, None, None
        la._blocks = arrays.get("output_blocks")
        la.evidence_result = la.prior_result = None
        beta = header["beta"]
        la._set_precisions(np.asarray(header["alpha"], np.float64), beta)
        return la

    def __repr__(self):
        alpha = (
            f"{self._alpha[0]:.4g}"
            if self.prior.scalar
            else np.array2string(self._alpha, precision=4, threshold=6)
        )
        return (
            f"Laplace(structure={self.structure.name!r}, curvature={self.curvature!r}, "
            f"prior={self.prior.kind!r}, P={self.n_params}, N={self.n_data}, K={self.n_outputs}, "
            f"alpha={alpha}, beta={np.array2string(np.asarray(self._beta), precision=4)})"
        )


def _fixed_beta(terms, beta, alphas, _):
    """``terms`` at the given β whatever β it is asked at."""
    return terms(alphas, beta)


def _check_temperature(value, likelihood) -> float:
    """A finite T > 0; only 1 unless the likelihood is a classifier's (for regression β itself
    is the likelihood's scale; a heteroscedastic model's noise is its own output)."""
    try:
        t = float(value) if isinstance(value, numbers.Real) else np.nan
    except OverflowError:  # an integer beyond float64
        t = np.inf
    if isinstance(value, bool) or not (np.isfinite(t) and t > 0 and np.isfinite(1.0 / t)):
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}")
    if likelihood.name != "classification" and t != 1.0:
        raise ValueError(
            "temperature applies to likelihood='classification' (for regression the noise "
            "precision beta scales the likelihood, beta/T tempers it; a heteroscedastic "
            f"model's noise is its own output), got temperature={value!r} with "
            f"likelihood={likelihood.name!r}"
        )
    return t


def _no_beta(likelihood) -> str:
    return getattr(likelihood, "beta_message", _NO_BETA)


def _check_finite_variance(var, name: str = "x") -> None:
    """The outputs were finite; a NaN or inf variance comes from the output gradients."""
    if not np.all(np.isfinite(var)):
        bad = int(np.sum(~np.all(np.isfinite(np.reshape(var, (len(var), -1))), axis=1)))
        raise ValueError(
            f"the predictive variance is NaN or infinite for {bad} of the {len(var)} samples of "
            f"{name} although the model's outputs are finite: the gradients of the outputs "
            f"overflow inside the network. Rescale {name} (or the weights), or compute in float64"
        )


def _check_noise_variance(beta) -> None:
    """1/β, the noise variance in σ², must be a float64 (β of 2e-311 makes it inf)."""
    smallest = 1.0 / np.finfo(np.float64).max
    if np.any(np.asarray(beta) < smallest):
        raise ValueError(
            f"beta must be at least {smallest:.3g} (its reciprocal, the noise variance, "
            f"overflows float64 below that), got {np.min(beta):.3g}"
        )


def _check_flag(value, name: str, allowed: str = "True or False") -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _frozen_state(model) -> list[np.ndarray]:
    """Copies of the non-trainable state the curvature depends on (normalisation statistics;
    not the random-seed state, which inference does not use)."""
    return [
        np.array(v.numpy())
        for v in model.non_trainable_variables
        if "seed_generator" not in getattr(v, "path", v.name)
    ]
