"""The capture of layer inputs and output sensitivities (sigma.curvature.capture) against the (N, K, P)
Jacobian of sigma.output_jacobian: per-sample gradients are outer products, for every way of
building a model and every layer path."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from layer_models import (
    attention,
    cnn,
    embedding_bn_dropout,
    folded,
    functional_mlp,
    jacobian_from_capture,
    loop_jacobian,
    shared_dense,
    strided_cnn,
    tied,
    tokens,
)

import sigma
from sigma.curvature.capture import capture, plan_layers, probe

RNG = np.random.default_rng(0)
MODELS = {
    "sequential_mlp": (make_mlp, lambda n: RNG.normal(size=(n, 3))),
    "functional_mlp": (functional_mlp, lambda n: RNG.normal(size=(n, 3))),
    "subclassed_shared_sequence_nested": (shared_dense, lambda n: RNG.normal(size=(n, 3))),
    "cnn_pool": (cnn, lambda n: RNG.normal(size=(n, 7, 7, 2))),
    "strided_dilated_causal_conv": (strided_cnn, lambda n: RNG.normal(size=(n, 8, 6, 2))),
    "embedding_batchnorm_dropout": (embedding_bn_dropout, tokens),
}


@pytest.mark.parametrize(
    "build, inputs, looped",
    [
        (lambda: attention(n_out=4), lambda n: RNG.normal(size=(n, 4, 6)), True),
        (lambda: make_mlp(n_out=4), lambda n: RNG.normal(size=(n, 3)), True),
        (lambda: cnn(n_out=4), lambda n: RNG.normal(size=(n, 7, 7, 2)), False),
    ],
)
def test_a_traced_capture_loops_its_backward_passes_where_that_pays(build, inputs, looped):
    """Traced, the K backward passes are one while loop (the backward graph built once, not K
    times) except in a convolutional network, where the unrolled passes run faster; either
    way the sensitivities are those of the eager capture's K separate passes."""
    model, x = build(), tf.constant(inputs(5))
    plan = probe(model, plan_layers(model), x[:4])
    lik = sigma.likelihoods.get("classification")
    eager = capture(model, plan, x, likelihood=lik)
    traced = tf.function(lambda xb: capture(model, plan, xb, likelihood=lik))
    graph = traced.get_concrete_function(x).graph
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert bool(loops) == looped
    out = traced(x)
    assert eager.sens[0].shape[0] == (model.output_shape[-1] - 1)  # C − 1 pseudo-outputs
    for mine, ref in zip(out.sens, eager.sens, strict=True):
        np.testing.assert_allclose(mine.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_outer_products_rebuild_the_jacobian(name):
    build, inputs = MODELS[name]
    model, x = build(), inputs(5)
    j, plan = jacobian_from_capture(model, x)
    ref = sigma.output_jacobian(model, x)
    assert j.shape == ref.shape
    np.testing.assert_allclose(j, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    covered = np.sort(np.concatenate([b.index for b in plan.fast + plan.generic]))
    np.testing.assert_array_equal(covered, np.arange(sigma.num_params(model)))


def test_generic_path_equals_fast_path_on_dense():
    model, x = make_mlp(), RNG.normal(size=(6, 3))
    fast, plan_f = jacobian_from_capture(model, x, fast=True)
    generic, plan_g = jacobian_from_capture(model, x, fast=False)
    assert len(plan_f.fast) == 3 and not plan_f.generic
    assert not plan_g.fast and len(plan_g.generic) == 3
    np.testing.assert_allclose(generic, fast, rtol=1e-12, atol=1e-14)


def test_classification_pseudo_outputs_are_root_transpose_jacobian():
    model, x = make_mlp(n_out=3), RNG.normal(size=(5, 3))
    j, _ = jacobian_from_capture(model, x, likelihood="classification")
    ref = sigma.output_jacobian(model, x)
    root = sigma.likelihoods.get("classification").hessian_sqrt(tf.constant(model(x))).numpy()
    np.testing.assert_allclose(j, np.einsum("bkj,bkp->bjp", root, ref), rtol=1e-10, atol=1e-13)


def test_plan_says_which_layer_takes_which_path():
    plan = plan_layers(embedding_bn_dropout())
    paths = {row["class"]: row["path"] for row in plan.table()}
    assert paths == {
        "Dense": "fast (dense)",
        "Embedding": "fast (embedding)",
        "BatchNormalization": "generic (from the capture)",
    }
    plan = plan_layers(strided_cnn())
    assert [b.kind for b in plan.fast] == ["conv2d", "conv2d", "conv1d", "conv1d", "dense"]
    assert [b.d_in for b in plan.fast] == [3 * 2 * 2 + 1, 2 * 2 * 3 + 1, 2 * 2 + 1, 2 * 2, 3 + 1]


@pytest.mark.slow
def test_unsupported_variants_take_the_generic_path():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5, 5, 4), dtype="float64"),
            keras.layers.Conv2D(4, 2, groups=2, dtype="float64"),
            keras.layers.DepthwiseConv2D(2, dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )
    plan = plan_layers(model)
    assert [g.layer_class for g in plan.generic] == ["Conv2D", "DepthwiseConv2D"]
    x = RNG.normal(size=(3, 5, 5, 4))
    j, plan = jacobian_from_capture(model, x)
    assert not plan.generic_pfor  # pfor fails on the grouped convolution: while loops instead
    np.testing.assert_allclose(j, loop_jacobian(model, x), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("build", [tied, folded], ids=["tied-weights", "samples-folded"])
def test_layers_not_applied_per_sample_fall_back_to_generic_with_a_warning(build):
    model = build()
    x = RNG.normal(size=(4, 3 if build is tied else 6))
    with pytest.warns(UserWarning, match="generic autodiff path"):
        j, plan = jacobian_from_capture(model, x)
    assert [b.layer.name for b in plan.fast] == [model.out.name]
    np.testing.assert_allclose(j, sigma.output_jacobian(model, x), rtol=1e-10, atol=1e-13)


def test_time_distributed_dense_is_a_layer_called_once_per_step():
    keras.utils.set_random_seed(0)
    inner = keras.layers.Dense(2, activation="tanh", dtype="float64")
    model = keras.Sequential(
        [
            keras.Input((3, 2), dtype="float64"),
            keras.layers.TimeDistributed(inner, dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(2, dtype="float64"),
        ]
    )
    x = RNG.normal(size=(4, 3, 2))
    j, plan = jacobian_from_capture(model, x)
    assert [b.positions for b in plan.fast if b.layer is inner] == [3]
    np.testing.assert_allclose(j, sigma.output_jacobian(model, x), rtol=1e-10, atol=1e-13)


def test_patches_are_removed_after_capture_even_on_error():
    model = make_mlp()
    dense = model.layers[0]
    act = dense.activation
    plan = plan_layers(model)
    capture(model, plan, tf.constant(RNG.normal(size=(2, 3))))
    assert "call" not in dense.__dict__ and dense.activation is act
    with pytest.raises(Exception):  # noqa: B017 - wrong input width, raised inside the patch
        capture(model, plan, tf.constant(RNG.normal(size=(2, 4))))
    assert "call" not in dense.__dict__ and dense.activation is act
    np.testing.assert_allclose(model(np.ones((1, 3))), make_mlp()(np.ones((1, 3))))
