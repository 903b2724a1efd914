"""structure="ekfac": KFAC's eigenbasis with the exact GGN's diagonal in it, against the full
GGN of a small network; σ and the evidence from the same matrix formed explicitly."""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma.structures import EKFAC, KFAC

RNG = np.random.default_rng(5)
X, Y = RNG.normal(size=(17, 3)), RNG.normal(size=(17, 2))


def _conv():
    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [
            keras.Input((5, 5, 2), dtype="float64"),
            keras.layers.Conv2D(3, 3, activation="tanh", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )


@pytest.mark.parametrize(
    ("build", "x", "likelihood"),
    [
        (make_mlp, X, "regression"),
        (make_mlp, X, "classification"),
        (_conv, RNG.normal(size=(9, 5, 5, 2)), "regression"),
    ],
    ids=["mlp", "mlp-clf", "conv"],
)
def test_the_diagonal_in_the_kfac_eigenbasis_is_the_exact_ggns(build, x, likelihood):
    model = build()
    s = EKFAC().fit(model, x, likelihood=likelihood, curvature="ggn", batch_size=4)
    kfac = KFAC().fit(model, x, likelihood=likelihood, curvature="ggn", batch_size=4)
    g = sigma.gauss_newton(model, x, likelihood=likelihood)
    assert s.plan.fast
    for blk, (_, qv, _, hv), corrected, eig in zip(
        s.plan.fast, s.factor_eigen, s.corrected, kfac.factor_eigen, strict=True
    ):
        np.testing.assert_allclose(qv, eig[1]) and np.testing.assert_allclose(hv, eig[3])
        u = np.kron(qv, hv)  # the KFAC eigenbasis, in the package's (D, C) row-major order
        exact = np.einsum("pi,pq,qi->i", u, g[np.ix_(blk.index, blk.index)], u)
        np.testing.assert_allclose(corrected.ravel(), exact, rtol=1e-9, atol=1e-12)


def test_sigma_and_evidence_are_those_of_the_explicit_matrix():
    model = make_mlp()
    alpha, beta = 0.8, 3.0
    la = sigma.Laplace(model, X, Y, structure="ekfac", alpha=alpha, beta=beta)
    c = la.structure.matrix()
    a = alpha * np.eye(la.n_params) + beta * c
    j = sigma.output_jacobian(model, X[:5])
    cov = np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j) + np.eye(2) / beta
    np.testing.assert_allclose(la.predictive_covariance(X[:5]), cov, rtol=1e-9)
    lam = np.linalg.eigvalsh(beta * c)
    assert la.gamma == pytest.approx(np.sum(lam / (lam + alpha)), rel=1e-9)
    np.testing.assert_allclose(
        np.sort(la.structure.eigenvalues), np.sort(np.linalg.eigvalsh(c)), atol=1e-10
    )
    la.optimize_evidence()
    assert la.alpha > 0 and la.beta > 0
    # one α per layer is exact; α varying inside a layer is refused, naming the structure
    assert np.isfinite(sigma.Laplace(model, X, Y, structure="ekfac", prior="layer").gamma)
    with pytest.raises(ValueError, match=r"structure 'ekfac' needs one prior precision per"):
        sigma.Laplace(model, X, Y, structure="ekfac", prior="variable")


def test_ekfac_is_at_least_as_close_to_the_ggn_block_as_kfac():
    """The corrected eigenvalues minimise the Frobenius distance in the KFAC eigenbasis."""
    model = make_mlp()
    e = EKFAC().fit(model, X, likelihood="regression", curvature="ggn", batch_size=None)
    k = KFAC().fit(model, X, likelihood="regression", curvature="ggn", batch_size=None)
    g = sigma.gauss_newton(model, X)
    for blk in e.plan.fast:
        idx = np.ix_(blk.index, blk.index)
        dist_e = np.linalg.norm(e.matrix()[idx] - g[idx])
        dist_k = np.linalg.norm(k.matrix()[idx] - g[idx])
        assert dist_e <= dist_k + 1e-10 * np.linalg.norm(g[idx])  # (the output layer: both exact)
