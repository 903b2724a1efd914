"""The original notebook's formula and the conversion of its β."""

import numpy as np

import sigma


def test_seed_sigma_formula_by_hand():
    h = np.array([2.0, 4.0, 0.5])
    g = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    # s_k = Σ_j g_kj² / (β h_jj) with β = 10
    expected = [1 / 20 + 4 / 40 + 9 / 5, 1 / 40]
    np.testing.assert_allclose(sigma.lab.seed_sigma(h, g, beta=10.0), expected, rtol=1e-15)


def test_seed_formula_is_laplace_diagonal_with_zero_alpha_and_no_noise():
    """With β_eff = 2β/(NK) and the mean-loss Hessian, s_k = Σ g²/(β_eff · diag ∇²E_D)."""
    rng = np.random.default_rng(1)
    h_ed = np.diag(rng.uniform(1, 3, size=5))
    g = rng.normal(size=(2, 5))
    n, k, beta = 100, 3, 10.0
    s = sigma.lab.seed_sigma(sigma.lab.mean_loss_hessian_diag(h_ed, n, k), g, beta=beta)
    beta_eff = sigma.lab.summed_beta(beta, n, k)
    assert np.isclose(beta_eff, 20 / 300)
    a_inv = np.linalg.inv(beta_eff * h_ed)  # A = αI + βC with α = 0, diagonal C
    np.testing.assert_allclose(s, np.einsum("kp,pq,kq->k", g, a_inv, g), rtol=1e-12)
