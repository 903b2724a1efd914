"""Dense linear algebra of the structures, on one BLAS thread.

On a small machine shared with TensorFlow's thread pool, a multi-threaded OpenBLAS call on a
matrix of a few hundred rows was measured 10–20× slower than the same call on one thread
(threads spin-waiting for each other): an eigendecomposition of a 403×403 matrix 135 ms against
39 ms, a triangular solve with 150 right-hand sides 17 ms against 0.9 ms. The limit is set with
one ``threadpoolctl`` controller made on first use (a fresh ``threadpool_limits`` scans every
loaded library, ~10 ms once TensorFlow is loaded).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

_CONTROLLER: list = []


def one_blas_thread():
    """A context manager limiting BLAS to one thread (cheap to enter)."""
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def eigh(matrix) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric part of ``matrix``, float64, on one BLAS thread.
    A curvature with NaN or inf (the model's outputs were checked finite, so its gradients
    overflowed) is a ValueError saying so, not LAPACK's "did not converge"."""
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "the curvature holds NaN or infinite values although the model's outputs on x are "
            "finite: the gradients overflow inside the network. Rescale x (or the weights), or "
            "compute in float64"
        )
    with one_blas_thread():
        return np.linalg.eigh(0.5 * (matrix + matrix.T))
