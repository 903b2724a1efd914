"""The Laplace approximation around trained weights: error bars σ for every output.

    A = α I + β C        C = Gauss–Newton G or exact Hessian H of E_D (MATH.md)
    σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x),   g_k(x) = ∂f_k(x)/∂w at the trained weights

The facade over the layers below it: a structure (:mod:`sigma.structures`) holds C, the
model's curvature engine (:mod:`sigma.curvature`) computes it, the evidence for α, β (and their
re-estimation) is :mod:`sigma.evidence`, class probabilities for
``likelihood="classification"`` are :mod:`sigma.classification`. Formulas: docs/math.md.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from sigma import evidence, likelihoods, structures
from sigma._checks import as_array, check_inputs, check_precision, model_dtype
from sigma.classification import METHODS, check_logits, probit_probabilities, sampled_probabilities
from sigma.curvature import engine, prepare
from sigma.curvature.accumulate import (
    ArrayBatches,
    current_strategy,
    is_dataset,
    prepare_dataset,
)
from sigma.params import flat_weights, num_params
from sigma.structures import Structure, fit_structure

CURVATURES = ("ggn", "hessian")
NEGATIVE = ("keep", "clip")
_NO_BETA = (
    "beta is fixed at 1 for likelihood='classification' (the cross-entropy has no noise "
    "precision); only alpha can be set or optimised"
)


class Laplace:
    """Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras regression model.

    Parameters
    ----------
    model : keras.Model, built and trained; f(x) ∈ R^K per sample.
    x : array (N, ...) of training inputs, matching the model's input shape; or a
        ``tf.data.Dataset`` yielding ``(x, y)`` batches (then ``y`` is None). Every structure
        with ``streaming = True`` (all five built in) consumes the dataset batch by batch;
        others get it concatenated into arrays.
    y : array (N, K) of training targets.
    curvature : "ggn" (Gauss–Newton, always PSD) or "hessian" (exact, nested tapes).
    structure : how C is stored: a registered name (:mod:`sigma.structures`; "full": P×P,
        "diag": the exact GGN diagonal, "kfac": Kronecker factors per Dense/Conv layer,
        "lowrank": top-k eigenpairs by Lanczos, "last_layer": the final Dense layer only; see
        README "Structures and layers") or an unfitted :class:`~sigma.structures.Structure`.
    structure_options : keyword arguments for the structure's constructor, e.g.
        ``{"rank": 50}`` for "lowrank".
    alpha : prior precision α ≥ 0 (w ~ N(0, α⁻¹ I)).
    beta : noise precision β > 0 (t ~ N(f, β⁻¹ I)), or a (K,) array with one β_k per output
        (A = α I + Σ_k β_k C_k, ``curvature="ggn"`` and ``structure="full"`` only). Fixed at 1
        for ``likelihood="classification"``.
    likelihood : "regression" (squared error, y (N, K)) or "classification" (softmax
        cross-entropy on linear logits; y one-hot (N, K) or integer labels (N,)).
    negative : what to do with negative eigenvalues of the exact Hessian: "keep" them (A must
        still be positive definite; the evidence refuses them) or "clip" them to zero (C → its
        positive semi-definite part, for predictions and evidence alike, with a warning saying
        how many and how large).
    batch_size : samples per batch when accumulating the curvature (default: automatic; a
        dataset is re-batched to it when given).
    strategy : a ``tf.distribute.Strategy`` to accumulate the curvature under (per-replica sums
        reduced); default: the strategy whose ``scope()`` is active, if any (streaming
        structures).
    max_memory : the memory the structure may use, bytes or a string like "2GB" (default: 80%
        of the memory available); a structure estimated to need more is refused before any
        large allocation, with :class:`sigma.memory.InsufficientMemoryError` naming structures
        that fit.
    progress : show progress bars while accumulating.

    Raises ValueError for bad input and when A = α I + β C is not positive definite.

    Evidence: :meth:`log_evidence`, :meth:`optimize_evidence`, :attr:`gamma`. Classification:
    :meth:`predict_proba` (``predict`` returns the same for a classifier).
    """

    def __init__(
        self,
        model,
        x,
        y=None,
        *,
        likelihood: str = "regression",
        curvature: str = "ggn",
        structure: str | Structure = "full",
        alpha: float = 1.0,
        beta: float = 1.0,
        batch_size: int | None = None,
        negative: str = "keep",
        structure_options: dict | None = None,
        strategy=None,
        max_memory: int | str | None = None,
        progress: bool = False,
    ):
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if isinstance(structure, Structure):
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
        if negative not in NEGATIVE:
            raise ValueError(f"negative must be one of {NEGATIVE}, got {negative!r}")
        self._alpha = check_precision(alpha, "alpha", allow_zero=True)
        self.likelihood = likelihoods.get(likelihood)
        if not self.likelihood.has_beta and not (
            isinstance(beta, numbers.Real) and float(beta) == 1.0
        ):
            raise ValueError(_NO_BETA)
        if np.ndim(beta) == 0:
            check_precision(beta, "beta", allow_zero=False)
        self._beta, self._weighted, self._blocks = 1.0, None, None
        if is_dataset(x):
            if y is not None:
                raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
            x, n, k, e_d, e_dk = prepare_dataset(model, x, self.likelihood, batch_size=batch_size)
            if not self.likelihood.has_beta:
                check_logits(model, engine(model).outputs(next(iter(x))[0].numpy()))
        else:
            if y is None:
                raise ValueError(
                    "y is required when x is an array: pass the training targets, shape (N, K) "
                    "(or integer labels (N,) for classification), or pass x as a "
                    "tf.data.Dataset of (x, y) batches"
                )
            x, y, k = prepare(model, x, y, self.likelihood)
            if not self.likelihood.has_beta:
                check_logits(model, engine(model).outputs(x))
            # E_D and, for regression, E_Dk = ½ Σ_n (f_nk − t_nk)² per output (Σ_k E_Dk = E_D)
            n, e_d, e_dk = engine(model).summary(ArrayBatches((x, y), 4096), self.likelihood)
            e_dk = e_dk if self.likelihood.has_beta else None
        self.model = model
        self.curvature = curvature
        self.batch_size = batch_size
        self.n_data, self.n_outputs, self.n_params = n, k, num_params(model)
        self.w_map = flat_weights(model).astype(np.float64)
        self._state = _frozen_state(model)
        self.data_error, self.data_errors = e_d, e_dk
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
        # The posterior's weights: all of them, or the final layer's for "last_layer".
        self.n_params = self.structure.n_params
        w_post = np.asarray(self.structure.posterior_weights(model), np.float64)
        self.weight_error = 0.5 * float(w_post @ w_post)  # E_W
        self.negative = negative
        self._clip_negative()
        self._set_precisions(self._alpha, beta)
        self.evidence_result = None  # an evidence.EvidenceResult after optimize_evidence()

    # -- precisions -----------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._set_precisions(check_precision(value, "alpha", allow_zero=True), self._beta)

    @property
    def beta(self) -> float | np.ndarray:
        """Noise precision β: a float, or a (K,) array with one β_k per output."""
        return self._beta.copy() if isinstance(self._beta, np.ndarray) else self._beta

    @beta.setter
    def beta(self, value):
        if not self.likelihood.has_beta:
            raise ValueError(_NO_BETA)
        self._set_precisions(self._alpha, value)

    def _set_precisions(self, alpha, beta):
        """Validate β (float or (K,)), check A is positive definite, then set both."""
        if np.ndim(beta) == 0:
            beta = check_precision(beta, "beta", allow_zero=False)
            self._check_positive_definite(alpha, beta)
            self._alpha, self._beta, self._weighted = alpha, beta, None
            return
        beta = as_array(beta, "beta", ndim=1).astype(np.float64)
        if beta.shape != (self.n_outputs,) or not np.all(beta > 0):
            raise ValueError(
                f"beta as an array must hold one positive precision per output, shape "
                f"({self.n_outputs},), got {beta.shape} with minimum {beta.min() if beta.size else None}"
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
        """Refuse A = αI + βC unless its smallest eigenvalue is clearly positive: above
        round-off of its largest, so σ is never 1/round-off."""
        if (structure or self.structure).clearly_positive_definite(alpha, beta):
            return
        lam = (structure or self.structure).eigenvalues
        top = alpha + beta * float(np.abs(lam).max()) if lam.size else alpha
        smallest = alpha + beta * float(lam.min()) if lam.size else alpha
        if lam.size < self.n_params:
            smallest = min(smallest, alpha)
        if smallest > evidence.ROUNDOFF * top:
            return
        if lam.size and lam.min() < -evidence.ROUNDOFF * float(np.abs(lam).max()):
            hint = (
                f"the {self.curvature} curvature has negative eigenvalues (down to "
                f"{float(lam.min()):.4g}): use curvature='ggn' (always positive semi-definite), "
                f"negative='clip', or alpha > {-beta * float(lam.min()):.4g}"
            )
        elif lam.size < self.n_params:
            hint = (
                f"use alpha > 0 (structure {self.structure.name!r} keeps {lam.size} of the "
                f"{self.n_params} eigenvalues of C and takes the others as zero)"
            )
        else:
            hint = "C is singular (it has zero eigenvalues), so use alpha > 0"
        raise ValueError(
            f"the posterior precision A = alpha*I + beta*C is not positive definite "
            f"(smallest eigenvalue {smallest:.4g} with alpha={alpha:g}, beta={beta:g}, "
            f"curvature={self.curvature!r}): {hint}"
        )

    # -- prediction -----------------------------------------------------------------------------
    def _check_weights_unchanged(self):
        if not np.array_equal(flat_weights(self.model).astype(np.float64), self.w_map) or any(
            not np.array_equal(a, b)
            for a, b in zip(_frozen_state(self.model), self._state, strict=True)
        ):
            raise ValueError(
                "model weights (or its non-trainable state, e.g. BatchNorm statistics) changed "
                "since this Laplace was fitted: build a new Laplace"
            )

    def _inputs(self, x):
        self._check_weights_unchanged()
        return check_inputs(self.model, x, "x").astype(model_dtype(self.model))

    def _posterior(self):
        """(structure, β) such that A = α I + β C_structure (one β per output: Σ β_k C_k, 1)."""
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
    ):
        """Regression: predictive mean and standard deviation at inputs x (N, ...).

        Returns ``(mean, std)``, both (N, K) float64. ``std² = 1/β + gᵀA⁻¹g`` (noise included;
        1/β_k per output when β is an array); with ``noise=False`` only ``gᵀA⁻¹g``.

        Classification: the class probabilities (N, K) of :meth:`predict_proba` (``method``,
        ``n_samples``, ``seed`` are passed on; ``noise`` does not apply).
        """
        if not self.likelihood.has_beta:
            return self.predict_proba(
                x, method=method, n_samples=n_samples, seed=seed, batch_size=batch_size
            )
        x = self._inputs(x)
        mean = engine(self.model).outputs(x)
        structure, beta = self._posterior()
        var = structure.predictive_variance(self.model, x, self._alpha, beta, batch_size=batch_size)
        if noise:
            var = var + 1.0 / self._beta
        return mean, np.sqrt(var)

    def predictive_covariance(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Σ(x) = β⁻¹ I + J(x) A⁻¹ J(x)ᵀ for each input: (N, K, K), float64.

        Classification: the logit covariance J(x) A⁻¹ J(x)ᵀ (there is no noise term).
        """
        x = self._inputs(x)
        structure, beta = self._posterior()
        cov = structure.predictive_covariance(
            self.model, x, self._alpha, beta, batch_size=batch_size
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
        """Predictive class probabilities E[softmax(f)] at inputs x: (N, K), rows sum to 1.

        The logits are f ~ N(f(x; w*), J A⁻¹ Jᵀ). ``method="probit"`` (default):
        softmax(μ / sqrt(1 + π/8 · diag Σ)); ``method="mc"``: the mean of softmax over
        ``n_samples`` draws of the logits from a generator seeded by ``seed``.
        Classification only (ValueError for regression).
        """
        if self.likelihood.has_beta:
            raise ValueError(
                "predict_proba needs likelihood='classification'; for regression use predict"
            )
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        x = self._inputs(x)
        mean = engine(self.model).outputs(x)
        cov = self.predictive_covariance(x, batch_size=batch_size)
        if method == "probit":
            return probit_probabilities(mean, cov)
        return sampled_probabilities(mean, cov, n_samples=n_samples, seed=seed)

    # -- evidence -------------------------------------------------------------------------------
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

    @property
    def gamma(self) -> float:
        """γ = Σ_i λ_i/(λ_i + α), λ_i the eigenvalues of β C: the effective number of
        well-determined parameters at the current α, β (0 ≤ γ ≤ P)."""
        structure, beta = self._posterior()
        return evidence.effective_parameters(
            self._evidence_eigenvalues(structure), self.n_params, self._alpha, beta
        )

    def log_evidence(self, alpha=None, beta=None):
        """ln p(D | α, β) in nats, constants included (MATH.md); defaults: the current α, β.

        ``alpha`` and ``beta`` may be arrays (broadcast against each other, e.g. a meshgrid):
        the result then has their broadcast shape, for drawing the evidence surface. A given
        ``beta`` is one noise precision shared by all outputs; with one β_k per output set,
        ``log_evidence()`` (beta=None) uses them. Classification: ln p(D | α), no β.
        """
        alpha = self._alpha if alpha is None else alpha
        if not self.likelihood.has_beta:
            if beta is not None:
                raise ValueError(_NO_BETA)
            return evidence.log_evidence_classification(
                self._evidence_eigenvalues(),
                cross_entropy=self.data_error,
                weight_error=self.weight_error,
                n_params=self.n_params,
                alpha=alpha,
            )
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
        return evidence.log_evidence(
            self._evidence_eigenvalues(),
            data_error=self.data_error,
            weight_error=self.weight_error,
            n_params=self.n_params,
            n_obs=self.n_data * self.n_outputs,
            alpha=alpha,
            beta=self._beta if beta is None else beta,
        )

    def optimize_evidence(
        self,
        *,
        fix_alpha: bool = False,
        fix_beta: bool = False,
        per_output: bool | None = None,
        tol: float = 1e-8,
        max_iter: int = 1000,
    ) -> Laplace:
        """Set α and β to MacKay's fixed point of the evidence at the trained weights; returns self.

        γ = Σ λ_i/(λ_i + α) (λ_i eigenvalues of β C), α ← γ/(2E_W), β ← (NK − γ)/(2E_D),
        iterated from the current α, β until the relative change is below ``tol``.
        ``fix_alpha`` / ``fix_beta`` hold one precision at its current value. ``per_output``:
        one β_k per output (β_k ← (N − γ_k)/(2E_Dk)); default: keep the current form of β.
        Classification re-estimates α only (β is fixed at 1).

        Afterwards ``alpha``, ``beta``, ``gamma`` and ``log_evidence()`` refer to the optimum and
        ``evidence_result`` records the iterations. Raises :class:`sigma.evidence.EvidenceError`
        (with the last α, β) when the iteration diverges or does not converge, ValueError for
        a curvature with negative eigenvalues (see ``negative``).
        """
        if per_output is None:
            per_output = self._weighted is not None
        start_alpha = self._alpha
        if not self.likelihood.has_beta:
            if per_output:
                raise ValueError(_NO_BETA)
            result = evidence.optimize(
                self._evidence_eigenvalues(),
                data_error=self.data_error,
                weight_error=self.weight_error,
                n_params=self.n_params,
                n_obs=None,
                alpha=start_alpha,
                beta=1.0,
                fix_alpha=fix_alpha,
                fix_beta=True,
                tol=tol,
                max_iter=max_iter,
            )
        elif per_output:
            if start_alpha == 0:
                start_alpha = self._alpha_from_zero()
            result = evidence.optimize_per_output(
                self._output_blocks(),
                data_errors=self.data_errors,
                weight_error=self.weight_error,
                n_data=self.n_data,
                alpha=start_alpha,
                betas=np.broadcast_to(self._beta, (self.n_outputs,)),
                fix_alpha=fix_alpha,
                fix_beta=fix_beta,
                tol=tol,
                max_iter=max_iter,
            )
        else:
            result = evidence.optimize(
                self._evidence_eigenvalues(),
                data_error=self.data_error,
                weight_error=self.weight_error,
                n_params=self.n_params,
                n_obs=self.n_data * self.n_outputs,
                alpha=start_alpha,
                beta=float(np.mean(self._beta)),
                fix_alpha=fix_alpha,
                fix_beta=fix_beta,
                tol=tol,
                max_iter=max_iter,
            )
        self._set_precisions(result.alpha, result.beta)
        self.evidence_result = result
        return self

    def _alpha_from_zero(self):
        """A proper starting α from α = 0: γ/(2E_W) with γ the rank of the curvature."""
        if not self.weight_error > 0:
            return 1.0
        lam = self.structure.eigenvalues
        return max(float(np.sum(lam > evidence.ROUNDOFF * np.abs(lam).max())), 1.0) / (
            2.0 * self.weight_error
        )

    def __repr__(self):
        return (
            f"Laplace(structure={self.structure.name!r}, curvature={self.curvature!r}, "
            f"P={self.n_params}, N={self.n_data}, K={self.n_outputs}, "
            f"alpha={self._alpha:.4g}, beta={np.array2string(np.asarray(self._beta), precision=4)})"
        )


def _frozen_state(model) -> list[np.ndarray]:
    """Copies of the non-trainable state the curvature depends on (normalisation statistics;
    not the random-seed state, which inference does not use)."""
    return [
        np.array(v.numpy())
        for v in model.non_trainable_variables
        if "seed_generator" not in getattr(v, "path", v.name)
    ]
