"""Structures of the posterior precision A = α I + β C (shared/design/MATH.md, "Structures").

A structure holds the curvature C of the data term in some approximate form and answers the
three questions the rest of the package asks, whatever the form:

* ``eigenvalues`` — the eigenvalues of C (length r ≤ P; the P − r others are zero). The log
  evidence, ln|A| and the effective number of parameters γ follow from them for any α, β.
* ``predictive_variance(model, x, alpha, beta)`` — diag of J(x) A⁻¹ J(x)ᵀ per sample, (N, K).
* ``predictive_covariance(model, x, alpha, beta)`` — J(x) A⁻¹ J(x)ᵀ, (N, K, K).

Changing α or β never refits the curvature: each structure keeps C eigen-decomposed, so A⁻¹ is
diagonal in that basis. New structures subclass :class:`Structure` and register in
:data:`STRUCTURES`.
"""

from __future__ import annotations

import importlib
from collections.abc import MutableMapping

import numpy as np

from sigma.curvature import _batches, batch_size_for, gauss_newton, hessian, jacobian_function
from sigma.distribute import dense_curvature, is_dataset
from sigma.params import flat_weights, num_params


class Structure:
    """Base class: a fitted curvature C in some structure."""

    name = "base"
    # True: fit() also takes x as a tf.data.Dataset of (x, y) batches (y None) and the keywords
    # strategy= and progress= (see sigma.distribute.fit_structure); False: arrays only.
    streaming = False

    def fit(self, model, x, y, *, likelihood, curvature: str, batch_size: int | None) -> Structure:
        """Accumulate C over (x, y): ``curvature`` is "ggn" or "hessian"; ``likelihood`` a
        :mod:`sigma.likelihoods` object (its ``hessian_sqrt`` gives the GGN's Λ_n = L_n L_nᵀ)."""
        raise NotImplementedError

    def posterior_weights(self, model) -> np.ndarray:
        """The weights the posterior covers, (n_params,) in package order (default: all; the
        last-layer structure covers its layer only). E_W = ½‖·‖² in the evidence."""
        return flat_weights(model)

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of C, shape (r,), r ≤ P (the remaining P − r are zero)."""
        raise NotImplementedError

    def logdet(self, alpha: float, beta: float) -> float:
        """ln|α I + β C| from the eigenvalues of C."""
        lam = self.eigenvalues
        return float(
            np.sum(np.log(alpha + beta * lam)) + (self.n_params - lam.size) * np.log(alpha)
        )

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None) -> np.ndarray:
        cov = self.predictive_covariance(model, x, alpha, beta, batch_size=batch_size)
        return np.einsum("nkk->nk", cov)

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None) -> np.ndarray:
        raise NotImplementedError

    # Optional (used by sigma.evidence via Laplace); structures without them say so clearly.
    def clip_negative(self) -> None:
        """Replace negative eigenvalues of C by zero (C → its positive semi-definite part)."""
        raise NotImplementedError

    def output_blocks(self, model, x, *, batch_size=None) -> np.ndarray:
        """C_k = Σ_n J_nkᵀ J_nk for each output k, (K, P, P) (regression; Σ_k C_k = G)."""
        raise NotImplementedError

    def reweighted(self, matrix) -> Structure:
        """A new structure of the same kind holding the given (P, P) curvature in place of C."""
        raise NotImplementedError


class Eigenbasis(Structure):
    """A structure that keeps C = V diag(c) Vᵀ over its P weights (``_eig``, ``_vecs``) and
    yields J(x) V in batches (``_projected``): A⁻¹ = V diag(1/(α + β c)) Vᵀ, so
    J A⁻¹ Jᵀ = (J V) diag(1/(α + β c)) (J V)ᵀ. Shared by "full" and "last_layer"."""

    def _projected(self, model, x, batch_size):
        raise NotImplementedError

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        return np.concatenate(
            [np.einsum("nkp,p->nk", jv**2, inv) for jv in self._projected(model, x, batch_size)]
        )

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        return np.concatenate(
            [
                np.einsum("nkp,p,njp->nkj", jv, inv, jv)
                for jv in self._projected(model, x, batch_size)
            ]
        )


class Full(Eigenbasis):
    """The full P×P curvature, eigen-decomposed once: C = V diag(c) Vᵀ.

    A⁻¹ = V diag(1/(α + β c)) Vᵀ, so J A⁻¹ Jᵀ = (J V) diag(1/(α + β c)) (J V)ᵀ.
    Memory P²; the reference for every other structure.
    """

    name = "full"
    streaming = True

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=False):
        self.n_params = num_params(model)
        if is_dataset(x) or strategy is not None:  # batches of a dataset and/or across replicas
            c = dense_curvature(
                model,
                x,
                y,
                likelihood=likelihood,
                curvature=curvature,
                batch_size=batch_size,
                strategy=strategy,
                progress=progress,
            )
        elif curvature == "ggn":
            c = gauss_newton(model, x, likelihood=likelihood, batch_size=batch_size)
        elif curvature == "hessian":
            c = hessian(model, x, y, likelihood=likelihood, batch_size=batch_size)
        else:  # pragma: no cover - validated by Laplace
            raise ValueError(f"curvature must be 'ggn' or 'hessian', got {curvature!r}")
        self.matrix = c
        self._eig, self._vecs = np.linalg.eigh(c)
        return self

    @property
    def eigenvalues(self):
        return self._eig

    def _projected(self, model, x, batch_size):
        """Yield J(x) V for batches of x: (B, K, P). The Jacobian graph is traced once."""
        if getattr(self, "_jac", None) is None:
            self._jac = jacobian_function(model, x)
        k = int(np.prod(model(np.asarray(x[:1]), training=False).shape[1:]))
        bs = batch_size_for(len(x), 2 * k * self.n_params, batch_size)
        for s in _batches(len(x), bs):
            yield self._jac(x[s])[1].numpy().astype(np.float64) @ self._vecs

    def clip_negative(self):
        self._eig = np.maximum(self._eig, 0.0)
        self.matrix = (self._vecs * self._eig) @ self._vecs.T

    def output_blocks(self, model, x, *, batch_size=None):
        if getattr(self, "_jac", None) is None:
            self._jac = jacobian_function(model, x)  # shared with _projected: traced once
        jac = self._jac
        k = int(np.prod(model(np.asarray(x[:1]), training=False).shape[1:]))
        blocks = np.zeros((k, self.n_params, self.n_params))
        for s in _batches(len(x), batch_size_for(len(x), k * self.n_params, batch_size)):
            j = jac(x[s])[1].numpy().astype(np.float64)
            blocks += np.einsum("nkp,nkq->kpq", j, j)
        return blocks

    def reweighted(self, matrix):
        new = Full()
        new.n_params, new.matrix = self.n_params, 0.5 * (matrix + matrix.T)
        new._eig, new._vecs = np.linalg.eigh(new.matrix)
        new._jac = getattr(self, "_jac", None)
        return new


class Registry(MutableMapping):
    """Structure classes by name, imported on first use.

    The built-in structures live in modules that import :class:`Structure` from this one, so
    they are registered by "module:Class" and imported when looked up — importing any of them
    first (``import sigma.kfac``) then never meets a half-initialised module. Register your own
    with ``STRUCTURES["name"] = MyStructure``.
    """

    def __init__(self, entries: dict):
        self._entries = dict(entries)

    def __getitem__(self, name):
        entry = self._entries[name]
        if isinstance(entry, str):
            module, cls = entry.split(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), cls)
        return entry

    def __setitem__(self, name, cls):
        self._entries[name] = cls

    def __delitem__(self, name):
        del self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


STRUCTURES = Registry(
    {
        "full": Full,
        "lowrank": "sigma.lowrank:LowRank",
        "last_layer": "sigma.last_layer:LastLayer",
        "diag": "sigma.diag:Diag",
        "kfac": "sigma.kfac:KFAC",
    }
)
