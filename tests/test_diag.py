"""structure="diag": the exact diagonal of the GGN, and σ from A = α I + β diag(G) exactly."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from layer_models import model_cases

import sigma
from sigma.params import flat_weights, set_flat_weights
from sigma.structures import Diag

RNG = np.random.default_rng(1)
X = RNG.normal(size=(12, 3))
Y = RNG.normal(size=(12, 2))
LABELS = RNG.integers(0, 2, size=12)


def _fit(model, x, likelihood="regression", **kw):
    return Diag(**kw).fit(model, x, likelihood=likelihood, curvature="ggn", batch_size=5)


@model_cases(RNG)
def test_diagonal_equals_gauss_newton_diagonal_and_sigma_its_inverse(build, inputs, likelihood):
    model, x = build(), inputs(11)
    s = _fit(model, x, likelihood)
    ref = np.diag(sigma.gauss_newton(model, x, likelihood=likelihood))
    assert s.diagonal.shape == (sigma.num_params(model),) and s.diagonal.dtype == np.float64
    np.testing.assert_allclose(s.diagonal, ref, rtol=1e-10, atol=1e-12 * ref.max())
    j = sigma.output_jacobian(model, x[:3])
    np.testing.assert_allclose(
        s.predictive_variance(model, x[:3], 0.7, 3.0, batch_size=2),
        np.einsum("nkp,p->nk", j**2, 1.0 / (0.7 + 3.0 * ref)),
        rtol=1e-10,
    )


def test_laplace_covariance_and_logdet_equal_the_explicit_diagonal_precision():
    model, likelihood = make_mlp(), "classification"
    alpha, beta = 0.3, 1.0
    la = sigma.Laplace(model, X, LABELS, structure="diag", likelihood=likelihood, alpha=alpha)
    a = alpha * np.eye(la.n_params) + beta * np.diag(
        np.diag(sigma.gauss_newton(model, X, likelihood=likelihood))
    )
    j = sigma.output_jacobian(model, X[:5])
    cov = np.einsum("nkp,pq,nlq->nkl", j, np.linalg.inv(a), j)
    np.testing.assert_allclose(la.predictive_covariance(X[:5], noise=False), cov, rtol=1e-10)
    var = la.structure.predictive_variance(model, X[:5], alpha, beta)
    np.testing.assert_allclose(var, np.einsum("nkk->nk", cov), rtol=1e-10)
    np.testing.assert_allclose(
        la.structure.logdet(alpha, beta), np.linalg.slogdet(a)[1], rtol=1e-12
    )


def test_generic_path_equals_fast_path_on_dense():
    model = make_mlp()
    fast, generic = _fit(model, X), _fit(model, X, fast=False)
    assert not generic.plan.fast and not fast.plan.generic
    np.testing.assert_allclose(generic.diagonal, fast.diagonal, rtol=1e-12)
    np.testing.assert_allclose(
        generic.predictive_covariance(model, X[:4], 0.5, 2.0),
        fast.predictive_covariance(model, X[:4], 0.5, 2.0),
        rtol=1e-12,
    )


def test_batches_and_datasets_give_the_same_diagonal():
    model = make_mlp()
    ref = Diag().fit(model, X, curvature="ggn", batch_size=None).diagonal
    np.testing.assert_allclose(_fit(model, X).diagonal, ref, rtol=1e-12)
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)
    np.testing.assert_allclose(
        Diag().fit(model, data, curvature="ggn", batch_size=None).diagonal, ref, rtol=1e-12
    )


def test_float32_model_is_close_to_float64():
    m64, m32 = make_mlp(), make_mlp(dtype="float32")
    set_flat_weights(m32, flat_weights(m64))
    s64 = sigma.Laplace(m64, X, Y, structure="diag").predict(X)[1]
    s32 = sigma.Laplace(m32, X, Y, structure="diag").predict(X)[1]
    assert s32.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=1e-4)


def test_predicting_with_another_model_is_refused():
    s = _fit(make_mlp(), X)
    with pytest.raises(ValueError, match="fitted on another model"):
        s.predictive_variance(make_mlp(), X, 1.0, 1.0)


def test_exact_hessian_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="curvature='ggn' or curvature='ggn_mc' only"):
        sigma.Laplace(make_mlp(), X, Y, structure="diag", curvature="hessian")
