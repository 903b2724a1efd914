"""Per-sample vectorisation (sigma.curvature.vectorize) on the layers that broke it: Keras'
einsum (every EinsumDense, MultiHeadAttention) and recurrent layers. References are plain
tapes, one sample at a time, no pfor."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_models import loop_jacobian

import sigma
from sigma.curvature import vectorize

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "x_shape, y_shape, adj_x, adj_y, stacked",
    [
        ((1, 8, 16), (16, 12), False, False, "x"),  # an EinsumDense projection, per sample
        ((1, 16, 8), (16, 12), True, False, "x"),
        ((1, 8, 16), (12, 16), False, True, "x"),
        ((8, 16), (1, 16, 12), False, False, "y"),
        ((16, 8), (1, 12, 16), True, True, "y"),
        ((1, 8, 16), (3, 16, 12), False, False, "both"),  # a broadcast batch axis
    ],
)
def test_batch_matmul_converter_gives_matmuls_values(x_shape, y_shape, adj_x, adj_y, stacked):
    n = 7
    x = RNG.normal(size=((n,) if stacked in ("x", "both") else ()) + x_shape).astype("f4")
    y = RNG.normal(size=((n,) if stacked in ("y", "both") else ()) + y_shape).astype("f4")

    def one(i):
        xi = tf.gather(x, i) if stacked in ("x", "both") else tf.constant(x)
        yi = tf.gather(y, i) if stacked in ("y", "both") else tf.constant(y)
        return tf.matmul(xi, yi, adjoint_a=adj_x, adjoint_b=adj_y)

    with vectorize.converting():
        got = tf.vectorized_map(one, tf.range(n)).numpy()
    ref = np.stack([one(i).numpy() for i in range(n)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the converter is pfor's own again afterwards
    from tensorflow.python.ops.parallel_for import pfor

    assert pfor._pfor_converter_registry["BatchMatMulV2"] is not vectorize._batch_matmul


def attention(seed=0, dtype="float32"):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 8), dtype=dtype)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dtype=dtype)(inp, inp)
    h = keras.layers.LayerNormalization(dtype=dtype)(h + inp)
    out = keras.layers.Dense(2, dtype=dtype)(keras.layers.GlobalAveragePooling1D(dtype=dtype)(h))
    return keras.Model(inp, out)


def recurrent(kind, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5, 3), dtype="float64")
    if kind == "Bidirectional":
        layer = keras.layers.Bidirectional(keras.layers.LSTM(3, dtype="float64"), dtype="float64")
    else:
        layer = getattr(keras.layers, kind)(4, dtype="float64")
    return keras.Model(inp, keras.layers.Dense(2, dtype="float64")(layer(inp)))


def test_the_jacobian_of_an_attention_model_equals_a_per_sample_loop():
    # float32: the dtype in which TensorFlow's broadcast batch matmul goes wrong
    model = attention()
    x = RNG.normal(size=(12, 6, 8)).astype("f4")
    j = sigma.output_jacobian(model, x)
    ref = loop_jacobian(model, x)
    np.testing.assert_allclose(j, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("kind", ["SimpleRNN", "GRU", "LSTM", "Bidirectional"])
def test_the_jacobian_of_a_recurrent_model_equals_a_per_sample_loop(kind, caplog):
    model = recurrent(kind)
    x = RNG.normal(size=(6, 5, 3))
    with caplog.at_level(logging.INFO, logger="tensorflow"):
        j = sigma.output_jacobian(model, x)
    np.testing.assert_allclose(j, loop_jacobian(model, x), rtol=1e-9, atol=1e-12)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage()[:200] for r in caplog.records
    ]


def test_a_recurrent_model_loops_over_samples_without_trying_pfor_first(monkeypatch):
    """pfor cannot vectorise a while loop's gradient; trying it first costs 3–4× the loop's
    tracing, in every graph traced for the model. The engine knows from the layers (a
    recurrent layer not unrolled) and loops at once; an unrolled one, without a while loop,
    is vectorised; a failure pfor meets elsewhere is remembered per model."""

    assert all(
        sigma.keras_compat.runs_time_loops(recurrent(kind))
        for kind in ["SimpleRNN", "GRU", "LSTM", "Bidirectional"]
    )
    inp = keras.Input((5, 3))
    unrolled = keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(4, unroll=True)(inp)))
    assert not sigma.keras_compat.runs_time_loops(unrolled)

    attempts = []
    real = tf.vectorized_map

    def counting(fn, elems, **kwargs):
        attempts.append(fn)
        return real(fn, elems, **kwargs)

    monkeypatch.setattr(tf, "vectorized_map", counting)
    x = RNG.normal(size=(6, 5, 3))
    model = recurrent("LSTM")
    sigma.output_jacobian(model, x)
    sigma.Laplace(model, x, RNG.normal(size=(6, 2)), structure="diag")
    assert attempts == []
    sigma.output_jacobian(unrolled, x.astype("float32"))
    assert len(attempts) == 1

    def fails(fn, elems, **kwargs):
        attempts.append(fn)
        raise NotImplementedError("no converter")

    monkeypatch.setattr(tf, "vectorized_map", fails)
    attempts.clear()
    memo = {}
    for _ in range(2):
        out = vectorize.per_sample(lambda t: 2.0 * t, tf.ones(3), tf.TensorSpec([]), memo=memo)
        np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])
    assert len(attempts) == 1 and memo == {"pfor": False}
