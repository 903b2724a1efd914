"""weights="last_layer" (also spelled structure="last_layer"): equal to full when only the last
layer is trainable, equal to the last-layer block of the full curvature otherwise, and its
refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.weights import final_dense


def _frozen_body(activation=None, seed=0, use_bias=True):
    model = make_mlp(seed=seed)
    if activation is not None or not use_bias:
        keras.utils.set_random_seed(seed)
        last = keras.layers.Dense(2, activation=activation, use_bias=use_bias, dtype="float64")
        model = keras.Sequential([*model.layers[:-1], last])
        model.build((None, 3))
    for layer in model.layers[:-1]:
        layer.trainable = False
    return model


@pytest.mark.parametrize(
    ("likelihood", "curvature", "activation"),
    [
        ("regression", "ggn", None),
        ("regression", "hessian", None),
        ("regression", "ggn", "sigmoid"),
        ("regression", "hessian", "tanh"),
        ("classification", "ggn", None),
        ("classification", "hessian", None),
    ],
)
def test_equals_full_when_only_last_layer_is_trainable(rng, likelihood, curvature, activation):
    model = _frozen_body(activation)
    assert sigma.num_params(model) == 10
    x = rng.normal(size=(25, 3))
    y = rng.normal(size=(25, 2)) if likelihood == "regression" else rng.integers(0, 2, 25)
    kw = dict(likelihood=likelihood, curvature=curvature, alpha=0.7, negative="clip")
    full = sigma.Laplace(model, x, y, **kw)
    last = sigma.Laplace(model, x, y, structure="last_layer", **kw)
    np.testing.assert_allclose(last.structure.matrix, full.structure.matrix, atol=1e-10)
    np.testing.assert_allclose(
        last.predictive_covariance(x[:5]), full.predictive_covariance(x[:5]), rtol=1e-8, atol=1e-12
    )
    assert last.n_params == full.n_params == 10
    assert last.weight_error == pytest.approx(full.weight_error)
    assert last.log_evidence() == pytest.approx(full.log_evidence(), rel=1e-10)


def test_is_the_last_layer_block_of_the_full_curvature(rng, mlp64):
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    alpha, beta = 0.4, 3.0
    last = sigma.Laplace(mlp64, x, y, structure="last_layer", alpha=alpha, beta=beta)
    idx = np.arange(54 - 10, 54)  # the final Dense layer: kernel (4, 2) row-major, bias (2,)
    g = sigma.gauss_newton(mlp64, x)[np.ix_(idx, idx)]
    np.testing.assert_allclose(last.structure.matrix, g, rtol=1e-10, atol=1e-12)
    j = sigma.output_jacobian(mlp64, x[:6])[:, :, idx]
    a_inv = np.linalg.inv(alpha * np.eye(10) + beta * g)
    ref = 1.0 / beta + np.einsum("nkp,pq,nkq->nk", j, a_inv, j)
    np.testing.assert_allclose(last.predict(x[:6])[1] ** 2, ref, rtol=1e-9)
    # the posterior covers the last layer: P_last weights, E_W over them only
    w = sigma.flat_weights(mlp64)[idx]
    assert last.n_params == 10 and last.weight_error == pytest.approx(0.5 * w @ w)
    last.optimize_evidence()
    assert 0 < last.gamma <= 10


def test_functional_subclassed_no_bias_and_dataset(rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    inp = keras.Input((3,), dtype="float64")
    hidden = keras.layers.Dense(4, activation="tanh", dtype="float64")
    head = keras.layers.Dense(2, use_bias=False, dtype="float64")
    functional = keras.Model(inp, head(hidden(inp)))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(dtype="float64")
            self.d1 = keras.layers.Dense(4, activation="tanh", dtype="float64")
            self.d2 = keras.layers.Dense(2, use_bias=False, dtype="float64")

        def call(self, z):
            return self.d2(self.d1(z))

    sub = Sub()
    sub(x[:1])
    sigma.set_flat_weights(sub, sigma.flat_weights(functional))
    ref = sigma.Laplace(functional, x, y, structure="last_layer")
    assert ref.n_params == 8
    for model, data in (
        (sub, (x, y)),
        (functional, (tf.data.Dataset.from_tensor_slices((x, y)).batch(6),)),
    ):
        la = sigma.Laplace(model, *data, structure="last_layer")
        np.testing.assert_allclose(la.structure.eigenvalues, ref.structure.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(la.predict(x[:3])[1], ref.predict(x[:3])[1], rtol=1e-10)


def test_a_layer_after_the_last_dense_layer_is_differentiated_through(rng):
    """The Jacobian of the last layer's weights is taken through whatever follows it."""
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    after = keras.Sequential([*make_mlp().layers, keras.layers.Activation("tanh")])
    after.build((None, 3))
    la = sigma.Laplace(after, x, y, structure="last_layer", alpha=0.5, beta=2.0)
    idx = np.arange(54 - 10, 54)
    g = sigma.gauss_newton(after, x)[np.ix_(idx, idx)]
    np.testing.assert_allclose(la.structure.matrix, g, rtol=1e-10, atol=1e-12)


def test_refusals(rng, mlp64):
    frozen = make_mlp()
    frozen.layers[-1].trainable = False
    with pytest.raises(ValueError, match="has no trainable weights"):
        final_dense(frozen)
    inp = keras.Input((3,), dtype="float64")
    no_dense = keras.Model(
        inp, keras.layers.Conv1D(2, 1, dtype="float64")(keras.layers.Reshape((3, 1))(inp))
    )
    with pytest.raises(ValueError, match="needs a model with a keras Dense layer"):
        final_dense(no_dense)
