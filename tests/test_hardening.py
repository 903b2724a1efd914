"""Awkward models and inputs get a ValueError that says what is wrong and what to do: a model
without trainable weights, half precision, values that overflow inside the network, Embedding
indices, an unbatched dataset."""

import contextlib
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context
from tensorflow.python.util import _pywrap_util_port

import sigma
from sigma._grappler import own_calls

RNG = np.random.default_rng(11)
X = RNG.normal(size=(20, 3))
Y = RNG.normal(size=(20, 1))


def test_a_built_model_without_trainable_weights_is_not_called_unbuilt():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Activation("tanh")])
    with pytest.raises(ValueError, match=r"^model has no trainable weights: the error bar"):
        sigma.Laplace(model, X, np.tile(Y, 3))
    frozen = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    frozen.trainable = False
    with pytest.raises(ValueError, match=r"no trainable weights \(2 weights, all frozen"):
        sigma.Laplace(frozen, X, Y)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_refused_and_full_precision_is_the_way_out(dtype):
    keras.utils.set_random_seed(0)
    half = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", dtype=dtype),
            keras.layers.Dense(1, dtype=dtype),
        ]
    )
    with pytest.raises(ValueError, match=rf"^model has {dtype} weights.*sigma.full_precision"):
        sigma.Laplace(half, X, Y)
    copy = sigma.full_precision(half, "float64")
    assert {str(v.dtype) for v in copy.weights} == {"float64"}
    for a, b in zip(half.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float64), b)
    mean, std = sigma.Laplace(copy, X, Y).predict(X[:4])
    assert np.all(np.isfinite(std)) and std.shape == (4, 1)
    # a float64 model with the (half-precision) weights: the same σ as the copy
    ref = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(4, activation="tanh", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    ref.set_weights(copy.get_weights())
    np.testing.assert_allclose(sigma.Laplace(ref, X, Y).predict(X[:4])[1], std, rtol=1e-12)
    with pytest.raises(ValueError, match=r"^dtype must be 'float32' or 'float64'"):
        sigma.full_precision(half, "float16")


def test_mixed_precision_points_to_full_precision():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, dtype="mixed_float16")])
    with pytest.raises(ValueError, match=r"mixed-precision.*sigma.full_precision\(model\)"):
        sigma.Laplace(model, X, Y)
    copy = sigma.full_precision(model)
    assert sigma.Laplace(copy, X, Y).predict(X[:2])[1].shape == (2, 1)


def _overflowing(scale):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Lambda(lambda t: t * scale, name="blow_up"),
            keras.layers.Dense(1),
        ]
    )


def test_outputs_that_overflow_inside_the_network_are_located():
    model = _overflowing(1e30)
    big = np.abs(X) * 1e10  # finite in float32; × 1e30 inside overflows
    with pytest.raises(
        ValueError,
        match=r"^the model's outputs are NaN or infinite for \d+ of the 20 samples of x .*"
        r"first layer with non-finite output is 'blow_up' \(Lambda\).*x itself is finite",
    ):
        sigma.Laplace(model, big, Y)
    la = sigma.Laplace(_overflowing(1e3), X, Y, structure="diag", alpha=1e3)
    with pytest.raises(ValueError, match=r"^the model's outputs are NaN or infinite.*'blow_up'"):
        la.predict(np.abs(X[:3]) * 1e37)
    ds = tf.data.Dataset.from_tensor_slices((big.astype("float32"), Y)).batch(8)
    with pytest.raises(ValueError, match=r"samples of x \(dataset batch 0\).*'blow_up'"):
        sigma.Laplace(model, ds, structure="diag")


