"""Curvature against slow, obvious references: finite differences and per-sample loops."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_linear, make_mlp

import sigma
from sigma.curvature.engine import SMALL_K
from sigma.params import flat_weights, set_flat_weights


def _grad_ed(model, x, y, w):
    """∇E_D at flat weights w, by one plain tape (the reference for finite differences)."""
    set_flat_weights(model, w)
    with tf.GradientTape() as tape:
        e = 0.5 * tf.reduce_sum(tf.square(model(x, training=False) - y))
    grads = tape.gradient(e, model.trainable_variables)
    return np.concatenate([g.numpy().ravel() for g in grads])


def test_hessian_matches_central_finite_differences(mlp64, data):
    x, y = data
    w0 = flat_weights(mlp64)
    h = sigma.hessian(mlp64, x, y)
    eps = 1e-5
    fd = np.empty_like(h)
    for j in range(w0.size):  # slow obvious reference: one column per weight
        e = np.zeros_like(w0)
        e[j] = eps
        fd[:, j] = (_grad_ed(mlp64, x, y, w0 + e) - _grad_ed(mlp64, x, y, w0 - e)) / (2 * eps)
    set_flat_weights(mlp64, w0)
    assert h.shape == (sigma.num_params(mlp64),) * 2 == (54, 54)
    rel = np.linalg.norm(h - fd) / np.linalg.norm(fd)
    assert rel < 1e-6, rel
    np.testing.assert_allclose(h, fd, atol=1e-6 * np.abs(fd).max())


def test_hessian_is_symmetric_and_batch_invariant(mlp64, data):
    x, y = data
    h = sigma.hessian(mlp64, x, y)
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_allclose(sigma.hessian(mlp64, x, y, batch_size=5), h, rtol=1e-10, atol=1e-12)


def test_hessian_is_of_summed_error_not_keras_mean_loss(mlp64, data):
    """Keras' MSE is (1/(N K)) Σ (f−t)², whose Hessian is (2/(N K)) ∇²E_D (MATH.md)."""
    x, y = data
    h = sigma.hessian(mlp64, x, y)
    mse = keras.losses.MeanSquaredError(dtype="float64")
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = mse(y, mlp64(x))
        g = tf.concat(
            [tf.reshape(t, [-1]) for t in inner.gradient(loss, mlp64.trainable_variables)], 0
        )
    hm = np.concatenate(
        [
            tf.reshape(t, (g.shape[0], -1)).numpy()
            for t in outer.jacobian(g, mlp64.trainable_variables)
        ],
        axis=1,
    )
    np.testing.assert_allclose(hm, 2.0 / y.size * h, rtol=1e-8, atol=1e-12)


def test_hessian_equals_gauss_newton_for_linear_model(data):
    x, y = data
    model = make_linear()
    np.testing.assert_allclose(
        sigma.hessian(model, x, y), sigma.gauss_newton(model, x), rtol=1e-12, atol=1e-12
    )


def test_gauss_newton_differs_from_hessian_for_nonlinear_model(mlp64, data):
    x, y = data
    g, h = sigma.gauss_newton(mlp64, x), sigma.hessian(mlp64, x, y)
    assert np.linalg.eigvalsh(g).min() > -1e-10  # PSD
    assert np.linalg.norm(g - h) > 1e-3 * np.linalg.norm(h)


@pytest.mark.parametrize("n_out", [2, 6])  # a gradient per output / a vectorised jacobian
def test_output_jacobian_matches_per_sample_loop(mlp64, data, n_out):
    x, _ = data
    model = mlp64 if n_out == 2 else make_mlp(n_out=n_out)
    assert (n_out <= SMALL_K) == (n_out == 2)  # both routes are checked
    j = sigma.output_jacobian(model, x)
    assert j.shape == (12, n_out, sigma.num_params(model)) and j.dtype == np.float64
    for n in range(len(x)):
        for k in range(n_out):
            with tf.GradientTape() as tape:
                out = model(x[n : n + 1], training=False)[0, k]
            ref = np.concatenate(
                [g.numpy().ravel() for g in tape.gradient(out, model.trainable_variables)]
            )
            np.testing.assert_allclose(j[n, k], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma.output_jacobian(model, x, batch_size=5), j)


def test_gauss_newton_is_sum_of_jacobian_products(mlp64, data):
    x, _ = data
    j = sigma.output_jacobian(mlp64, x)
    ref = sum(j[n].T @ j[n] for n in range(len(x)))
    np.testing.assert_allclose(
        sigma.gauss_newton(mlp64, x, batch_size=4), ref, rtol=1e-10, atol=1e-12
    )


def test_weight_order_is_trainable_variables_flattened_row_major(mlp64):
    w = flat_weights(mlp64)
    kernel = mlp64.trainable_variables[0].numpy()
    np.testing.assert_array_equal(w[: kernel.size], kernel.reshape(-1))
    assert w.size == sigma.num_params(mlp64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_precision_is_kept(dtype, data):
    x, y = data
    model = make_mlp(dtype=dtype)
    assert model.trainable_variables[0].dtype == dtype
    ref_model = make_mlp(dtype="float64")
    set_flat_weights(model, flat_weights(ref_model))
    h32 = sigma.hessian(model, x, y)
    assert h32.dtype == np.float64
    ref = sigma.hessian(ref_model, x, y)
    tol = 1e-4 if dtype == "float32" else 1e-12
    assert np.linalg.norm(h32 - ref) / np.linalg.norm(ref) < tol


def test_functional_and_subclassed_models_work(data):
    x, y = data
    inp = keras.Input((3,), dtype="float64")
    out = keras.layers.Dense(2, dtype="float64")(
        keras.layers.Dense(4, activation="tanh", dtype="float64")(inp)
    )
    functional = keras.Model(inp, out)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(dtype="float64")
            self.d1 = keras.layers.Dense(4, activation="tanh", dtype="float64")
            self.d2 = keras.layers.Dense(2, dtype="float64")

        def call(self, z):
            return self.d2(self.d1(z))

    sub = Sub()
    sub(x[:1])
    sigma.set_flat_weights(sub, flat_weights(functional))
    np.testing.assert_allclose(
        sigma.hessian(sub, x, y), sigma.hessian(functional, x, y), rtol=1e-12
    )
