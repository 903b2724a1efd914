"""Every Keras model shape: several inputs (a list or a dict of arrays, datasets of them) and
several outputs (a list or a dict, names carried into the predictions), against the
equivalent single-input / single-output model with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sigma
from sigma.params import flat_weights, set_flat_weights

F = "float64"
RNG = np.random.default_rng(8)
XA, XB = RNG.normal(size=(25, 2)), RNG.normal(size=(25, 3))
Y = np.tanh(np.c_[XA, XB] @ RNG.normal(size=(5, 2))) + 0.1 * RNG.normal(size=(25, 2))
STRUCTURES = [
    ("full", None),
    ("diag", None),
    ("kfac", None),
    ("lowrank", {"rank": 6}),
    ("last_layer", None),
]


def _two_inputs():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((2,), name="a", dtype=F), keras.Input((3,), name="b", dtype=F)
    h = keras.layers.Dense(5, activation="tanh", dtype=F)(keras.layers.Concatenate(dtype=F)([a, b]))
    return keras.Model([a, b], keras.layers.Dense(2, dtype=F)(h))


def _one_input(weights):
    keras.utils.set_random_seed(0)
    x = keras.Input((5,), dtype=F)
    h = keras.layers.Dense(5, activation="tanh", dtype=F)(x)
    model = keras.Model(x, keras.layers.Dense(2, dtype=F)(h))
    set_flat_weights(model, weights)
    return model


@pytest.mark.parametrize(("structure", "options"), STRUCTURES)
@pytest.mark.parametrize("form", ["list", "dict"])
def test_two_inputs_equal_one_input_with_concatenated_features(structure, options, form):
    two = _two_inputs()
    one = _one_input(flat_weights(two))
    x = [XA, XB] if form == "list" else {"b": XB, "a": XA}
    kw = dict(structure=structure, structure_options=options, alpha=0.5, beta=2.0)
    la2 = sigma.Laplace(two, x, Y, **kw)
    la1 = sigma.Laplace(one, np.c_[XA, XB], Y, **kw)
    x_new = [XA[:6], XB[:6]] if form == "list" else {"a": XA[:6], "b": XB[:6]}
    mean2, std2 = la2.predict(x_new)
    mean1, std1 = la1.predict(np.c_[XA, XB][:6])
    np.testing.assert_allclose(mean2, mean1, rtol=1e-12)
    np.testing.assert_allclose(std2, std1, rtol=1e-10)
    assert la2.log_evidence() == pytest.approx(la1.log_evidence(), rel=1e-10)


def test_a_dataset_of_dict_inputs():
    two = _two_inputs()
    ref = sigma.Laplace(two, [XA, XB], Y, structure="kfac")
    ds = tf.data.Dataset.from_tensor_slices(({"a": XA, "b": XB}, Y)).batch(7)
    la = sigma.Laplace(two, ds, structure="kfac")
    assert la.n_data == 25
    np.testing.assert_allclose(
        la.predict({"a": XA[:4], "b": XB[:4]})[1], ref.predict([XA[:4], XB[:4]])[1], rtol=1e-10
    )


def test_inputs_are_checked_part_by_part():
    two = _two_inputs()
    with pytest.raises(ValueError, match=r"^x is missing the model's input\(s\) \['b'\]"):
        sigma.Laplace(two, {"a": XA}, Y)
    with pytest.raises(ValueError, match=r"^x has key\(s\) \['c'\] that are not inputs"):
        sigma.Laplace(two, {"a": XA, "b": XB, "c": XB}, Y)
    with pytest.raises(ValueError, match=r"^x\['b'\] has shape \(25, 4\), but the model expects"):
        sigma.Laplace(two, {"a": XA, "b": np.c_[XB, XB[:, :1]]}, Y)
    bad = XB.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x\[1\] contains 1 NaN"):
        sigma.Laplace(two, [XA, bad], Y)
    with pytest.raises(ValueError, match="different numbers of samples"):
        sigma.Laplace(two, [XA, XB[:20]], Y)
    with pytest.raises(ValueError, match=r"the model has 2 inputs \['a', 'b'\]: pass x as a list"):
        sigma.Laplace(two, np.c_[XA, XB], Y)
    la = sigma.Laplace(two, [XA, XB], Y)
    with pytest.raises(ValueError, match=r"^x is missing the model's input\(s\) \['a'\]"):
        la.predict({"b": XB})


def _dict_outputs():
    keras.utils.set_random_seed(1)
    x = keras.Input((5,), dtype=F)
    h = keras.layers.Dense(4, activation="tanh", dtype=F)(x)
    return keras.Model(
        x,
        {
            "width": keras.layers.Dense(2, dtype=F, name="width")(h),
            "depth": keras.layers.Dense(1, dtype=F, name="depth")(h),
        },
    )


def _stacked(model):
    """The single-output model whose one head holds both heads' weights, in the flattened
    output order (a dict by sorted name: "depth" then "width")."""
    x = keras.Input((5,), dtype=F)
    h = keras.layers.Dense(4, activation="tanh", dtype=F)(x)
    out = keras.layers.Dense(3, dtype=F)(h)
    stacked = keras.Model(x, out)
    trunk_k, trunk_b = (v.numpy() for v in model.get_layer(index=1).trainable_variables)
    d_k, d_b = (v.numpy() for v in model.get_layer("depth").trainable_variables)
    w_k, w_b = (v.numpy() for v in model.get_layer("width").trainable_variables)
    stacked.set_weights([trunk_k, trunk_b, np.c_[d_k, w_k], np.r_[d_b, w_b]])
    return stacked


@pytest.mark.parametrize("structure", ["full", "diag"])
def test_a_dict_output_model_equals_the_single_model_with_stacked_outputs(structure):
    model = _dict_outputs()
    stacked = _stacked(model)
    x = np.c_[XA, XB]
    t = {"width": Y, "depth": Y[:, :1] + Y[:, 1:]}
    la = sigma.Laplace(model, x, t, structure=structure, alpha=0.7, beta=3.0)
    ref = sigma.Laplace(
        stacked, x, np.c_[t["depth"], t["width"]], structure=structure, alpha=0.7, beta=3.0
    )
    assert la.output_layout.names == ("depth", "width") and la.n_outputs == 3
    mean, std = la.predict(x[:5])
    assert set(mean) == set(std) == {"depth", "width"}
    assert mean["width"].shape == std["width"].shape == (5, 2)
    mean_ref, std_ref = ref.predict(x[:5])
    np.testing.assert_allclose(np.c_[mean["depth"], mean["width"]], mean_ref, rtol=1e-12)
    np.testing.assert_allclose(np.c_[std["depth"], std["width"]], std_ref, rtol=1e-10)
    assert la.log_evidence() == pytest.approx(ref.log_evidence(), rel=1e-10)
    with pytest.raises(ValueError, match=r"one entry per model output \['depth', 'width'\]"):
        sigma.Laplace(model, x, {"width": Y})


def test_one_softmax_head_per_output_for_a_classifier():
    """Two heads: the GGN's Λ_n is block-diagonal and the probabilities of each head sum to 1;
    equal to two separate single-head classifiers when the heads share nothing."""
    keras.utils.set_random_seed(2)
    x_in = keras.Input((5,), dtype=F)
    h = keras.layers.Dense(4, activation="tanh", dtype=F)(x_in)
    model = keras.Model(
        x_in, [keras.layers.Dense(3, dtype=F)(h), keras.layers.Dense(2, dtype=F)(h)]
    )
    x = np.c_[XA, XB]
    labels = [RNG.integers(0, 3, 25), RNG.integers(0, 2, 25)]
    la = sigma.Laplace(model, x, labels, likelihood="classification", alpha=0.5)
    assert la.likelihood.heads == ((0, 3), (3, 5))
    probs = la.predict_proba(x[:6])
    assert isinstance(probs, list) and [p.shape for p in probs] == [(6, 3), (6, 2)]
    for p in probs:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    g = sigma.gauss_newton(model, x, likelihood="classification")
    j = sigma.output_jacobian(model, x)
    f = sigma.curvature.outputs(model, x)
    ref = np.zeros_like(g)
    for s, e in la.likelihood.heads:  # Σ_n J_nᵀ Λ_n J_n with Λ_n = diag(p) − p pᵀ per head
        p = sigma.classification.softmax(f[:, s:e])
        lam = np.einsum("nk,kl->nkl", p, np.eye(e - s)) - np.einsum("nk,nl->nkl", p, p)
        ref += np.einsum("nkp,nkl,nlq->pq", j[:, s:e], lam, j[:, s:e])
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)
    ce = sum(
        -np.sum(np.log(sigma.classification.softmax(f[:, s:e])[np.arange(25), lab]))
        for (s, e), lab in zip(la.likelihood.heads, labels, strict=True)
    )
    assert la.data_error == pytest.approx(ce, rel=1e-12)


def test_generic_layers_with_several_inputs_and_outputs():
    """A LayerNormalization (per-sample autodiff path of diag/kfac) between two inputs and two
    named outputs: diag's curvature is the diagonal of the full GGN."""
    keras.utils.set_random_seed(3)
    a, b = keras.Input((2,), name="a", dtype=F), keras.Input((3,), name="b", dtype=F)
    h = keras.layers.Concatenate(dtype=F)([a, b])
    h = keras.layers.LayerNormalization(dtype=F)(keras.layers.Dense(4, dtype=F)(h))
    outputs = {
        "u": keras.layers.Dense(1, dtype=F, name="u")(h),
        "v": keras.layers.Dense(2, dtype=F, name="v")(h),
    }
    model = keras.Model({"a": a, "b": b}, outputs)
    x, t = {"a": XA, "b": XB}, {"u": Y[:, :1], "v": Y}
    full = sigma.Laplace(model, x, t, structure="full")
    diag = sigma.Laplace(model, x, t, structure="diag")
    np.testing.assert_allclose(diag.structure.diagonal, np.diag(full.structure.matrix), rtol=1e-8)
    mean, std = diag.predict(x)
    assert set(std) == {"u", "v"} and std["v"].shape == (25, 2)


class _NoGradient(keras.layers.Layer):
    """Scales its input by a weight, then through an op TensorFlow has no gradient for."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", dtype=F)

    def call(self, x):
        z = tf.numpy_function(lambda a: 2 * a, [x * self.w], x.dtype, stateful=False)
        return tf.reshape(z, tf.shape(x))

    def compute_output_shape(self, shape):
        return shape


@pytest.mark.parametrize("structure", ["full", "diag", "kfac"])
def test_weights_without_a_gradient_are_refused_naming_their_layer(structure):
    """Their curvature would be read as zero (TensorFlow gives no gradient, not a zero one),
    and σ would leave them out silently; the layer is named and weights= is the way out."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), dtype=F)
    h = _NoGradient(name="opaque", dtype=F)(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="head", dtype=F)(h))
    x = RNG.normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"weights of layer\(s\) 'opaque'.*weights=\["):
        sigma.Laplace(model, x, Y[:20], structure=structure)
    head = model.get_layer("head")
    la = sigma.Laplace(model, x, Y[:20], structure=structure, weights=[head.kernel, head.bias])
    assert la.n_params == 8 and np.all(np.isfinite(la.predict(x)[1]))