@pytest.mark.parametrize("structure", ["full", "diag", "kfac", "lowrank", "last_layer"])
def test_gradients_that_overflow_behind_finite_outputs_are_refused(structure):
    """tanh(1e200 z) at z = 0 is finite, its derivative 1e200: the curvature overflows."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(4, dtype="float64", kernel_initializer="zeros"),
            keras.layers.Lambda(lambda t: tf.tanh(1e200 * t), dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    if structure == "last_layer":  # the last layer's curvature is finite: σ is, too
        _, std = sigma.Laplace(model, X, Y, structure=structure).predict(X[:2])
        assert np.all(np.isfinite(std))
        return
    with pytest.raises(ValueError, match=r"NaN or infinite.*gradients overflow inside"):
        sigma.Laplace(model, X, Y, structure=structure)


def test_targets_beyond_the_model_dtype_are_refused():
    model = _overflowing(1.0)
    with pytest.raises(ValueError, match=r"^y has values beyond the range of .* float32"):
        sigma.Laplace(model, X, Y * 1e40)


def _embedding_model():
    keras.utils.set_random_seed(0)
    tokens, numbers = keras.Input((2,), dtype="int32", name="tok"), keras.Input((3,), name="num")
    emb = keras.layers.Flatten()(keras.layers.Embedding(5, 2, name="table")(tokens))
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([emb, numbers]))
    return keras.Model({"tok": tokens, "num": numbers}, out)


@pytest.mark.parametrize(
    "tokens, match",
    [
        (lambda t: t + 3, r"x\['tok'\] feeds the Embedding layer 'table' of 5 rows: .*\[0, 5\)"),
        (lambda t: t - 3, r"indices must be in \[0, 5\), got values in \[-3"),
        (lambda t: t + 0.5, r"x\['tok'\] .* must hold integer indices, got non-integer"),
    ],
)
def test_embedding_indices_are_checked(tokens, match):
    model = _embedding_model()
    tok = RNG.integers(0, 5, size=(20, 2))
    la = sigma.Laplace(model, {"tok": tok, "num": X}, Y, structure="diag")
    with pytest.raises(ValueError, match=match):
        sigma.Laplace(model, {"tok": tokens(tok), "num": X}, Y, structure="diag")
    with pytest.raises(ValueError, match=match):
        la.predict({"tok": tokens(tok), "num": X})
    seq = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(5, 2)])
    seq = keras.Sequential([seq, keras.layers.Flatten(), keras.layers.Dense(1)])
    assert sigma.Laplace(seq, tok, Y, structure="diag").predict(tok[:2])[1].shape == (2, 1)


def test_an_unbatched_dataset_gets_the_hint_to_batch_it():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ds = tf.data.Dataset.from_tensor_slices((X.astype("float32"), Y))
    with pytest.raises(ValueError, match=r"Dataset of single samples .*dataset.batch\(32\)"):
        sigma.Laplace(model, ds)
    with pytest.raises(ValueError, match=r"Dataset of single samples"):
        sigma.Laplace(model, ds, structure="diag")


@pytest.mark.parametrize(
    "structure, options, match",
    [
        (
            "lowrank",
            {"rnak": 5},
            r"\['rnak'\] are not options of structure 'lowrank': it takes 'rank'",
        ),
        ("full", {"rank": 5}, r"\['rank'\] are not options of structure 'full': it takes none$"),
        (
            "diag",
            [("fast", True)],
            r"^structure_options must be a dict of keyword arguments, got list",
        ),
    ],
)
def test_structure_options_are_checked(structure, options, match):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=match):
        sigma.Laplace(model, X, Y, structure=structure, structure_options=options)


def test_a_nested_half_precision_model_gets_a_full_precision_copy():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, dtype="float16")])
    x_in = keras.Input((3,))
    outer = keras.Model(x_in, keras.layers.Dense(1, dtype="float16")(inner(x_in)))
    copy = sigma.full_precision(outer)
    assert {str(v.dtype) for v in copy.weights} == {"float32"}
    assert sigma.Laplace(copy, X, Y, structure="diag").predict(X[:2])[1].shape == (2, 1)


def test_a_structure_instance_used_twice_is_not_shared():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    instance = sigma.structures.get("kfac")()
    first = sigma.Laplace(model, X, Y, structure=instance)
    before = first.predict(X[:3])[1]
    second = sigma.Laplace(model, X[:5] * 3.0, Y[:5], structure=instance)
    assert not np.allclose(second.predict(X[:3])[1], before)
    np.testing.assert_array_equal(first.predict(X[:3])[1], before)
    fresh = sigma.Laplace(model, X[:5] * 3.0, Y[:5], structure="kfac")
    np.testing.assert_allclose(second.predict(X[:3])[1], fresh.predict(X[:3])[1], rtol=1e-6)


def test_a_boolean_prior_is_two_groups():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    la = sigma.Laplace(model, X, Y, prior=np.array([True, False, True, False]), alpha=[1.0, 2.0])
    assert la.alpha.shape == (2,)


def test_last_layer_on_a_model_with_several_outputs_is_refused_clearly():
    x_in = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(x_in)
    outputs = {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(2, name="b")(h)}
    model = keras.Model(x_in, outputs)
    with pytest.raises(ValueError, match=r"weights='last_layer' is ambiguous for a model with 2"):
        sigma.Laplace(model, X, {"a": Y, "b": np.tile(Y, 2)}, structure="last_layer")


def _relu_model(dtype):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,), dtype=dtype),
            keras.layers.Dense(5, "relu", dtype=dtype),
            keras.layers.Dense(1, dtype=dtype),
        ]
    )


def _remapping():
    options = context.context().function_call_options
    config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
    return config.graph_options.rewrite_options.remapping


def test_sigma_optimises_its_float64_graphs_without_the_remapper_and_only_them(monkeypatch):
    """issue 28: grappler's remapper logs "Not handling type DT_DOUBLE" for float64 graphs
    when oneDNN is on. sigma's calls on a float64 model turn it off in this thread's
    function-call options, and only for their duration; float32 and the user's own calls
    keep TensorFlow's options. The values are the same either way (nothing is fused in
    float64), here to the bit."""
    outside = context.context().function_call_options
    off = rewriter_config_pb2.RewriterConfig.OFF
    with own_calls(_relu_model("float64")):
        inner = _remapping()
        with own_calls(_relu_model("float64")):  # re-entrant
            assert _remapping() == inner
        assert _remapping() == inner
    assert (inner == off) == bool(_pywrap_util_port.IsMklEnabled())
    assert context.context().function_call_options is outside and _remapping() != off
    with own_calls(_relu_model("float32")):
        assert context.context().function_call_options is outside
    with pytest.raises(RuntimeError), own_calls(_relu_model("float64")):
        raise RuntimeError  # whatever ends sigma's call
    assert context.context().function_call_options is outside

    model = _relu_model("float64")
    quiet = sigma.Laplace(model, X, Y, structure="kfac").predict(X)
    monkeypatch.setattr(sigma.posterior, "own_calls", lambda model: contextlib.nullcontext())
    loud = sigma.Laplace(model, X, Y, structure="kfac").predict(X)  # re-optimised, remapper on
    for a, b in zip(quiet, loud, strict=True):
        assert np.array_equal(a, b)


_DT_DOUBLE = textwrap.dedent(
    """
    import os
    import keras, numpy as np
    import sigma

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((3,), dtype="float64"),
        keras.layers.Dense(5, "relu", dtype="float64"),
        keras.layers.Dense(2, dtype="float64"),
    ])
    x = np.random.default_rng(0).normal(size=(20, 3))
    os.write(2, b"SIGMA BEGINS\\n")
    la = sigma.Laplace(model, x, x[:, :2]).optimize_evidence()
    la.predict(x)
    sigma.Laplace(model, x, x[:, :2], structure="kfac").predict(x)
    os.write(2, b"SIGMA ENDS\\n")
    model.predict(x, verbose=0)  # the model's own graph, with TensorFlow's own options
    """
)


@pytest.mark.slow
def test_a_float64_model_prints_no_dt_double_lines_from_sigmas_graphs(tmp_path):
    """issue 28: a Laplace of a float64 ReLU network printed 12-20 C++ lines "Not handling
    type DT_DOUBLE". In a process of its own with TensorFlow's C++ warnings on: none while
    sigma works; where TensorFlow emits them at all (the model's own predict afterwards is
    the control), the check could fail — elsewhere it is skipped, not passed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _DT_DOUBLE], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, rest = proc.stderr.split("SIGMA BEGINS\n")
    during, control = rest.split("SIGMA ENDS\n")
    assert "Not handling type" not in during, during[-3000:]
    if "Not handling type DT_DOUBLE" not in control:
        pytest.skip("TensorFlow here does not report DT_DOUBLE for float64 graphs (no oneDNN)")
