"""The low-rank structure: the top-k eigenpairs of the curvature by Lanczos on matrix-free
curvature-vector products, for any differentiable model (MATH.md, "Structures").

    C ≈ U diag(λ) Uᵀ,   U (P, k) orthonormal,   the other P − k eigenvalues taken as zero

    A⁻¹ = U diag(1/(α + βλ)) Uᵀ + (1/α)(I − U Uᵀ)                       (needs α > 0)
    σ_k²(x) − 1/β = gᵀA⁻¹g = (1/α)(‖g‖² − ‖Uᵀg‖²) + Σ_i (u_iᵀg)² / (α + βλ_i)

Products, one pass over the data each, traced once and reused for every batch and every
Lanczos step (:class:`sigma.distribute.Accumulator`; under a ``tf.distribute.Strategy`` the
per-replica sums are reduced):

* GGN:      G v = Σ_n J_nᵀ Λ_n (J_n v) — J_n v by forward mode (``ForwardAccumulator``) and
  J_nᵀ u by reverse mode (``GradientTape.gradient`` with ``output_gradients``);
* Hessian:  H v = ∇(∇E_D · v) by nested tapes.

Lanczos (:func:`lanczos`) keeps every Krylov vector and re-orthogonalises fully, so there are
no spurious copies; it stops when the top-k Ritz residuals fall below ``tol`` times the largest
eigenvalue. "Top" means largest in magnitude: the best rank-k approximation of C (for the
Hessian, large negative curvature is kept and the positive-definiteness check can see it).
When 2k + 1 > P a Lanczos run would cost about P products anyway, and the P×P curvature is
accumulated and eigen-decomposed exactly instead (``method == "dense"``).

Memory: U and the Krylov basis, P·(k + steps) floats; per batch the activations of the
forward/backward passes. The predictive needs, per test sample, Uᵀg_k (k forward-mode
products per batch) and ‖g_k‖² — the diagonal of J Jᵀ, from the layer inputs and output
sensitivities of :mod:`sigma.layers` (for a Dense layer ‖∂f_k/∂W‖² = ‖ã‖² ‖s_k‖², no per-sample
gradient formed), or with ``predictive="jacobian"`` from per-sample Jacobians in chunks of B_c
samples with B_c·K·P ≤ 2²⁵ elements, never for all test samples at once.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import tensorflow as tf
from threadpoolctl import threadpool_limits
from tqdm import tqdm  # plain text bars: tqdm.auto warns in kernels without ipywidgets

from sigma import likelihoods
from sigma._checks import model_dtype
from sigma.curvature import per_sample_jacobian
from sigma.distribute import (
    Accumulator,
    as_dataset,
    batch_size_for,
    dense_curvature,
    is_dataset,
)
from sigma.memory import activation_elements
from sigma.params import flat_weights, functional_forward, num_params
from sigma.structures import Structure


def lanczos(
    matvec,
    n: int,
    k: int,
    *,
    tol: float = 1e-8,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
):
    """Top-k eigenpairs (largest |λ|) of a symmetric n×n operator, by Lanczos with full
    re-orthogonalisation.

    matvec : v (n,) → C v (n,), float64.  tol : stop when every one of the k Ritz residuals
    ‖C u_i − θ_i u_i‖ is below ``tol · max|θ|``.  max_steps : Krylov dimension cap (default
    min(n, max(3k, k + 50))).  A breakdown (an invariant subspace found, e.g. for a matrix of
    rank < k or with few distinct eigenvalues) continues from a fresh random vector orthogonal
    to the basis, so the multiplicities are found there. (Like every single-vector Krylov
    method, a sequence that has not broken down sees one copy of an exactly repeated
    eigenvalue; other copies appear only through round-off. Network curvatures rarely have
    exact repeats.)

    Returns ``(values (k,), vectors (n, k), info)`` with values sorted by decreasing value and
    ``info = {"steps", "residuals" (k,), "converged"}``. Warns (RuntimeWarning) when the cap
    is reached before convergence; the Ritz pairs are then the best the Krylov space holds.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got {k}")
    m_max = min(n, max(3 * k, k + 50)) if max_steps is None else min(n, int(max_steps))
    if m_max < k:
        raise ValueError(f"max_steps must be at least k = {k}, got {max_steps}")
    # The basis updates are memory-bound matrix-vector products: one BLAS thread is faster
    # than several competing with TensorFlow's (8 s against 1.7 s for 430 steps at n = 2,410).
    with threadpool_limits(limits=1, user_api="blas"):
        return _lanczos(matvec, n, k, tol, m_max, np.random.default_rng(seed), progress)


