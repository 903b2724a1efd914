"""The Laplace approximation around trained weights: error bars σ for every output.

    A = α I + β C        C = Gauss–Newton G or exact Hessian H of E_D (MATH.md)
    σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x),   g_k(x) = ∂f_k(x)/∂w at the trained weights
"""

from __future__ import annotations

import numpy as np

from sigma import likelihoods
from sigma._checks import check_inputs, check_precision, model_dtype
from sigma.curvature import data_error, outputs, prepare
from sigma.params import flat_weights, num_params
from sigma.structures import STRUCTURES

CURVATURES = ("ggn", "hessian")


class Laplace:
    """Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras regression model.

    Parameters
    ----------
    model : keras.Model, built and trained; f(x) ∈ R^K per sample.
    x : array (N, ...) of training inputs, matching the model's input shape.
    y : array (N, K) of training targets.
    curvature : "ggn" (Gauss–Newton, always PSD) or "hessian" (exact, nested tapes).
    structure : how C is stored; see :mod:`sigma.structures` (``"full"``: P×P).
    alpha : prior precision α ≥ 0 (w ~ N(0, α⁻¹ I)).
    beta : noise precision β > 0 (t ~ N(f, β⁻¹ I)).
    batch_size : samples per batch when accumulating the curvature (default: automatic).

    Raises ValueError for bad input and when A = α I + β C is not positive definite.
    """

    def __init__(
        self,
        model,
        x,
        y,
        *,
        likelihood: str = "regression",
        curvature: str = "ggn",
        structure: str = "full",
        alpha: float = 1.0,
        beta: float = 1.0,
        batch_size: int | None = None,
    ):
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {tuple(STRUCTURES)}, got {structure!r}")
        self._alpha = check_precision(alpha, "alpha", allow_zero=True)
        self._beta = check_precision(beta, "beta", allow_zero=False)
        self.likelihood = likelihoods.get(likelihood)
        x, y, k = prepare(model, x, y, self.likelihood)
        self.model = model
        self.curvature = curvature
        self.batch_size = batch_size
        self.n_data, self.n_outputs, self.n_params = len(x), k, num_params(model)
        self.w_map = flat_weights(model).astype(np.float64)
        self.data_error = data_error(model, x, y, likelihood=self.likelihood)  # E_D
        self.weight_error = 0.5 * float(self.w_map @ self.w_map)  # E_W
        self.structure = STRUCTURES[structure]().fit(
            model, x, y, likelihood=self.likelihood, curvature=curvature, batch_size=batch_size
        )
        self._check_positive_definite(self._alpha, self._beta)

    # -- precisions -----------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        value = check_precision(value, "alpha", allow_zero=True)
        self._check_positive_definite(value, self._beta)
        self._alpha = value

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value):
        value = check_precision(value, "beta", allow_zero=False)
        self._check_positive_definite(self._alpha, value)
        self._beta = value

    def _check_positive_definite(self, alpha, beta):
        lam = self.structure.eigenvalues
        smallest = alpha + beta * float(lam.min()) if lam.size else alpha
        if lam.size < self.n_params:
            smallest = min(smallest, alpha)
        if not smallest > 0:
            hint = (
                f"use curvature='ggn' (always positive semi-definite) or alpha > "
                f"{-beta * float(lam.min()):.4g}"
                if lam.size and lam.min() < 0
                else "use alpha > 0"
            )
            raise ValueError(
                f"the posterior precision A = alpha*I + beta*C is not positive definite "
                f"(smallest eigenvalue {smallest:.4g} with alpha={alpha:g}, beta={beta:g}, "
                f"curvature={self.curvature!r}): {hint}"
            )

    # -- prediction -----------------------------------------------------------------------------
    def _check_weights_unchanged(self):
        if not np.array_equal(flat_weights(self.model).astype(np.float64), self.w_map):
            raise ValueError(
                "model weights changed since this Laplace was fitted: build a new Laplace"
            )

    def _inputs(self, x):
        self._check_weights_unchanged()
        return check_inputs(self.model, x, "x").astype(model_dtype(self.model))

    def predict(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Predictive mean and standard deviation at inputs x (N, ...).

        Returns ``(mean, std)``, both (N, K) float64. ``std² = 1/β + gᵀA⁻¹g`` (noise included);
        with ``noise=False`` only the weight-uncertainty part ``gᵀA⁻¹g``.
        """
        x = self._inputs(x)
        mean = outputs(self.model, x)
        var = self.structure.predictive_variance(
            self.model, x, self._alpha, self._beta, batch_size=batch_size
        )
        if noise:
            var = var + 1.0 / self._beta
        return mean, np.sqrt(var)

    def predictive_covariance(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Σ(x) = β⁻¹ I + J(x) A⁻¹ J(x)ᵀ for each input: (N, K, K), float64."""
        x = self._inputs(x)
        cov = self.structure.predictive_covariance(
            self.model, x, self._alpha, self._beta, batch_size=batch_size
        )
        if noise:
            cov = cov + np.eye(self.n_outputs) / self._beta
        return cov

    def __repr__(self):
        return (
            f"Laplace(structure={self.structure.name!r}, curvature={self.curvature!r}, "
            f"P={self.n_params}, N={self.n_data}, K={self.n_outputs}, "
            f"alpha={self._alpha:.4g}, beta={self._beta:.4g})"
        )
