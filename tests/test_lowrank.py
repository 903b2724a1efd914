"""Low-rank structure: block Lanczos against eigh, matrix-free products against the explicit matrices,
k = P against full, k < P against the explicit low-rank inverse."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma import evidence
from sigma.curvature import curvature_product
from sigma.structures import LowRank
from sigma.structures.lowrank import block_lanczos


def _spd(rng, n, spectrum):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (q * spectrum) @ q.T


def _top(values, k):
    return np.sort(values[np.argsort(-np.abs(values))[:k]])[::-1]


@pytest.mark.parametrize(
    "spectrum",
    [
        lambda n: 10.0 ** -np.linspace(0, 6, n),  # decaying, like a GGN
        lambda n: np.r_[np.arange(12, 0, -1), np.zeros(n - 12)],  # rank 12 < k... and zeros
        lambda n: np.linspace(-5.0, 3.0, n),  # indefinite: top by magnitude
    ],
)
def test_lanczos_matches_eigh(rng, spectrum):
    n, k = 60, 15
    a = _spd(rng, n, spectrum(n))
    values, vectors, info = block_lanczos(lambda v: a @ v, n, k, tol=1e-10)
    exact = np.linalg.eigvalsh(a)
    np.testing.assert_allclose(values, _top(exact, k), atol=1e-8 * np.abs(exact).max())
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-8)
    np.testing.assert_allclose(a @ vectors, vectors * values, atol=1e-6 * np.abs(exact).max())
    assert info["converged"] and info["steps"] <= n


def test_lanczos_finds_repeated_eigenvalues_after_breakdown(rng):
    """C = B ⊗ I₃ has each of its 4 distinct eigenvalues three times; a block of 2 sees two
    copies of each and its Krylov space stops growing after 4 passes, so the fresh directions
    must find the third copies."""
    b = _spd(rng, 4, np.array([8.0, 7.0, 6.0, 5.0]))
    a = np.kron(b, np.eye(3))
    values, _, info = block_lanczos(lambda v: a @ v, 12, 7, block=2, tol=1e-10)
    np.testing.assert_allclose(values, [8, 8, 8, 7, 7, 7, 6], atol=1e-8)
    assert info["converged"]


def test_lanczos_warns_when_capped(rng):
    a = _spd(rng, 80, 1.0 + np.linspace(0, 1e-3, 80))  # tightly clustered: slow
    with pytest.warns(RuntimeWarning, match=r"Lanczos stopped after 1 passes \(8 products\)"):
        values, _, info = block_lanczos(lambda v: a @ v, 80, 5, tol=1e-14, max_passes=1)
    assert values.shape == (5,) and not info["converged"]


@pytest.mark.parametrize("route", ["jacobian", "matrix_free"])
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_ggn_vector_product_equals_explicit_matrix(rng, mlp64, likelihood, route):
    x = rng.normal(size=(13, 3))
    matvec = curvature_product(mlp64, x, likelihood=likelihood, batch_size=5, route=route)
    g = sigma.gauss_newton(mlp64, x, likelihood=likelihood)
    for _ in range(3):
        v = rng.normal(size=g.shape[0])
        np.testing.assert_allclose(matvec(v), g @ v, rtol=1e-10, atol=1e-12)
    block = rng.normal(size=(g.shape[0], 4))  # a block of vectors in one pass
    np.testing.assert_allclose(matvec(block), g @ block, rtol=1e-10, atol=1e-12)
    assert matvec.accumulator.tracing_count == 1  # 3 batches (5, 5, 3) × 4 calls, traced once


def test_hessian_vector_product_equals_explicit_matrix(rng, mlp64):
    x, y = rng.normal(size=(13, 3)), rng.normal(size=(13, 2))
    matvec = curvature_product(mlp64, x, y, curvature="hessian", batch_size=4)
    h = sigma.hessian(mlp64, x, y)
    v = rng.normal(size=h.shape[0])
    np.testing.assert_allclose(matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="needs the targets y"):
        curvature_product(mlp64, x, curvature="hessian")


@pytest.mark.parametrize(
    ("likelihood", "curvature"),
    [("regression", "ggn"), ("classification", "ggn")],  # the dense Hessian: test_distribute
)
def test_rank_p_equals_full(rng, mlp64, likelihood, curvature):
    x = rng.normal(size=(20, 3))
    y = rng.normal(size=(20, 2)) if likelihood == "regression" else rng.integers(0, 2, 20)
    kw = dict(likelihood=likelihood, curvature=curvature, alpha=3.0, negative="clip")
    full = sigma.Laplace(mlp64, x, y, **kw)
    low = sigma.Laplace(mlp64, x, y, structure="lowrank", structure_options={"rank": 54}, **kw)
    assert low.structure.method == "dense" and low.structure.eigenvalues.shape == (54,)
    cov_f, cov_l = full.predictive_covariance(x[:6]), low.predictive_covariance(x[:6])
    np.testing.assert_allclose(cov_l, cov_f, rtol=1e-9, atol=1e-12)
    sig_f = np.sqrt(np.einsum("nkk->nk", cov_f))
    sig_l = np.sqrt(np.einsum("nkk->nk", cov_l))
    assert np.max(np.abs(sig_l / sig_f - 1)) < 1e-6
    assert low.log_evidence() == pytest.approx(full.log_evidence(), rel=1e-10)


def test_lanczos_rank_matches_full_top_k_and_explicit_inverse(rng):
    model = make_mlp(hidden=(8, 6))  # P = 100
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    alpha, beta, k = 0.5, 2.0, 10
    full = sigma.Laplace(model, x, y, alpha=alpha, beta=beta)
    low = sigma.Laplace(  # the pure low-rank structure (no diagonal for the rest)
        model, x, y, alpha=alpha, beta=beta, structure="lowrank",
        structure_options={"rank": k, "diag": False},
    )  # fmt: skip
    s = low.structure
    assert s.method == "lanczos" and s.info["converged"] and s.info["tracing_count"] == 1
    lam, vecs = np.linalg.eigh(full.structure.matrix)
    top = np.argsort(-lam)[:k]
    np.testing.assert_allclose(s.eigenvalues, lam[top], rtol=1e-9)
    # A⁻¹ = U diag(1/(α+βλ)) Uᵀ + (1/α)(I − UUᵀ) with the exact top-k eigenvectors
    u = vecs[:, top]
    a_inv = (u / (alpha + beta * lam[top])) @ u.T + (np.eye(100) - u @ u.T) / alpha
    j = sigma.output_jacobian(model, x[:7])
    ref = np.einsum("nkp,pq,nlq->nkl", j, a_inv, j)
    cov = low.predictive_covariance(x[:7], noise=False)
    np.testing.assert_allclose(cov, ref, rtol=1e-7, atol=1e-8 * np.abs(ref).max())
    np.testing.assert_allclose(
        low.predict(x[:7], noise=False)[1] ** 2, np.einsum("nkk->nk", ref), rtol=1e-7
    )
    # the evidence sees k eigenvalues and P − k zeros
    ref_ev = evidence.log_evidence(
        lam[top],
        data_error=full.data_error,
        weight_error=full.weight_error,
        n_params=100,
        n_obs=80,
        alpha=alpha,
        beta=beta,
    )
    assert low.log_evidence() == pytest.approx(ref_ev, rel=1e-9)
    low.optimize_evidence()
    assert low.alpha > 0 and 0 < low.gamma <= k


def test_alpha_zero_is_refused_with_reason(rng, mlp64):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    with pytest.raises(ValueError, match=r"alpha > 0 \(structure 'lowrank' keeps 5 of the 54"):
        sigma.Laplace(mlp64, x, y, alpha=0.0, structure="lowrank", structure_options={"rank": 5})
    la = sigma.Laplace(mlp64, x, y, alpha=1.0, structure="lowrank", structure_options={"rank": 5})
    with pytest.raises(ValueError, match="alpha > 0"):
        la.alpha = 0.0
    with pytest.raises(ValueError, match="alpha > 0"):
        la.structure.predictive_variance(mlp64, x[:2], 0.0, 1.0)


def test_dataset_float32_and_options(rng):
    m32 = make_mlp(dtype="float32")
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    ref = sigma.Laplace(m32, x, y, structure="lowrank", structure_options={"rank": 6})
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    low = sigma.Laplace(m32, ds, structure=LowRank(rank=6, seed=3))
    np.testing.assert_allclose(low.structure.eigenvalues, ref.structure.eigenvalues, rtol=1e-4)
    np.testing.assert_allclose(low.predict(x[:4])[1], ref.predict(x[:4])[1], rtol=1e-4)
    assert low.structure.vectors.shape == (54, 6)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LowRank(rank=0)
    with pytest.raises(ValueError, match="structure_options apply to a structure name"):
        sigma.Laplace(m32, x, y, structure=LowRank(), structure_options={"rank": 3})


def test_layerwise_and_jacobian_predictives_agree(rng):
    """‖g‖² from layer inputs and sensitivities (Dense and Conv layers) and Uᵀg by forward mode
    equal the per-sample Jacobian route."""
    import keras

    keras.utils.set_random_seed(1)
    cnn = keras.Sequential(
        [
            keras.Input((5, 5, 1), dtype="float64"),
            keras.layers.Conv2D(3, 3, activation="tanh", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )
    x, y = rng.normal(size=(30, 5, 5, 1)), rng.normal(size=(30, 2))
    fits = {
        path: sigma.Laplace(cnn, x, y, structure=LowRank(rank=6, predictive=path))
        for path in ("layerwise", "jacobian")
    }
    np.testing.assert_allclose(
        fits["layerwise"].predictive_covariance(x[:9]),
        fits["jacobian"].predictive_covariance(x[:9]),
        rtol=1e-9,
    )
    assert fits["layerwise"].structure._path == "layerwise"


def test_float32_complement_does_not_amplify_round_off():
    """‖g‖² − ‖Uᵀg‖² in float32, divided by a small α, once gave σ 22% off; now within 1e-3."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 6)), rng.standard_normal((4, 2))
    m64 = sigma.mlp(6, (20,), 2, activation="tanh", dtype="float64", seed=1)
    m32 = sigma.mlp(6, (20,), 2, activation="tanh", dtype="float32", seed=1)
    sigma.set_flat_weights(m32, sigma.flat_weights(m64))
    xt = np.r_[x, rng.standard_normal((3, 6))]
    kw = {"alpha": 1e-4, "beta": 100.0}
    ref = sigma.Laplace(m64, x, y, **kw).predict(xt, noise=False)[1]
    low = sigma.Laplace(m32, x, y, structure="lowrank", structure_options={"rank": 12}, **kw)
    np.testing.assert_allclose(low.predict(xt, noise=False)[1], ref, rtol=1e-3)


@pytest.mark.slow
def test_rank_20_costs_at_most_30_passes_over_the_data(rng):
    """Block products: k = 20 eigenpairs of a 2,162-weight GGN in ≤ 30 passes over the data
    (single-vector Lanczos needs a pass per Krylov vector, over a hundred here), with the top-20
    eigenvalues those of the exact matrix."""
    model = make_mlp(n_in=10, hidden=(40, 40), n_out=2)
    x, y = rng.normal(size=(200, 10)), rng.normal(size=(200, 2))
    low = sigma.Laplace(model, x, y, structure="lowrank", structure_options={"rank": 20})
    info = low.structure.info
    assert info["converged"] and info["passes"] <= 30, info
    exact = np.sort(np.linalg.eigvalsh(sigma.gauss_newton(model, x)))[::-1][:20]
    np.testing.assert_allclose(low.structure.eigenvalues, exact, rtol=1e-8)
