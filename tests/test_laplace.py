"""Laplace predictive against the closed-form Bayesian linear regression, and its contract."""

import numpy as np
import pytest
from conftest import make_linear, make_mlp

import sigma
from sigma.params import set_flat_weights


def _blr(x, t, x_new, alpha, beta):
    """Closed-form Bayesian linear regression (Bishop §3.3), one output at a time, with bias."""
    phi, phi_new = np.c_[x, np.ones(len(x))], np.c_[x_new, np.ones(len(x_new))]
    s = np.linalg.inv(alpha * np.eye(phi.shape[1]) + beta * phi.T @ phi)
    means = beta * s @ phi.T @ t  # (D+1, K)
    var = 1.0 / beta + np.einsum("nd,de,ne->n", phi_new, s, phi_new)
    return means, phi_new @ means, np.sqrt(var)


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_predict_equals_closed_form_bayesian_linear_regression(rng, curvature):
    x, x_new = rng.normal(size=(30, 3)), rng.normal(size=(7, 3))
    t = x @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(30, 2))
    alpha, beta = 0.7, 25.0
    means, mean_ref, std_ref = _blr(x, t, x_new, alpha, beta)
    model = make_linear()
    # weights in package order: kernel (3, 2) row-major, then bias (2,)
    set_flat_weights(model, np.concatenate([means[:3].ravel(), means[3]]))
    la = sigma.Laplace(model, x, t, curvature=curvature, alpha=alpha, beta=beta)
    mean, std = la.predict(x_new)
    assert mean.shape == std.shape == (7, 2) and std.dtype == np.float64
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-8)
    np.testing.assert_allclose(std, np.repeat(std_ref[:, None], 2, axis=1), rtol=1e-8)
    _, std_w = la.predict(x_new, noise=False)
    np.testing.assert_allclose(std_w**2, std**2 - 1.0 / beta, rtol=1e-8)


def test_predictive_covariance_diagonal_is_variance(rng, mlp64):
    x = rng.normal(size=(15, 3))
    y = rng.normal(size=(15, 2))
    la = sigma.Laplace(mlp64, x, y, alpha=0.5, beta=3.0)
    cov = la.predictive_covariance(x[:4])
    _, std = la.predict(x[:4])
    assert cov.shape == (4, 2, 2)
    np.testing.assert_allclose(np.einsum("nkk->nk", cov), std**2, rtol=1e-10)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-12)


def test_predict_matches_explicit_inverse(rng, mlp64):
    """σ² = 1/β + g A⁻¹ g with A built explicitly (catches any factor slip in the eigenbasis)."""
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    alpha, beta = 0.3, 4.0
    la = sigma.Laplace(mlp64, x, y, alpha=alpha, beta=beta, curvature="ggn")
    a = alpha * np.eye(la.n_params) + beta * sigma.gauss_newton(mlp64, x)
    j = sigma.output_jacobian(mlp64, x[:5])
    ref = 1.0 / beta + np.einsum("nkp,pq,nkq->nk", j, np.linalg.inv(a), j)
    np.testing.assert_allclose(la.predict(x[:5])[1] ** 2, ref, rtol=1e-9)


def test_alpha_beta_can_change_without_refit(rng, mlp64):
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    la = sigma.Laplace(mlp64, x, y, alpha=1.0, beta=1.0)
    la.alpha, la.beta = 2.0, 5.0
    ref = sigma.Laplace(mlp64, x, y, alpha=2.0, beta=5.0)
    np.testing.assert_allclose(la.predict(x)[1], ref.predict(x)[1], rtol=1e-12)


def test_float32_model_gives_float64_sigma_close_to_float64_model(rng):
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    m64, m32 = make_mlp(dtype="float64"), make_mlp(dtype="float32")
    set_flat_weights(m32, sigma.flat_weights(m64))
    s64 = sigma.Laplace(m64, x, y).predict(x)[1]
    s32 = sigma.Laplace(m32, x, y).predict(x)[1]
    assert s32.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=1e-4)


def test_changed_weights_are_refused(rng, mlp64):
    x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 2))
    la = sigma.Laplace(mlp64, x, y)
    set_flat_weights(mlp64, sigma.flat_weights(mlp64) + 1.0)
    with pytest.raises(ValueError, match="weights .* changed since"):
        la.predict(x)
