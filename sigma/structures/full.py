"""The full structure: the P×P curvature itself, the reference for every other structure.

    A = D_α + β C,   J A⁻¹ Jᵀ = (L⁻¹ Jᵀ)ᵀ (L⁻¹ Jᵀ)   with A = L Lᵀ (Cholesky), or
                               = (J V) diag(1/(α + β c)) (J V)ᵀ   with C = V diag(c) Vᵀ, one α.

The fit accumulates C (the GGN through per-sample Jacobians, or the exact Hessian by nested
tapes) and nothing more: the eigendecomposition, O(P³) and the dominant cost at small P, is
made only when something needs the eigenvalues (the evidence with one α, γ, a check of an
indefinite Hessian) and kept; until then — and always for one α per group, where the
eigenbasis of C no longer diagonalises A — the predictive, ln|A| and diag(A⁻¹) come from a
Cholesky factor of A, cached for the current precisions. Memory P² (C, its eigenvectors, the
eigensolver's workspace).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import tensorflow as tf

from sigma import evidence, likelihoods
from sigma._checks import n_samples
from sigma._linalg import eigh, one_blas_thread
from sigma.curvature.accumulate import as_batches, batch_size_for, first_samples, is_dataset
from sigma.curvature.engine import ROW_CHUNK
from sigma.progress import bar as progress_bar
from sigma.structures.base import Eigenbasis, restore_groups


class Full(Eigenbasis):
    """The full P×P curvature C (``matrix``); eigenpairs on demand (``eigenvalues``,
    ``vectors``)."""

    name = "full"
    curvatures = ("ggn", "ggn_mc", "hessian")
    can_clip = True
    memory_summary = "a P×P matrix and its eigendecomposition"

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=None):
        eng = self.engine_for(model)
        self.n_params = eng.n_params
        n = 1 if is_dataset(x) else n_samples(x)
        k = eng.n_outputs(first_samples(x, 1))
        per_sample = 2 * k * self.n_params if curvature == "ggn" else 64 * ROW_CHUNK
        data = as_batches(
            x,
            y if curvature == "hessian" else None,
            batch_size=batch_size_for(n, per_sample, batch_size),
        )
        likelihood = likelihoods.get(likelihood)
        self.groups = groups = likelihood.groups(k)
        dense = eng.dense(
            data, likelihood, curvature, strategy=strategy, progress=progress, groups=groups
        )
        # several precision groups: C_h each (G, P, P), combined as Σ_h β_h C_h (combine)
        self.matrices = dense if dense.ndim == 3 else None
        self._set_matrix(dense.sum(axis=0) if dense.ndim == 3 else dense)
        self.psd = curvature == "ggn"  # Σ (Lᵀ J)ᵀ (Lᵀ J): positive semi-definite by construction
        return self

    def _combine(self, beta):
        new = self.sibling(Full)
        new.n_params, new.psd, new.matrices = self.n_params, getattr(self, "psd", False), None
        new._set_matrix(np.einsum("g,gpq->pq", beta, self.matrices))
        return new

    def _group_traces(self, combined, alpha):
        """Tr(A⁻¹ C_h) = Σ_pq (A⁻¹)_pq (C_h)_pq, A⁻¹ from the Cholesky factor of A."""
        with one_blas_thread():
            inverse, _ = scipy.linalg.lapack.dtrtri(combined._factor(alpha, 1.0), lower=1)
            a_inv = inverse.T @ inverse
        return np.einsum("pq,gpq->g", a_inv, self.matrices)

    def _set_matrix(self, matrix):
        self.matrix = matrix
        self._eig = self._vecs = None
        self._chol = (None, None)

    # -- eigenpairs, on demand ----------------------------------------------------------------
    def _decompose(self):
        if self._eig is None:
            self._eig, self._vecs = eigh(self.matrix)

    @property
    def eigenvalues(self) -> np.ndarray:
        self._decompose()
        return self._eig

    @property
    def vectors(self) -> np.ndarray:
        self._decompose()
        return self._vecs

    def _eigenbasis(self, alpha) -> bool:
        """Use C's eigenbasis: one α and the eigenpairs already computed."""
        return np.ndim(alpha) == 0 and self._eig is not None

    def clearly_positive_definite(self, alpha, beta) -> bool:
        # C ⪰ 0 has λ_max ≤ trace(C): A's smallest eigenvalue ≥ min α is then above round-off of
        # its largest without any decomposition.
        if not getattr(self, "psd", False) or self._eig is not None and np.ndim(alpha) == 0:
            return False
        a = np.asarray(alpha, np.float64)
        top = a.max() + beta * max(float(np.trace(self.matrix)), 0.0)
        return bool(a.min() > evidence.ROUNDOFF * top)

    # -- A = D_α + βC through its Cholesky factor ------------------------------------------------
    def _factor(self, alpha, beta):
        """Lower Cholesky factor of A = D_α + βC, kept for the last (α, β)."""
        key = (np.asarray(alpha, np.float64).tobytes(), float(beta))
        cached_key, factor = self._chol
        if cached_key != key:
            a = beta * self.matrix
            a[np.diag_indices_from(a)] += alpha
            with one_blas_thread():
                factor = scipy.linalg.cholesky(a, lower=True, check_finite=False)
            self._chol = (key, factor)
        return factor

    def logdet(self, alpha, beta) -> float:
        """ln|D_α + βC|."""
        if self._eigenbasis(alpha):
            return super().logdet(alpha, beta)
        return float(2.0 * np.sum(np.log(np.diag(self._factor(alpha, beta)))))

    def inverse_diagonal(self, alpha, beta) -> np.ndarray:
        """diag(A⁻¹), (P,): Σ_i V_pi² / (α + β c_i), or the column norms of L⁻¹."""
        if self._eigenbasis(alpha):
            return (self._vecs**2) @ (1.0 / (alpha + beta * self._eig))
        with one_blas_thread():
            inverse, info = scipy.linalg.lapack.dtrtri(self._factor(alpha, beta), lower=1)
        if info:  # pragma: no cover - a Cholesky factor is non-singular
            raise np.linalg.LinAlgError(f"the Cholesky factor of A is singular (info={info})")
        return np.einsum("ip,ip->p", inverse, inverse)

    def inverse_quadratic(self, v, alpha, beta) -> float:
        """vᵀA⁻¹v: Σ_i (V_iᵀv)² / (α + β c_i), or ‖L⁻¹v‖²."""
        v = np.asarray(v, np.float64)
        if self._eigenbasis(alpha):
            z = self._vecs.T @ v
            return float(np.sum(z**2 / (alpha + beta * self._eig)))
        with one_blas_thread():
            z = scipy.linalg.solve_triangular(self._factor(alpha, beta), v, lower=True)
        return float(z @ z)

    # -- predictive -----------------------------------------------------------------------------
    def _jacobian_batches(self, model, x, batch_size):
        """Yield J(x) per batch, (B, K, P) float64."""
        batches = self.engine_for(model).jacobians(x, batch_size=batch_size, extra=2)
        for _, j in progress_bar(batches, desc="full predictive"):
            yield j.astype(np.float64)

    def _projected(self, model, x, batch_size):
        """Yield J(x) V for batches of x: (B, K, P)."""
        for j in self._jacobian_batches(model, x, batch_size):
            with one_blas_thread():
                jv = j @ self._vecs
            yield jv

    def _whitened(self, model, x, alpha, beta, batch_size):
        """Yield L⁻¹ J(x)ᵀ per batch as (B, K, P): rows whose inner products are J A⁻¹ Jᵀ."""
        factor = self._factor(alpha, beta)
        for j in self._jacobian_batches(model, x, batch_size):
            b, k, p = j.shape
            with one_blas_thread():
                z = scipy.linalg.solve_triangular(
                    factor, j.reshape(b * k, p).T, lower=True, check_finite=False
                )
            yield z.T.reshape(b, k, p)

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        if self._eigenbasis(alpha):
            return super().predictive_variance(model, x, alpha, beta, batch_size=batch_size)
        return np.concatenate(
            [
                np.einsum("nkp,nkp->nk", z, z)
                for z in self._whitened(model, x, alpha, beta, batch_size)
            ]
        )

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        if self._eigenbasis(alpha):
            return super().predictive_covariance(model, x, alpha, beta, batch_size=batch_size)
        return np.concatenate(
            [
                np.einsum("nkp,njp->nkj", z, z)
                for z in self._whitened(model, x, alpha, beta, batch_size)
            ]
        )

    # -- saving ---------------------------------------------------------------------------------
    def state(self):
        arrays = {"matrix": self.matrix}
        if self._eig is not None:
            arrays.update(eigenvalues=self._eig, vectors=self._vecs)
        if getattr(self, "matrices", None) is not None:
            arrays.update(matrices=self.matrices, group_outputs=self.groups.outputs)
        info = {"n_params": self.n_params, "psd": bool(getattr(self, "psd", False))}
        if self.groups is not None:
            info["groups"] = self.groups.describe()
        return arrays, info

    def restore(self, model, arrays, info):
        self.n_params, self.psd = int(info["n_params"]), bool(info["psd"])
        self._set_matrix(arrays["matrix"])
        if "eigenvalues" in arrays:
            self._eig, self._vecs = arrays["eigenvalues"], arrays["vectors"]
        self.matrices = arrays.get("matrices")
        self.groups = restore_groups(info.get("groups"), arrays.get("group_outputs"))
        return self

    # -- serving --------------------------------------------------------------------------------
    def _inverse_factor(self, alpha, beta) -> np.ndarray:
        """S (P, P) with A⁻¹ = S Sᵀ: V diag(1/√(α + βc)) for one α with the eigenpairs known,
        else L⁻ᵀ from the Cholesky factor."""
        if self._eigenbasis(alpha):
            return self._vecs / np.sqrt(alpha + beta * self._eig)
        with one_blas_thread():
            inverse, _ = scipy.linalg.lapack.dtrtri(self._factor(alpha, beta), lower=1)
        return np.ascontiguousarray(inverse.T)

    def export(self, model, alpha, beta):
        return {"factor": self._inverse_factor(alpha, beta)}, {}

    @staticmethod
    def graph_variance(eng, spec, arrays, x):
        _, j = eng.jacobian(eng.weights(), x)
        js = tf.einsum("bkp,pq->bkq", tf.cast(j, tf.float64), arrays["factor"])
        return tf.reduce_sum(tf.square(js), axis=-1)

    # -- capabilities ---------------------------------------------------------------------------
    def clip_negative(self):
        self._decompose()
        self._eig = np.maximum(self._eig, 0.0)
        self.matrix = (self._vecs * self._eig) @ self._vecs.T
        self._chol = (None, None)

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        p = self.engine_for(model).n_params
        per = n_outputs * p if curvature != "hessian" else 64 * p
        jac = batch_size_for(n_data, per, batch_size) * per * 8 * 2
        return 4 * p * p * 8 + jac
