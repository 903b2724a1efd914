"""Block Lanczos: the top-k eigenpairs (largest |λ|) of a symmetric operator given only as
block products V ↦ C V, with full re-orthogonalisation (the ``lowrank`` structure's
eigensolver, :mod:`sigma.structures.lowrank`).

Each call of the product is one pass over the data, and it multiplies a whole block of b
vectors, so the Krylov space grows by b dimensions per pass: for k = 20 a handful of passes
where single-vector Lanczos needs over a hundred. Plain NumPy; no TensorFlow.
"""

from __future__ import annotations

import warnings

import numpy as np

from sigma import keras_compat
from sigma._checks import check_positive_int
from sigma.progress import bar as progress_bar

MAX_PASSES = 30  # default cap on the passes over the data


def default_block(k: int, n: int) -> int:
    """Vectors per pass for k eigenpairs: ⌈k/2⌉, at least 8, at most n. Smaller blocks reach a
    higher polynomial degree per product (k = 20 on a 784-256-256-10 GGN: b = 10 converged in
    180 products over 18 passes, b = 30 in 360 over 12, b = 40 in 440 over 11)."""
    return min(n, max(8, -(-k // 2)))


def block_lanczos(
    matmat,
    n: int,
    k: int,
    *,
    block: int | None = None,
    tol: float = 1e-8,
    max_passes: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
):
    """Top-k eigenpairs (largest |λ|) of a symmetric n×n operator, by block Lanczos with full
    re-orthogonalisation.

    matmat : V (n, b) → C V (n, b), float64 — one pass over the data per call.
    block : b, the vectors per pass (default :func:`default_block`).
    tol : stop when every one of the k Ritz residuals ‖C y_i − θ_i y_i‖ is below
        ``tol · max|θ|``.
    max_passes : cap on the passes (default :data:`MAX_PASSES`; it stops earlier when the basis
        spans the whole space, where the Ritz pairs are exact).

    A block whose new directions are (numerically) dependent — an invariant subspace found,
    e.g. for a matrix of rank < k or with eigenvalues repeated more than b times — is completed
    with fresh random vectors orthogonal to the basis, so multiplicities are found.

    Returns ``(values (k,), vectors (n, k), info)`` with values sorted by decreasing value and
    ``info = {"passes", "steps" (vectors multiplied), "block", "residuals" (k,), "converged"}``.
    Warns (RuntimeWarning) when the cap is reached before convergence; the Ritz pairs are then
    the best the Krylov space holds.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got {k}")
    b = default_block(k, n) if block is None else min(n, check_positive_int(block, "block"))
    cap = MAX_PASSES if max_passes is None else check_positive_int(max_passes, "max_passes")
    rng = np.random.default_rng(seed)
    basis = np.empty((n, min(n, cap * b)))  # the Krylov basis, filled block by block
    q, _ = np.linalg.qr(rng.standard_normal((n, b)))
    basis[:, :b] = q
    starts, diag, off = [0, b], [], []
    converged, fresh, scale, steps = False, False, 0.0, 0
    bar = progress_bar(total=cap, desc="block Lanczos", progress=progress)
    while True:
        qj = basis[:, starts[-2] : starts[-1]]
        z = np.asarray(matmat(qj), dtype=np.float64).reshape(n, qj.shape[1])
        steps += qj.shape[1]
        a = qj.T @ z
        diag.append(0.5 * (a + a.T))
        z -= qj @ diag[-1]
        if off:
            z -= basis[:, starts[-3] : starts[-2]] @ off[-1].T
        m = starts[-1]
        done = basis[:, :m]
        z -= done @ (done.T @ z)  # full re-orthogonalisation (again on Q: "twice is enough")
        bar.update(1)
        theta, s = np.linalg.eigh(_block_tridiagonal(diag, off))
        scale = max(scale, float(np.abs(theta).max()))
        idx = np.argsort(-np.abs(theta))[:k]
        if m >= n:  # the Krylov space is the whole space: the Ritz pairs are exact
            residuals, converged = np.zeros(len(idx)), True
            break
        tiny = 1e-12 * max(scale, 1e-300)
        q_next, r, kept = _orthonormal_block(z, done, rng, size=min(b, n - m), tiny=tiny)
        residuals = np.linalg.norm(r @ s[m - qj.shape[1] : m, idx], axis=0)
        # A fresh block (after an invariant subspace) that C maps to ~0: the rest is null.
        null_rest = fresh and np.abs(diag[-1]).max() <= tiny and kept == 0
        # Directions replaced by fresh ones: an invariant subspace was reached, and copies
        # of repeated eigenvalues may lie outside it — continue unless the rest is null.
        if len(idx) == k and (
            null_rest or (kept == r.shape[0] and np.all(residuals <= tol * scale))
        ):
            converged = True
            break
        fresh = kept == 0
        if len(diag) >= cap or m + q_next.shape[1] > basis.shape[1]:
            break
        off.append(r)
        basis[:, m : m + q_next.shape[1]] = q_next
        starts.append(m + q_next.shape[1])
    bar.close()
    passes = len(diag)
    if not converged:
        warnings.warn(
            f"block Lanczos stopped after {passes} passes ({steps} products) without "
            f"reaching tol={tol:g}: largest relative residual "
            f"{residuals.max() / max(scale, 1e-300):.2g}; the top-{len(idx)} Ritz pairs are "
            "used as they are (raise max_passes or tol)",
            RuntimeWarning,
            stacklevel=keras_compat.user_stacklevel(),
        )
    vectors = basis[:, : starts[passes]] @ s[:, idx]
    order = np.argsort(-theta[idx])
    info = {
        "passes": passes,
        "steps": steps,
        "block": b,
        "residuals": residuals[order],
        "converged": converged,
    }
    return theta[idx][order], vectors[:, order], info


def _block_tridiagonal(diag, off):
    """The symmetric block tridiagonal T with diagonal blocks ``diag`` (b_j × b_j) and
    sub-diagonal blocks ``off`` (T[j+1, j] = off[j], b_{j+1} × b_j)."""
    sizes = [d.shape[0] for d in diag]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    t = np.zeros((starts[-1], starts[-1]))
    for j, a in enumerate(diag):
        t[starts[j] : starts[j + 1], starts[j] : starts[j + 1]] = a
    for j, r in enumerate(off[: len(diag) - 1]):
        t[starts[j + 1] : starts[j + 2], starts[j] : starts[j + 1]] = r
        t[starts[j] : starts[j + 1], starts[j + 1] : starts[j + 2]] = r.T
    return t


def _orthonormal_block(z, basis, rng, *, size, tiny):
    """(Q, R, kept): Q (n, size) orthonormal and orthogonal to ``basis``, Z ≈ Q R, R = Qᵀ Z.

    Orthonormalised through the small Gram matrix Zᵀ Z twice ("CholQR2": matrix products
    only, no Householder pass over the tall Z). Directions of Z below ``tiny``, or below 1e-7
    of its largest (where one Gram step cannot resolve them), are replaced by random ones
    orthogonal to the basis: an invariant subspace was reached. Q is orthogonalised against the
    basis once more after the factorisation (normalising a small component of Z amplifies
    its round-off along the basis).
    """
    gram = z.T @ z
    w, u = np.linalg.eigh(0.5 * (gram + gram.T))
    w, u = w[::-1], u[:, ::-1]
    sv = np.sqrt(np.maximum(w, 0.0))
    keep = min(size, int(np.sum(sv > max(tiny, 1e-7 * sv[0]))))
    q = z @ (u[:, :keep] / sv[:keep])
    if keep < size:
        q = np.hstack([q, rng.standard_normal((z.shape[0], size - keep))])
    q -= basis @ (basis.T @ q)
    for _ in range(2):
        w, u = np.linalg.eigh(q.T @ q)
        q = q @ (u / np.sqrt(np.maximum(w, 1e-300)))
    return q, q.T @ z, keep
