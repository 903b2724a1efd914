"""Dense linear algebra of the structures, on one BLAS thread (but for large eigenproblems).

On a small machine shared with TensorFlow's thread pool, a multi-threaded OpenBLAS call on a
matrix of a few hundred rows was measured 10–20× slower than the same call on one thread
(threads spin-waiting for each other): an eigendecomposition of a 403×403 matrix 135 ms against
39 ms, a triangular solve with 150 right-hand sides 17 ms against 0.9 ms. The limit is set with
one ``threadpoolctl`` controller made on first use (a fresh ``threadpool_limits`` scans every
loaded library, ~10 ms once TensorFlow is loaded).

Large eigendecompositions (from :data:`PARALLEL` rows) are the exception: there each thread
has enough work that BLAS's own threads pay off (a 9,217² float32 factor, the Dense layer of
a small CNN: 70 s on one thread, 45 s on two on the quiet 2-core machine; 4,000²: 6.9 s
against 4.1 s; 2,000²: 0.79 s against 0.75 s), and more so on a machine with more cores.
"""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.linalg  # before the controller is made: it limits SciPy's BLAS too
from threadpoolctl import ThreadpoolController

_CONTROLLER: list = []
LARGE = 1024  # rows from which eigh decomposes a copy in place
PARALLEL = 4096  # rows from which eigh runs on BLAS's own threads


def one_blas_thread():
    """A context manager limiting BLAS to one thread (cheap to enter)."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _blas_threads(rows: int):
    """One BLAS thread below :data:`PARALLEL` rows, BLAS's own number from there on."""
    if rows < PARALLEL:
        return one_blas_thread()
    return contextlib.nullcontext()


def eigh(matrix, precision=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric part of ``matrix``, float64, on one BLAS thread
    below :data:`PARALLEL` rows (see the module docstring).
    A curvature with NaN or inf (the model's outputs were checked finite, so its gradients
    overflowed) is a ValueError saying so, not LAPACK's "did not converge".

    From :data:`LARGE` rows on, the symmetric part is formed in row blocks and decomposed in
    place by SciPy's divide-and-conquer driver (LAPACK syevd, as numpy's eigh): one n² copy
    instead of four (a 9,217² factor is 680 MB each); with ``precision=np.float32`` (a factor
    summed from a float32 model's products, whose entries carry float32 rounding already) the
    copy and the decomposition are in float32: half the memory, 1.7× faster (2,500²: 2.2 s
    against 3.7–4.3 s), the eigenvalues returned as float64 and the eigenvectors kept in
    float32 (the model applies them in float32; a float64 copy would be another n² · 8 bytes
    at the fit's peak). SciPy's MRRR driver ("evr") would need less workspace than "evd" but
    took 2.5× as long (3,000², one thread: 17–19 s against 7.4–7.8 s). One thread below
    :data:`PARALLEL` rows: on the 2-core machine shared with other processes a 2,000²
    decomposition took 1.5–1.8 s on one thread and 4.2–4.8 s on two (numpy: 2.0 s and
    5–10 s); quiet, two threads gain nothing at that size."""
    matrix = np.asarray(matrix)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "the curvature holds NaN or infinite values although the model's outputs on x are "
            "finite: the gradients overflow inside the network. Rescale x (or the weights), or "
            "compute in float64"
        )
    with _blas_threads(matrix.shape[0]):
        if matrix.shape[0] < LARGE:
            return np.linalg.eigh(0.5 * (matrix + matrix.T))
        e, v = scipy.linalg.eigh(
            symmetric_part(matrix, precision),
            overwrite_a=True,
            check_finite=False,
            driver="evd",
        )
    return e.astype(np.float64, copy=False), v


def symmetric_part(matrix, dtype=np.float64, rows: int = 512) -> np.ndarray:
    """½ (M + Mᵀ) as a new array of ``dtype``, formed ``rows`` rows at a time (no n²
    temporaries); the values of ``(0.5 * (matrix + matrix.T)).astype(dtype)``."""
    matrix = np.asarray(matrix)
    out = np.empty(matrix.shape, dtype)
    for i in range(0, matrix.shape[0], rows):
        out[i : i + rows] = 0.5 * (matrix[i : i + rows] + matrix[:, i : i + rows].T)
    return out
