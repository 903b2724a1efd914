"""Shipping σ with the model: to_keras() gives the same predictive as Laplace.predict for every
structure; it survives .keras saving, and a SavedModel export serves it in a process that never
imports sigma."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.params import set_flat_weights

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(10)
X, Y = RNG.normal(size=(30, 3)), RNG.normal(size=(30, 2))
LABELS = RNG.integers(0, 2, size=30)
CASES = [
    ("full", None, "layer"),
    ("diag", None, "variable"),
    ("kfac", None, "layer"),
    ("lowrank", {"rank": 6}, "scalar"),
    ("lowrank", {"rank": 6, "diag": False}, "scalar"),
    ("last_layer", None, "scalar"),
]


def _model():
    model = make_mlp()
    set_flat_weights(model, RNG.normal(size=sigma.num_params(model)) * 0.7)
    return model


@pytest.fixture(scope="module")
def mlp():
    """One ``_model()`` for the module: sigma traces a model's Jacobian once (its curvature
    engine), so the tests that share it do not trace it again. Nothing here changes its
    weights (a Laplace and its served model read them)."""
    return _model()


@pytest.mark.parametrize(("structure", "options", "prior"), CASES)
def test_to_keras_equals_predict_and_survives_keras_saving(
    tmp_path, mlp, structure, options, prior
):
    la = sigma.Laplace(
        mlp, X, Y, structure=structure, structure_options=options, prior=prior
    ).optimize_evidence()
    served = la.to_keras()
    mean, std = la.predict(X[:7])
    out = served(X[:7])
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(out["std"], std, rtol=1e-10)
    served.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded(X[:7])["std"], std, rtol=1e-10)


def test_classification_serves_the_probit_probabilities(mlp):
    la = sigma.Laplace(mlp, X, LABELS, likelihood="classification", structure="kfac")
    np.testing.assert_allclose(la.to_keras()(X[:6]), la.predict_proba(X[:6]), rtol=1e-10)


_SERVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    x = np.load(sys.argv[1])
    bad = x[:2].copy()
    bad[1, 0] = np.inf
    for path in sys.argv[2:]:
        served = tf.saved_model.load(path)  # kept: its variables live as long as it does
        out = served.serve(x)
        try:
            served.serve(bad)
            refused = None
        except tf.errors.InvalidArgumentError as exc:
            refused = str(exc)
        print("RESULT" + json.dumps({
            "path": path, "std": np.asarray(out["std"]).tolist(), "refused": refused,
            "sigma_imported": any(m == "sigma" or m.startswith("sigma.") for m in sys.modules),
        }))
    """
)