def _lanczos(matvec, n, k, tol, m_max, rng, progress):
    basis = np.zeros((m_max, n))
    diag, off = np.zeros(m_max), np.zeros(m_max)
    q = rng.standard_normal(n)
    basis[0] = q / np.linalg.norm(q)
    scale, bound, steps, restarted, converged = 0.0, 0.0, 0, 0, False
    theta = s = idx = residuals = None
    bar = tqdm(total=m_max, desc="Lanczos", disable=not progress, leave=False)
    for j in range(m_max):
        z = np.asarray(matvec(basis[j]), dtype=np.float64)
        diag[j] = basis[j] @ z
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            z -= (basis[: j + 1] @ z) @ basis[: j + 1]
        off[j] = np.linalg.norm(z)
        steps = j + 1
        bar.update(1)
        bound = max(bound, abs(diag[j]) + off[j] + (off[j - 1] if j else 0.0))  # ≥ ‖T‖-ish
        tiny = 1e-12 * max(bound, 1e-300)
        breakdown = off[j] <= tiny  # span(basis) is invariant under C
        # a fresh vector of the (invariant) complement that C maps to 0: the rest is null
        null_rest = breakdown and restarted == j and abs(diag[j]) <= tiny
        # Ritz pairs (an O(m²) tridiagonal solve) at k steps, then every ~5% more steps
        if steps >= k and (
            (steps - k) % max(1, steps // 20) == 0 or breakdown or steps in (n, m_max)
        ):
            theta, s = _tridiagonal_eigh(diag[:steps], off[: steps - 1])
            scale = max(scale, float(np.abs(theta).max()))
            idx = np.argsort(-np.abs(theta))[:k]
            residuals = off[j] * np.abs(s[-1, idx])
            if steps == n or null_rest or (not breakdown and np.all(residuals <= tol * scale)):
                converged = True
                break
        if steps == m_max:
            break
        if breakdown:  # continue from a random vector orthogonal to the invariant subspace
            off[j] = 0.0
            z = rng.standard_normal(n)
            for _ in range(2):
                z -= (basis[:steps] @ z) @ basis[:steps]
            basis[steps], restarted = z / np.linalg.norm(z), steps
        else:
            basis[steps] = z / off[j]
    bar.close()
    if not converged:
        warnings.warn(
            f"Lanczos stopped after {steps} steps without reaching tol={tol:g}: largest relative "
            f"residual {residuals.max() / max(scale, 1e-300):.2g}; the top-{min(k, steps)} Ritz "
            "pairs are used as they are (raise max_steps or tol)",
            RuntimeWarning,
            stacklevel=3,
        )
    vectors = (s[:, idx].T @ basis[:steps]).T
    order = np.argsort(-theta[idx])
    info = {"steps": steps, "residuals": residuals[order], "converged": converged}
    return theta[idx][order], vectors[:, order], info


def _tridiagonal_eigh(d, e):
    """Eigenpairs of the symmetric tridiagonal matrix with diagonal d and off-diagonal e."""
    if d.size == 1:
        return d.copy(), np.ones((1, 1))
    try:
        return scipy.linalg.eigh_tridiagonal(d, e)
    except np.linalg.LinAlgError:  # pragma: no cover - fall back to the dense solver
        return np.linalg.eigh(np.diag(d) + np.diag(e, 1) + np.diag(e, -1))


def curvature_product_body(model, likelihood, curvature: str):
    """Per-batch body ``(batch, v) -> C_batch v``, (P,), in the model dtype.

    ``"ggn"``: Σ_b J_bᵀ Λ_b J_b v (forward mode for J v, reverse mode for Jᵀ u; Λ = L Lᵀ from
    :meth:`hessian_sqrt` of the likelihood, held constant). ``"hessian"``: H_batch v by nested
    tapes (needs ``batch = (x_b, y_b)``).
    """
    lik = likelihoods.get(likelihood)
    forward = functional_forward(model)
    w = tf.constant(flat_weights(model))

    def ggn(batch, v):
        with tf.GradientTape() as tape:
            tape.watch(w)
            with tf.autodiff.ForwardAccumulator(w, v) as acc:
                f = forward(w, batch[0])
            jv = acc.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # (B, K)
        root = lik.hessian_sqrt(f)
        if root is not None:  # Λ (J v) = L (Lᵀ J v)
            root = tf.cast(root, jv.dtype)
            jv = tf.einsum("bkj,bj->bk", root, tf.einsum("bkj,bk->bj", root, jv))
        return tape.gradient(
            f, w, output_gradients=jv, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )

    def hessian(batch, v):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                e = lik.data_error(forward(w, batch[0]), batch[1])
            g = inner.gradient(e, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            gv = tf.reduce_sum(g * v)
        return outer.gradient(gv, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    if curvature not in ("ggn", "hessian"):
        raise ValueError(f"curvature must be 'ggn' or 'hessian', got {curvature!r}")
    return ggn if curvature == "ggn" else hessian


def curvature_product(
    model,
    x,
    y=None,
    *,
    likelihood="regression",
    curvature="ggn",
    batch_size=None,
    strategy=None,
    progress=False,
):
    """The matrix-free product v ↦ C v over all the data, as a reusable function.

    x : array (N, ...) or a dataset of ``(x, y)`` batches; y : (N, K) targets (arrays; needed
    for ``curvature="hessian"``). Returns ``matvec(v (P,)) -> (P,) float64`` whose per-batch
    graph is traced once; ``matvec.accumulator`` is the :class:`Accumulator` behind it.
    """
    p = num_params(model)
    dtype = model_dtype(model)
    if curvature == "hessian" and y is None and not is_dataset(x):
        raise ValueError("curvature='hessian' needs the targets y")
    n = 1 if is_dataset(x) else len(x)
    bs = batch_size_for(n, 8 * activation_elements(model), batch_size)
    data = as_dataset(x, y if curvature == "hessian" else None, batch_size=bs)
    acc = Accumulator(
        curvature_product_body(model, likelihood, curvature),
        data,
        arg_specs=[tf.TensorSpec([p], dtype)],
        strategy=strategy,
        cache=not is_dataset(x),  # arrays: reuse the batches in every Lanczos step
    )

    def matvec(v):
        return acc(np.asarray(v).reshape(p).astype(dtype))

    matvec.accumulator = acc
    return matvec


class LowRank(Structure):
    """C ≈ U diag(λ) Uᵀ from its top-``rank`` eigenpairs (Lanczos), the rest taken as zero.

    Parameters
    ----------
    rank : k, the number of eigenpairs kept (capped at P).
    tol : Lanczos tolerance on the Ritz residuals relative to the largest eigenvalue
        (default 1e-8 for float64 models, 1e-5 for lower precision).
    max_steps : cap on the Lanczos steps, i.e. passes over the data (default max(3k, k + 50)).
    seed : seed of the Lanczos start vector.
    predictive : how ‖g‖² and Uᵀg are computed at test inputs: "layerwise" (J Jᵀ from layer
        inputs and sensitivities, :mod:`sigma.layers`; Uᵀg by k forward-mode products) or
        "jacobian" (per-sample Jacobians in memory-bounded chunks; slower, the reference).

    After ``fit``: ``eigenvalues`` (k,), ``vectors`` (P, k), ``method`` ("lanczos" or "dense"),
    ``info`` (steps, residuals). Needs α > 0 unless k = P.
    """

    name = "lowrank"
    streaming = True

    def __init__(
        self,
        rank: int = 20,
        *,
        tol: float | None = None,
        max_steps: int | None = None,
        seed: int = 0,
        predictive: str = "layerwise",
    ):
        if isinstance(rank, bool) or int(rank) != rank or int(rank) < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if predictive not in ("layerwise", "jacobian"):
            raise ValueError(f"predictive must be 'layerwise' or 'jacobian', got {predictive!r}")
        self.rank, self.tol, self.max_steps, self.seed = int(rank), tol, max_steps, int(seed)
        self.predictive = predictive

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=False):
        p = num_params(model)
        self.n_params = p
        k = min(self.rank, p)
        if 2 * k + 1 > p:
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
            lam, vecs = np.linalg.eigh(c)
            top = np.argsort(-np.abs(lam))[:k]
            top = top[np.argsort(-lam[top])]
            self._eig, self._vecs = lam[top], vecs[:, top]
            self.method, self.info = "dense", {"steps": 0}
        else:
            tol = self.tol
            if tol is None:
                tol = 1e-8 if model_dtype(model) == "float64" else 1e-5
            matvec = curvature_product(
                model,
                x,
                y,
                likelihood=likelihood,
                curvature=curvature,
                batch_size=batch_size,
                strategy=strategy,
            )
            self._eig, self._vecs, self.info = lanczos(
                matvec,
                p,
                k,
                tol=tol,
                max_steps=self.max_steps,
                seed=self.seed,
                progress=progress,
            )
            self.info["tracing_count"] = matvec.accumulator.tracing_count
            self.method = "lanczos"
        self._proj = None
        # ‖g‖² − ‖Uᵀg‖² cancels: below this fraction of ‖g‖² it is round-off of the model dtype
        self._resid_floor = 10 * float(np.finfo(model_dtype(model)).eps)
        return self

    @property
    def eigenvalues(self) -> np.ndarray:
        """The k kept eigenvalues of C, decreasing, (k,)."""
        return self._eig

    @property
    def vectors(self) -> np.ndarray:
        """The k eigenvectors U, (P, k), orthonormal columns."""
        return self._vecs

    def clip_negative(self):
        self._eig = np.maximum(self._eig, 0.0)

    # -- predictive -----------------------------------------------------------------------------
    def _projection(self, model, x):
        """Traced once: x_b -> (J Jᵀ (B, K, K), J U (B, K, k)), float64, and the batch size.

        ``"layerwise"``: J Jᵀ from the layer inputs and output sensitivities of
        :mod:`sigma.layers` (no per-sample gradient for Dense layers; K backward passes per
        batch) and J U by k forward-mode products. ``"jacobian"``: both from per-sample
        Jacobians in chunks (B_c·K·P ≤ 2²⁵ elements) — used when k = P, and as the reference.
        """
        if self._proj is not None:
            return self._proj
        forward = functional_forward(model)
        w = tf.constant(flat_weights(model))
        dtype = model_dtype(model)
        u = tf.constant(self._vecs.astype(dtype))
        spec = tf.TensorSpec([None, *x.shape[1:]], dtype)
        r, k = self._vecs.shape[1], int(np.prod(model(x[:1], training=False).shape[1:]))
        path = "jacobian" if r == self.n_params else self.predictive
        if path == "layerwise":
            from sigma.layers import capture, contract, per_sample_elements, plan_layers, probe

            plan = probe(model, plan_layers(model), x[:8])
            ones = [[None, None, tf.ones((b.d_in, b.d_out), dtype)] for b in plan.fast]
            ones += [[None, tf.ones((g.size,), dtype)] for g in plan.generic]

            def jvp(xb, ui):
                with tf.autodiff.ForwardAccumulator(w, ui) as acc:
                    f = forward(w, xb)
                return acc.jvp(f, unconnected_gradients=tf.UnconnectedGradients.ZERO)

            @tf.function(input_signature=[spec], autograph=False)
            def proj(xb):
                gram = contract(plan, capture(model, plan, xb), ones, covariance=True)
                ju = tf.vectorized_map(lambda ui: jvp(xb, ui), tf.transpose(u))  # (k, B, K)
                return tf.cast(gram, tf.float64), tf.cast(tf.transpose(ju, (1, 2, 0)), tf.float64)

            per_sample = per_sample_elements(plan, k) + 4 * (r + 2) * activation_elements(model)
        else:

            @tf.function(input_signature=[spec], autograph=False)
            def proj(xb):
                j = per_sample_jacobian(forward, w, xb)  # (B_c, K, P), a chunk
                gram = tf.einsum("bkp,blp->bkl", j, j)
                ju = tf.einsum("bkp,pr->bkr", j, u)
                return tf.cast(gram, tf.float64), tf.cast(ju, tf.float64)

            per_sample = 2 * k * self.n_params
        self._proj = (proj, per_sample, path)
        return self._proj

    def _parts(self, model, x, alpha, batch_size):
        if self._vecs.shape[1] < self.n_params and not alpha > 0:
            raise ValueError(
                f"structure 'lowrank' keeps {self._vecs.shape[1]} of the P = {self.n_params} "
                "eigenvalues of C and takes the others as zero, so A = alpha*I + beta*C needs "
                f"alpha > 0, got alpha={alpha:g}"
            )
        proj, per_sample, _ = self._projection(model, x)
        bs = batch_size_for(len(x), per_sample, None)
        if batch_size is not None:
            bs = min(bs, batch_size_for(len(x), 1, batch_size))
        for start in range(0, len(x), bs):
            yield (t.numpy() for t in proj(x[start : start + bs]))

    def _residual(self, gram, ju):
        """(J Jᵀ − J U Uᵀ Jᵀ): the part of J Jᵀ outside span(U) (exactly 0 when k = P).

        It is a difference of two nearly equal terms when g lies almost in span(U); for a
        float32 model their round-off (~eps·‖g‖²) divided by a small α would swamp σ, so
        outputs whose residual is below 10·eps(dtype)·‖g‖² get exactly zero (their rows and
        columns), rather than amplified noise.
        """
        if self._vecs.shape[1] == self.n_params:
            return np.zeros_like(gram)
        resid = gram - np.einsum("bkr,blr->bkl", ju, ju)
        norms = np.einsum("bkk->bk", gram)
        lost = np.einsum("bkk->bk", resid) <= self._resid_floor * norms
        keep = ~lost
        return resid * keep[:, :, None] * keep[:, None, :]

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        out = []
        for gram, ju in self._parts(model, x, alpha, batch_size):
            resid = np.maximum(np.einsum("bkk->bk", self._residual(gram, ju)), 0.0)
            out.append(np.einsum("bkr,r->bk", ju**2, inv) + (resid / alpha if resid.any() else 0))
        return np.concatenate(out)

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        inv = 1.0 / (alpha + beta * self._eig)
        out = []
        for gram, ju in self._parts(model, x, alpha, batch_size):
            resid = self._residual(gram, ju)
            cov = np.einsum("bkr,r,blr->bkl", ju, inv, ju)
            out.append(cov + (resid / alpha if resid.any() else 0))
        return np.concatenate(out)
