"""The original notebook's formula, kept as a documented reference (MATH.md).

    s_k = Σ_j g_kj² / (β h_jj)

with g_k the gradient of output k at one input and h_jj the diagonal of the Hessian of Keras'
*mean* squared error L = (1/(N K)) Σ (f − t)², i.e. h = (2/(N K)) diag ∇²E_D. This is the
diagonal of A⁻¹ with α = 0 and no noise term; its β = 10 stands for β_eff = 2β/(N K) in the
summed convention. It is not an error bar: use :class:`sigma.Laplace`.
"""

from __future__ import annotations

import numpy as np

from sigma._checks import as_array, check_precision


def mean_loss_hessian_diag(hessian_ed, n_data: int, n_outputs: int) -> np.ndarray:
    """diag of the Hessian of Keras' mean MSE, from the Hessian of E_D: (2/(N K)) diag H."""
    h = as_array(hessian_ed, "hessian_ed", ndim=2)
    return 2.0 / (n_data * n_outputs) * np.diag(h).astype(np.float64)


def seed_sigma(
    hessian_diag, output_gradients, beta: float = 10.0, *, strict: bool = True
) -> np.ndarray:
    """The original formula s_k = Σ_j g_kj² / (β h_jj).

    hessian_diag : (P,) diagonal h_jj (of the mean-loss Hessian, as the original).
    output_gradients : (K, P) gradients g_k of each output at one input.
    Returns (K,). Zero or negative h_jj, which the original did not guard, raise ValueError;
    with ``strict=False`` the raw formula is returned as the original computed it (it can then
    be negative or infinite — which is the point of showing it).
    """
    h = as_array(hessian_diag, "hessian_diag", ndim=1).astype(np.float64)
    g = as_array(output_gradients, "output_gradients", ndim=2).astype(np.float64)
    beta = check_precision(beta, "beta", allow_zero=False)
    if g.shape[1] != h.shape[0]:
        raise ValueError(
            f"output_gradients must have shape (K, {h.shape[0]}) to match hessian_diag, got {g.shape}"
        )
    if strict and np.any(h <= 0):
        raise ValueError(
            f"hessian_diag has {int(np.sum(h <= 0))} zero or negative entries: the original "
            "formula divides by them; use sigma.Laplace (Gauss–Newton, alpha > 0) instead"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(g**2 / (beta * h), axis=1)


def summed_beta(beta_mean_loss: float, n_data: int, n_outputs: int) -> float:
    """The β of the summed-error convention equivalent to the original's mean-loss β: 2β/(N K)."""
    return (
        2.0
        * check_precision(beta_mean_loss, "beta_mean_loss", allow_zero=False)
        / (n_data * n_outputs)
    )
