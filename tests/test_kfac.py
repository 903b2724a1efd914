"""structure="kfac": Kronecker factors against an independent reference and the exact GGN
block (one sample), and σ from the same Kronecker-factored A built explicitly as P×P."""

import keras
import numpy as np
import pytest
from conftest import make_mlp
from layer_models import embedding_bn_dropout, model_cases, tokens

import sigma
from sigma.structures import KFAC

RNG = np.random.default_rng(2)
X = RNG.normal(size=(13, 3))
Y = RNG.normal(size=(13, 2))


def _fit(model, x, likelihood="regression", **kw):
    return KFAC(**kw).fit(model, x, likelihood=likelihood, curvature="ggn", batch_size=5)


def _explicit_sigma(s, model, x, alpha, beta):
    """J A⁻¹ Jᵀ with A = α I + β C_kfac formed as a P×P matrix: the slow, obvious reference."""
    a = alpha * np.eye(s.n_params) + beta * s.matrix()
    j = sigma.output_jacobian(model, x)
    return np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j)


def _one_position_cnn():
    """A convolution whose kernel covers its whole input (one position): KFAC is exact there
    for one sample, as for a Dense layer."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((3, 3, 2), dtype="float64"),
            keras.layers.Conv2D(4, 3, activation="tanh", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )


@pytest.mark.parametrize(
    ("build", "x", "likelihood"),
    [
        (lambda: make_mlp(n_out=1), X[:1], "regression"),
        (make_mlp, X[:1], "regression"),
        (make_mlp, X[:1], "classification"),
        (_one_position_cnn, RNG.normal(size=(1, 3, 3, 2)), "regression"),
    ],
    ids=["mlp-K1", "mlp-K2", "mlp-clf", "conv-one-position"],
)
def test_one_sample_kfac_is_the_exact_ggn_block(build, x, likelihood):
    model = build()
    s = _fit(model, x, likelihood)
    g = sigma.gauss_newton(model, x, likelihood=likelihood)
    c = s.matrix()
    for blk in s.plan.fast:
        idx = np.ix_(blk.index, blk.index)
        np.testing.assert_allclose(c[idx], g[idx], rtol=1e-10, atol=1e-13 * np.abs(g).max())


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_factors_equal_an_independent_reference(likelihood):
    """Q = (1/N) Σ_n ã ãᵀ from the layer inputs of a NumPy forward pass; H = Σ_n Σ_k s sᵀ
    with s the bias columns of Lᵀ J (∂u/∂b = s for a Dense layer)."""
    model = make_mlp()
    s = _fit(model, X, likelihood)
    w = [v.numpy() for v in model.trainable_variables]
    acts, h = [X], X
    for i in range(0, len(w) - 2, 2):
        h = np.tanh(h @ w[i] + w[i + 1])
        acts.append(h)
    j = sigma.output_jacobian(model, X)
    if likelihood == "classification":
        root = sigma.likelihoods.get(likelihood).hessian_sqrt(model(X)).numpy()
        j = np.einsum("nkj,nkp->njp", root, j)
    offset = 0
    for blk, a, (q, hh) in zip(s.plan.fast, acts, s.factors, strict=True):
        d_in, c = a.shape[1], blk.d_out
        bias = j[:, :, offset + d_in * c : offset + (d_in + 1) * c]  # (N, K, C) = s
        offset += (d_in + 1) * c
        at = np.c_[a, np.ones(len(a))]
        np.testing.assert_allclose(q, at.T @ at / len(X), rtol=1e-12)
        np.testing.assert_allclose(hh, np.einsum("nkc,nke->ce", bias, bias), rtol=1e-10)


@model_cases(RNG)
def test_sigma_equals_sigma_from_the_explicit_kfac_matrix(build, inputs, likelihood):
    model, x = build(), inputs(9)
    alpha, beta = 0.4, (3.0 if likelihood == "regression" else 1.0)
    s = _fit(model, x, likelihood)
    ref = _explicit_sigma(s, model, x[:4], alpha, beta)
    cov = s.predictive_covariance(model, x[:4], alpha, beta)
    var = s.predictive_variance(model, x[:4], alpha, beta, batch_size=3)
    np.testing.assert_allclose(cov, ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(var, np.einsum("nkk->nk", ref), rtol=1e-6)


def test_eigenvalues_and_logdet_are_those_of_the_explicit_matrix():
    model, x = embedding_bn_dropout(), tokens(9)
    for max_block, full in ((2048, [True]), (20, [False])):
        # the embedding (6 × 3) a Kronecker block with diagonal Q; BN (24) full or diagonal
        s = _fit(model, x, max_block=max_block)
        assert [b.kind for b in s.plan.fast][:1] == ["embedding"] and s.factors[0][0].ndim == 1
        assert [v is not None for _, v, _ in s.generic_eigen] == full
        c = s.matrix()
        assert s.eigenvalues.shape == (s.n_params,)
        np.testing.assert_allclose(
            np.sort(s.eigenvalues), np.linalg.eigvalsh(c), rtol=1e-9, atol=1e-12 * c.max()
        )
        a = 0.3 * np.eye(s.n_params) + 2.0 * c
        np.testing.assert_allclose(s.logdet(0.3, 2.0), np.linalg.slogdet(a)[1], rtol=1e-12)


def test_laplace_kfac_evidence_and_predict():
    model = make_mlp()
    la = sigma.Laplace(model, X, Y, structure="kfac", alpha=0.5, beta=2.0)
    lam = 2.0 * la.structure.eigenvalues
    np.testing.assert_allclose(la.gamma, np.sum(lam / (lam + 0.5)), rtol=1e-12)
    la.optimize_evidence()
    mean, std = la.predict(X[:3])
    ref = _explicit_sigma(la.structure, model, X[:3], la.alpha, la.beta)
    np.testing.assert_allclose(std**2, 1.0 / la.beta + np.einsum("nkk->nk", ref), rtol=1e-9)


def test_exact_hessian_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="curvature='ggn' or curvature='ggn_mc' only"):
        sigma.Laplace(make_mlp(), X, Y, structure="kfac", curvature="hessian")


def test_a_large_factor_of_a_float32_model_is_decomposed_and_kept_in_float32(rng):
    """From sigma._linalg.LARGE rows on, a float32 model's input factor is decomposed in
    float32 and its eigenvectors kept so (a float64 copy was another D²·8 bytes at the fit's
    peak: 680 MB for issue 26's 9,217 inputs); σ agrees with the float64 model's."""
    n_in = 1100
    x, y = rng.normal(size=(60, n_in)), rng.normal(size=(60, 2))
    std = {}
    for dtype in ("float32", "float64"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((n_in,), dtype=dtype), keras.layers.Dense(2, dtype=dtype)]
        )
        la = sigma.Laplace(model, x, y, structure="kfac", alpha=3.0, beta=2.0)
        assert la.structure.factor_eigen[0][1].dtype == dtype
        std[dtype] = la.predict(x[:10])[1]
    np.testing.assert_allclose(std["float32"], std["float64"], rtol=1e-4)
