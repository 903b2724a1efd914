"""Outputs per position (a value per token, per pixel): targets in the model's own shape, the
likelihood summed over positions, predictions returned in the model's shape."""

import keras
import numpy as np
import pytest
from layer_models import loop_jacobian

import sigma

RNG = np.random.default_rng(0)
F = "float64"


def token_tagger(seed=0, length=5, classes=3, vocab=7):
    """Token classification: an Embedding, a Dense per token, logits (N, T, C)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((length,), dtype=F),
            keras.layers.Embedding(vocab, 4, dtype=F),
            keras.layers.Dense(6, activation="tanh", dtype=F),
            keras.layers.Dense(classes, dtype=F),
        ]
    )


def seq2seq(seed=0, flat=False):
    """Sequence-to-sequence regression (N, T, K) — or the same network with its outputs
    flattened to (N, T·K)."""
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((4, 3), dtype=F),
        keras.layers.Conv1D(5, 2, padding="same", activation="tanh", dtype=F),
        keras.layers.Dense(2, dtype=F),
    ]
    if flat:
        layers.append(keras.layers.Reshape((8,), dtype=F))
    return keras.Sequential(layers)


def segmenter(seed=0, classes=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4, 4, 2), dtype=F),
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh", dtype=F),
            keras.layers.Conv2D(classes, 1, dtype=F),
        ]
    )


def _explicit_ggn(model, x, likelihood):
    j = loop_jacobian(model, x)
    lik = sigma.likelihoods.get(likelihood, sigma.curvature.engine(model).output_layout(x))
    root = lik.hessian_sqrt(np.asarray(model(x)).reshape(len(x), -1)).numpy()
    lj = np.einsum("nkj,nkp->njp", root, j)
    return np.einsum("nkp,nkq->pq", lj, lj)


@pytest.mark.parametrize("structure", ["full", "kfac", "diag"])
def test_token_classification(structure):
    model = token_tagger()
    x = RNG.integers(0, 7, size=(12, 5)).astype(F)
    y = RNG.integers(0, 3, size=(12, 5))
    la = sigma.Laplace(model, x, y, likelihood="classification", structure=structure)
    # the cross-entropy summed over every sample and position
    logits = np.asarray(model(x))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, y[..., None], -1).sum()
    assert la.data_error == pytest.approx(ce, rel=1e-10)
    if structure == "full":  # Σ_n Σ_t J_ntᵀ Λ_nt J_nt: one softmax head per position
        g = _explicit_ggn(model, x, "classification")
        np.testing.assert_allclose(la.structure.matrix, g, rtol=1e-9, atol=1e-12 * g.max())
    la.optimize_evidence()
    p = la.predict_proba(x[:4])
    assert p.shape == (4, 5, 3)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    # one-hot targets in the model's shape give the same posterior
    same = sigma.Laplace(model, x, np.eye(3)[y], likelihood="classification", structure=structure)
    assert same.data_error == pytest.approx(la.data_error, rel=1e-12)


def test_sequence_to_sequence_regression_is_the_flattened_model():
    x = RNG.normal(size=(10, 4, 3))
    y = RNG.normal(size=(10, 4, 2))
    per_position = sigma.Laplace(seq2seq(), x, y).optimize_evidence()
    flat = sigma.Laplace(seq2seq(flat=True), x, y.reshape(10, 8)).optimize_evidence()
    assert per_position.n_outputs == 8  # one β over N·T·K values
    assert per_position.beta == pytest.approx(flat.beta, rel=1e-9)
    assert per_position.log_evidence() == pytest.approx(flat.log_evidence(), rel=1e-10)
    mean, std = per_position.predict(x[:3])
    assert mean.shape == std.shape == (3, 4, 2)
    ref_mean, ref_std = flat.predict(x[:3])
    np.testing.assert_allclose(std.reshape(3, 8), ref_std, rtol=1e-9)
    np.testing.assert_allclose(mean.reshape(3, 8), ref_mean, rtol=1e-12)
    # flattened targets are accepted too; a wrong shape is named
    sigma.Laplace(seq2seq(), x, y.reshape(10, 8))
    with pytest.raises(ValueError, match=r"expected shape \(10, 4, 2\)"):
        sigma.Laplace(seq2seq(), x, y[:, :3])


def test_per_pixel_segmentation_with_labels_per_pixel():
    model = segmenter()
    x = RNG.normal(size=(6, 4, 4, 2))
    y = RNG.integers(0, 3, size=(6, 4, 4))
    la = sigma.Laplace(model, x, y, likelihood="classification", structure="kfac")
    p = la.predict_proba(x[:2])
    assert p.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 3\)"):
        sigma.Laplace(model, x, y + 3, likelihood="classification", structure="kfac")


def test_a_binary_head_per_position():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((5, 2), dtype=F), keras.layers.Dense(1, dtype=F)]
    )  # (N, 5, 1): a logit per position
    x = RNG.normal(size=(9, 5, 2))
    y = RNG.integers(0, 2, size=(9, 5))
    la = sigma.Laplace(model, x, y, likelihood="classification")
    f = np.asarray(model(x))[..., 0]
    ref = np.sum(np.logaddexp(0, f) - y * f)
    assert la.data_error == pytest.approx(ref, rel=1e-10)
    g = _explicit_ggn(model, x, "classification")
    np.testing.assert_allclose(la.structure.matrix, g, rtol=1e-9, atol=1e-14)
    assert la.predict_proba(x[:2]).shape == (2, 5, 1)


def test_a_saved_token_classifier_predicts_in_the_models_shape(tmp_path):
    model = token_tagger()
    x = RNG.integers(0, 7, size=(8, 5)).astype(F)
    la = sigma.Laplace(model, x, RNG.integers(0, 3, size=(8, 5)), likelihood="classification")
    back = sigma.Laplace.load(la.save(tmp_path / "tagger.npz"), model)
    np.testing.assert_array_equal(back.predict_proba(x[:2]), la.predict_proba(x[:2]))
    assert back.predict_proba(x[:2]).shape == (2, 5, 3)