@pytest.mark.slow
def test_an_exported_savedmodel_serves_sigma_without_sigma(tmp_path, mlp):
    expected = {}
    for structure in ("diag", "kfac", "full"):
        la = sigma.Laplace(mlp, X, Y, structure=structure).optimize_evidence()
        la.to_keras().export(tmp_path / structure, verbose=False)
        expected[str(tmp_path / structure)] = la.predict(X[:9])[1]
    np.save(tmp_path / "x.npy", X[:9])
    # one new process (one cold TensorFlow start) serves every export
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE, str(tmp_path / "x.npy"), *expected],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip  (cwd outside the repository: sigma is not importable by accident)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(ln[6:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert [r["path"] for r in results] == list(expected)
    for out in results:
        assert out["sigma_imported"] is False
        np.testing.assert_allclose(out["std"], expected[out["path"]], rtol=1e-6)
        assert "sigma: x contains NaN or infinite values" in out["refused"]  # as predict refuses


def test_a_two_input_model_is_served_on_both_inputs():
    keras.utils.set_random_seed(0)
    a, b = (
        keras.Input((2,), name="a", dtype="float64"),
        keras.Input((1,), name="b", dtype="float64"),
    )
    h = keras.layers.Dense(4, activation="tanh", dtype="float64")(
        keras.layers.Concatenate(dtype="float64")([a, b])
    )
    model = keras.Model([a, b], keras.layers.Dense(2, dtype="float64")(h))
    la = sigma.Laplace(model, [X[:, :2], X[:, 2:]], Y, structure="diag")
    served = la.to_keras()
    out = served([X[:4, :2], X[:4, 2:]])
    np.testing.assert_allclose(out["std"], la.predict([X[:4, :2], X[:4, 2:]])[1], rtol=1e-10)
    b = X[:4, 2:].copy()
    b[2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="sigma: input 'b' contains NaN"):
        served([X[:4, :2], b])
    served.predict([X[:4, :2], X[:4, 2:]], verbose=0)  # then a wrong width passes Keras
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"sigma: input 'b' must have shape \(None, 1\)"
    ):
        served.predict([X[:4, :2], X[:4, :2]], verbose=0)


def test_a_subclassed_model_without_declared_inputs_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__(dtype="float64")
            self.dense = keras.layers.Dense(2, dtype="float64")

        def call(self, z):
            return self.dense(z)

    model = Sub()
    model(X[:1])
    la = sigma.Laplace(model, X, Y)
    with pytest.raises(ValueError, match="to_keras needs a model with declared inputs"):
        la.to_keras()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_non_finite_input_is_refused_by_the_served_model_as_by_predict(tmp_path, mlp, likelihood):
    """issue 19: Laplace.predict raises a ValueError for NaN or inf in x; the served model (a
    call, model.predict, the reloaded .keras file; the SavedModel: above) raises an
    InvalidArgumentError in its graph instead of serving NaN probabilities or σ."""
    y = Y if likelihood == "regression" else LABELS
    la = sigma.Laplace(mlp, X, y, likelihood=likelihood, structure="diag")
    served = la.to_keras()
    served.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    for bad in (np.nan, np.inf, -np.inf):
        x = X[:3].copy()
        x[1, 2] = bad
        with pytest.raises(ValueError, match=r"^x contains 1 NaN or infinite"):
            la.predict(x)
        for call in (served, reloaded, lambda z: served.predict(z, verbose=0)):
            with pytest.raises(tf.errors.InvalidArgumentError, match="sigma: x contains NaN"):
                call(x)
    big = np.full((1, 3), 1e200)  # finite, but infinite in a float32 model: refused by both
    la32 = sigma.Laplace(make_mlp(dtype="float32", activation="relu"), X, Y, structure="diag")
    served32 = la32.to_keras()
    with pytest.raises(ValueError, match=r"^x "):
        la32.predict(big)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sigma: x contains NaN"):
        served32(big)
    huge = np.full((1, 3), 3e38)  # finite in float32, but the relu network's outputs overflow
    with pytest.raises(ValueError, match=r"outputs are NaN or infinite"):
        la32.predict(huge)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sigma: the model's outputs are"):
        served32(huge)


def test_the_served_model_says_which_input_dimension_is_wrong(tmp_path, mlp):
    """issue 19: a wrong feature count or a missing batch axis is refused naming the expected
    shape (None, 3) and the one given, in memory and after a .keras reload."""
    served = sigma.Laplace(mlp, X, Y, structure="diag").to_keras()
    served.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    for model in (served, reloaded):
        for x, given in ((X[:4, :2], r"\(4, 2\)"), (X[0], r"\(3,\)")):
            with pytest.raises(ValueError, match=rf"(?s)\(None, 3\).*{given}"):
                model.predict(x, verbose=0)
    # after one valid predict Keras relaxes its trace and no longer checks the feature count:
    # the graph's own check refuses it (it gave a TensorFlow error at Tanh)
    for model in (sigma.Laplace(mlp, X, Y, structure=s).to_keras() for s in ("diag", "full")):
        model.predict(X[:4], verbose=0)
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"sigma: x must have shape \(None, 3\)"
        ):
            model.predict(X[:4, :2], verbose=0)
        np.testing.assert_allclose(model.predict(X[:5], verbose=0)["std"], model(X[:5])["std"])
    fresh = keras.saving.load_model(tmp_path / "m.keras")
    fresh.predict(X[:4], verbose=0)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"sigma: x must have shape \(None, 3\)"
    ):
        fresh.predict(X[:4, :2], verbose=0)
    relaxed = tf.function(fresh, input_signature=[tf.TensorSpec((4, None), tf.float64)])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"sigma: x must have shape \(None, 3\)"
    ):
        relaxed(X[:4, :2])
    # a missing batch axis after a valid predict: Keras's own input check fails first (a
    # ValueError about an unknown shape, before the graph runs); still refused
    with pytest.raises(ValueError):
        fresh.predict(X[0], verbose=0)


def test_the_served_model_inside_a_users_vectorized_map(mlp):
    """A fixed batch size (here inside tf.vectorized_map) traces the Jacobian inline: the
    shared trace, for a batch of None, is one TensorFlow cannot vectorise."""
    served = sigma.Laplace(mlp, X, Y, structure="full").to_keras()
    xx = tf.constant(X[:12].reshape(3, 4, 3))
    std = tf.vectorized_map(lambda xb: served(xb)["std"], xx)
    np.testing.assert_allclose(std, np.stack([served(xb)["std"] for xb in xx]), rtol=1e-12)


def test_inputs_of_open_length_and_a_dict_of_inputs_in_any_key_order():
    """Sequences of any length (Input((None,))) and KerasHub-style dict inputs whose keys are
    not in sorted order are served as predict sees them."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(ids))
    model = keras.Model(ids, keras.layers.Dense(3)(h))
    x = np.random.default_rng(0).integers(0, 10, (12, 5)).astype("int32")
    la = sigma.Laplace(model, x, np.arange(12) % 3, likelihood="classification", structure="diag")
    served = la.to_keras()
    np.testing.assert_allclose(served.predict(x[:2], verbose=0), la.predict_proba(x[:2]),
                               rtol=1e-6)  # fmt: skip
    longer = np.random.default_rng(1).integers(0, 10, (2, 7)).astype("int32")
    np.testing.assert_allclose(served.predict(longer, verbose=0), la.predict_proba(longer),
                               rtol=1e-6)  # fmt: skip
    inputs = {
        "token_ids": keras.Input((2,), name="token_ids"),
        "padding_mask": keras.Input((3,), name="padding_mask"),
    }
    both = keras.layers.Concatenate()([inputs["token_ids"], inputs["padding_mask"]])
    model = keras.Model(inputs, keras.layers.Dense(3)(both))
    rng = np.random.default_rng(2)
    xd = {"token_ids": rng.normal(size=(10, 2)), "padding_mask": rng.normal(size=(10, 3))}
    la = sigma.Laplace(model, xd, np.arange(10) % 3, likelihood="classification")
    part = {k: v[:3] for k, v in xd.items()}
    np.testing.assert_allclose(la.to_keras().predict(part, verbose=0), la.predict_proba(part),
                               rtol=1e-6)  # fmt: skip
