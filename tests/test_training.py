"""Training for the posterior: EvidenceCallback's objective is the log posterior (its gradient
checked against β E_D + Σ α_g E_Wg), the loop re-estimates α_g, β during fit for every
structure and both likelihoods, is deterministic for a seed, and refuses bad input clearly."""

import json
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp, terminal_sigint

import sigma
from sigma import evidence
from sigma.callbacks import EvidenceCallback
from sigma.params import flat_weights, set_flat_weights

pytestmark = pytest.mark.slow  # trains networks with the callback

RNG = np.random.default_rng(5)
X = RNG.normal(size=(40, 3))
Y = np.tanh(X @ RNG.normal(size=(3, 2))) + 0.1 * RNG.normal(size=(40, 2))
LABELS = (X[:, 0] + X[:, 1] > 0).astype(int)


def _compiled(loss, n_out=2, seed=0):
    model = make_mlp(n_out=n_out, seed=seed)
    set_flat_weights(model, np.random.default_rng(seed).normal(size=sigma.num_params(model)))
    model.compile(keras.optimizers.SGD(1e-3), loss)
    return model


def _loss_gradient(model, x, y):
    x, y = tf.constant(x), tf.constant(y)  # float64 / int64, not converted to floatx
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=False))
    return np.concatenate(
        [g.numpy().ravel() for g in tape.gradient(loss, model.trainable_variables)]
    )


@pytest.mark.parametrize("likelihood", ["regression", "classification", "binary"])
def test_the_training_objective_is_the_log_posterior(likelihood):
    """The train step's gradient (one SGD step on the full batch) is ∇(β E_D + Σ α_g E_Wg) ·
    2/(β N K) (mean squared error), or ∇(E + Σ α_g E_Wg) / N (mean cross-entropy on logits).
    (Keras computes its compiled loss in floatx, float32, whatever the model's dtype: hence
    rtol 1e-4 on the step.) A binary classifier (one logit, the mean binary cross-entropy) has
    the same scale 1/N. After fit the compiled loss is the plain one."""
    k = 1 if likelihood == "binary" else 2
    if likelihood == "regression":
        model, y, beta = _compiled("mse"), Y, 3.0
    elif likelihood == "binary":
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        model, y, beta = _compiled(loss, n_out=1), LABELS[:, None].astype(float), None
        likelihood = "classification"
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model, y, beta = _compiled(loss), LABELS, None
    alphas = np.array([0.5, 2.0, 7.0])
    cb = EvidenceCallback(X, y, structure="full", prior="layer", alpha=alphas, beta=beta)
    lik = sigma.likelihoods.get(likelihood)
    targets = lik.targets(y, 40, k)
    w = tf.Variable(flat_weights(model))
    eng = sigma.curvature.engine(model)
    with tf.GradientTape() as tape:
        e_d = lik.data_error(eng.forward(w, X), targets)
        posterior = (beta if beta else 1.0) * e_d
    scale = 2.0 / (beta * 40 * k) if beta else 1.0 / 40
    plain_before = tape.gradient(posterior, w).numpy() * scale
    # one plain SGD step on the full batch: w ← w − lr ∇(compiled loss + penalty)
    model.fit(X, y, epochs=1, batch_size=40, shuffle=False, verbose=0, callbacks=[cb])
    step = (w.numpy() - flat_weights(model)) / model.optimizer.learning_rate.numpy()
    groups = tf.constant(cb.prior.groups)
    with tf.GradientTape() as tape:
        e_w = 0.5 * tf.math.unsorted_segment_sum(tf.square(w), groups, 3)
        penalty = tf.reduce_sum(alphas * e_w)
    expected = plain_before + tape.gradient(penalty, w).numpy() * scale
    np.testing.assert_allclose(step, expected, rtol=1e-4, atol=1e-8)
    # after fit (re-estimated at the final weights) the compiled loss is the plain one again
    w.assign(flat_weights(model))
    plain = _loss_gradient(model, X, y)
    with tf.GradientTape() as tape:
        e_d = lik.data_error(eng.forward(w, X), targets)
    np.testing.assert_allclose(
        plain, tape.gradient(e_d, w).numpy() * scale * (beta or 1.0), rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize(
    ("structure", "likelihood"),
    [("full", "regression"), ("diag", "regression"), ("kfac", "classification"),
     ("lowrank", "regression"), ("last_layer", "classification")],
)  # fmt: skip
def test_fit_re_estimates_during_training_for_every_structure(structure, likelihood):
    if likelihood == "regression":
        model, y = _compiled("mse", seed=1), Y
    else:
        model, y = _compiled(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), LABELS
    options = {"rank": 6} if structure == "lowrank" else None
    prior = "variable" if structure == "last_layer" else "layer"
    cb = EvidenceCallback(
        X, y, structure=structure, structure_options=options, prior=prior, every=2, warmup=1,
        verbose=0,
    )  # fmt: skip
    model.fit(X, y, epochs=5, batch_size=10, verbose=0, callbacks=[cb])
    assert [h["epoch"] for h in cb.history] == [3, 5]  # after the warm-up, every 2 epochs
    assert cb.laplace is not None and np.array_equal(cb.laplace.w_map, flat_weights(model))
    # structure="last_layer" is weights="last_layer" with the full structure
    assert cb.laplace.structure.name == {"last_layer": "full"}.get(structure, structure)
    assert cb.laplace.selection.kind == ("last_layer" if structure == "last_layer" else "all")
    for h in cb.history:
        assert np.all(np.asarray(h["alpha"]) > 0) and np.isfinite(h["log_evidence"])
        assert len(h["gammas"]) == len(cb.prior_groups)
    assert all(v.regularizer is None for v in model.trainable_variables)  # taken away again


def test_a_selection_of_weights_is_the_only_one_penalised(rng):
    """weights=: the prior's penalty acts on the selected weights alone (here the first
    layer's kernel), the others train without it."""
    model = _compiled("mse", seed=2)
    kernel = model.layers[0].kernel
    cb = EvidenceCallback(X, Y, structure="diag", weights=[kernel], every=1, verbose=0)
    model.fit(X, Y, epochs=2, batch_size=10, verbose=0, callbacks=[cb])
    assert cb.laplace.n_params == int(np.prod(kernel.shape))
    assert cb.prior_groups == (model.layers[0].name,)
    assert all(v.regularizer is None for v in model.trainable_variables)


def test_a_dataset_and_sigma_train(rng):
    model = make_mlp(hidden=(6,))
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    cb = EvidenceCallback(ds, structure="full", prior="scalar", every=3, verbose=0)
    model.fit(ds, epochs=3, verbose=0, callbacks=[cb])
    assert cb.laplace.n_data == 40 and len(cb.history) == 1
    history = sigma.lab.train(
        make_mlp(hidden=(6,)), X, Y, epochs=2, batch_size=8,
        evidence={"structure": "diag", "every": 1, "verbose": 0},
    )  # fmt: skip
    assert [h["epoch"] for h in history.evidence.history] == [1, 2]


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(6, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


@pytest.mark.parametrize("kind", ["subclassed", "sequential without Input"])
def test_an_unbuilt_model_trains_as_the_same_model_built_first(kind):
    """Keras builds an unbuilt model in its first train step; the callback needs its weights
    before (the prior, the optimizer's variables), and builds it on the first sample."""
    x, y = X.astype("float32"), Y.astype("float32")

    def run(built: bool):
        keras.utils.set_random_seed(3)
        if kind == "subclassed":
            model = SubclassedNet()
        else:
            model = keras.Sequential(
                [keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)]
            )
        if built:
            model(x[:1])
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        cb = EvidenceCallback(x, y, structure="kfac", prior="layer", every=2, verbose=0)
        keras.utils.set_random_seed(3)
        model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[cb])
        return flat_weights(model), cb

    (w_unbuilt, cb), (w_built, cb_built) = run(False), run(True)
    assert cb.laplace.n_params == w_unbuilt.size == 3 * 6 + 6 + 6 * 2 + 2
    assert len(cb.history) == 2 and len(cb.prior_groups) == 2
    np.testing.assert_allclose(w_unbuilt, w_built, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cb.laplace.alpha, cb_built.laplace.alpha, rtol=1e-4)


def test_evidence_training_is_deterministic_for_a_seed():
    def run():
        keras.utils.set_random_seed(7)
        model = make_mlp(seed=7)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        cb = EvidenceCallback(X, Y, structure="kfac", every=2, verbose=0)
        model.fit(X, Y, epochs=4, batch_size=8, verbose=0, callbacks=[cb])
        return flat_weights(model), [(h["alpha"], h["beta"]) for h in cb.history]

    (w1, h1), (w2, h2) = run(), run()
    np.testing.assert_array_equal(w1, w2)
    for (a1, b1), (a2, b2) in zip(h1, h2, strict=True):
        np.testing.assert_array_equal(a1, a2)
        assert b1 == b2


@pytest.mark.slow
def test_an_iris_network_trained_to_near_zero_error_converges_or_says_why():
    """The 4-16-16-3 tanh network on Iris with P = 403 > NK = 300, trained towards zero
    error: the evidence either finds its maximum or raises the boundary error — never a
    'diverged' β < 0."""
    x, _, y, _ = sigma.lab.iris_split(test_size=1 / 3, seed=0)
    model = sigma.lab.mlp(4, (16, 16), 3, activation="tanh", dtype="float32", seed=0)
    # 400 full-batch Adam steps on the mean squared error (what fit(epochs=400, batch_size=100)
    # does on these 100 samples), in one traced loop instead of 400 Keras epochs
    xs, ys = tf.constant(x, tf.float32), tf.constant(y, tf.float32)
    opt = keras.optimizers.Adam(1e-2)
    opt.build(model.trainable_variables)

    @tf.function
    def train(steps):
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xs, training=True) - ys))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    assert float(train(tf.constant(400))) < 0.05
    la = sigma.Laplace(model, x, y)
    try:
        la.optimize_evidence()
    except evidence.EvidenceBoundaryError as err:
        assert "fix_beta=True" in str(err) and err.which
    else:
        assert la.alpha > 0 and la.beta > 0 and 0 < la.gamma < 300
        h = 1e-5
        d = la.log_evidence(beta=la.beta * np.exp(h)) - la.log_evidence(beta=la.beta * np.exp(-h))
        assert abs(d / (2 * h)) < 1e-3 * 300


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, r"^every must be a positive integer, got 0"),
        ({"every": 1.5}, r"^every must be a positive integer, got 1.5"),
        ({"warmup": -1}, r"^warmup must be a whole number of epochs >= 0"),
        ({"structure": "banded"}, r"^structure must be one of"),
        ({"structure_options": {"rnak": 5}, "structure": "lowrank"}, r"\['rnak'\] are not options"),
        ({"fix_beta": "yes"}, r"^fix_beta must be True or False"),
    ],
)
def test_bad_callback_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvidenceCallback(X, Y, **kwargs)


def test_losses_whose_scale_is_unknown_are_refused():
    cases = [
        ("mae", "is not one the evidence knows the scale of"),
        ("categorical_crossentropy", "takes probabilities"),
        (keras.losses.MeanSquaredError(reduction="sum"), "reduction='sum'"),
    ]
    for loss, match in cases:
        model = make_mlp()
        model.compile("sgd", loss)
        with pytest.raises(ValueError, match=match):
            model.fit(X, Y, epochs=1, verbose=0, callbacks=[EvidenceCallback(X, Y, verbose=0)])
    with pytest.raises(ValueError, match="y is required when x is an array"):
        EvidenceCallback(X)
    model = make_mlp()
    model.compile("sgd", "mse")
    bad = EvidenceCallback(X, Y, prior=np.zeros(7, int), verbose=0)
    with pytest.raises(
        ValueError, match=r"one group id per weight of the posterior, shape \(54,\)"
    ):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[bad])


def test_training_that_is_not_for_the_evidences_likelihood_is_refused_before_it_starts():
    onehot = np.eye(2)[LABELS]
    cases = [  # (loss, compile options, targets, n_out, the message)
        ("mse", {"loss_weights": 5.0}, Y, 2, r"loss_weights=5\.0: they scale the data term"),
        (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2), {},
         onehot, 2, r"label_smoothing=0\.2"),
        (keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1), {},
         LABELS, 2, r"ignore_class=-1"),
        ("binary_crossentropy", {}, LABELS[:, None].astype(float), 1,
         r"compile with keras\.losses\.BinaryCrossentropy\(from_logits=True\)"),
    ]  # fmt: skip
    for loss, options, targets, n_out, match in cases:
        model = make_mlp(n_out=n_out)
        model.compile("sgd", loss, **options)
        before = flat_weights(model)
        with pytest.raises(ValueError, match=match):
            model.fit(X, targets, epochs=1, verbose=0,
                      callbacks=[EvidenceCallback(X, targets, verbose=0)])  # fmt: skip
        np.testing.assert_array_equal(flat_weights(model), before)  # refused before training


def test_bad_data_is_refused_before_the_first_epoch_not_at_the_first_estimate():
    bad_x = X.copy()
    bad_x[2, 1] = np.inf
    cases = [
        (X, np.hstack([Y, Y[:, :1]]), r"y has 3 columns but the model has 2 outputs"),
        (bad_x, Y, r"x contains 1 NaN or infinite value"),
    ]
    for x, y, match in cases:
        model = make_mlp()
        model.compile("sgd", "mse")
        before = flat_weights(model)
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, epochs=4, verbose=0,
                      callbacks=[EvidenceCallback(x, y, warmup=2, every=2, verbose=0)])  # fmt: skip
        np.testing.assert_array_equal(flat_weights(model), before)


def test_one_loss_name_per_output_is_one_loss_and_different_ones_are_refused():
    def two_heads():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,), dtype="float64")
        h = keras.layers.Dense(5, activation="tanh", dtype="float64")(inputs)
        heads = {n: keras.layers.Dense(1, name=n, dtype="float64")(h) for n in ("a", "b")}
        return keras.Model(inputs, heads)

    targets = {"a": Y[:, :1], "b": Y[:, 1:]}
    model = two_heads()
    model.compile("sgd", {"a": "mse", "b": "mae"})
    with pytest.raises(ValueError, match=r"compiled with one loss per output \(2\)"):
        model.fit(X, targets, epochs=1, verbose=0,
                  callbacks=[EvidenceCallback(X, targets, verbose=0)])  # fmt: skip
    fitted = []
    for loss in ({"a": "mse", "b": "mse"}, ["mse", "mse"], "mse"):
        model = two_heads()
        model.compile(keras.optimizers.SGD(1e-2), loss)
        cb = EvidenceCallback(X, targets, every=2, verbose=0)
        model.fit(X, targets, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
        fitted.append((flat_weights(model), cb.laplace.log_evidence()))
    for weights, log_evidence in fitted[:2]:  # Keras applies one loss to every output alike
        np.testing.assert_allclose(weights, fitted[2][0], rtol=1e-12)
        assert log_evidence == pytest.approx(fitted[2][1], rel=1e-10)


def test_the_estimates_go_into_keras_logs_history_and_csv(tmp_path, capsys):
    """Every epoch's logs carry the latest α_g, β, γ and log evidence (NaN before the first
    re-estimation), so History and CSVLogger record them; the report line follows fit's
    verbosity."""
    model = _compiled("mse", seed=3)
    cb = EvidenceCallback(X, Y, structure="diag", prior="layer", every=2, verbose=1)
    csv = tmp_path / "log.csv"
    hist = model.fit(
        X, Y, epochs=4, batch_size=10, verbose=0,
        callbacks=[cb, keras.callbacks.CSVLogger(str(csv))],
    )  # fmt: skip
    assert "evidence @ epoch" not in capsys.readouterr().out  # fit is silent: so is the callback
    keys = [f"evidence_alpha_{g}" for g in cb.prior_groups]
    keys += ["evidence_beta", "evidence_gamma", "evidence_log_evidence"]
    for key in keys:
        assert key in hist.history, key
    assert np.isnan(hist.history["evidence_gamma"][0])  # epoch 1: not yet estimated
    for i, epoch in enumerate((2, 4)):
        record = cb.history[i]
        assert record["epoch"] == epoch
        row = epoch - 1
        assert hist.history["evidence_beta"][row] == pytest.approx(record["beta"])
        assert hist.history["evidence_gamma"][row] == pytest.approx(record["gamma"])
        assert hist.history["evidence_log_evidence"][row] == pytest.approx(record["log_evidence"])
        for g, alpha in zip(cb.prior_groups, record["alpha"], strict=True):
            assert hist.history[f"evidence_alpha_{g}"][row] == pytest.approx(alpha)
    header = csv.read_text().splitlines()[0].split(",")
    assert set(keys) <= set(header)
    model.fit(X, Y, epochs=2, batch_size=10, verbose=2, callbacks=[cb])
    assert "evidence @ epoch 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"verbose must be 0 or 1"):
        EvidenceCallback(X, Y, verbose="loud")


def test_sample_weights_and_class_weights_are_refused_naming_them():
    """issue 19: the evidence is that of the unweighted likelihood; weighted training would
    give α, β of another objective. Nothing of the model is changed by the refusal."""
    model = _compiled("mse")
    w = np.linspace(0.5, 2.0, 40)
    weighted = tf.data.Dataset.from_tensor_slices((X, Y, w)).batch(20)
    for kwargs, name in (
        ({"x": X, "y": Y, "sample_weight": w}, "sample_weight"),
        ({"x": weighted}, r"a dataset of \(x, y, sample_weight\)"),
    ):
        cb = EvidenceCallback(X, Y, verbose=0)
        with pytest.raises(ValueError, match=rf"model.fit was given {name}.*np.repeat"):
            model.fit(**kwargs, epochs=1, verbose=0, callbacks=[cb])
        assert cb.history == [] and all(v.regularizer is None for v in model.trainable_variables)
    classifier = _compiled(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"model.fit was given class_weight"):
        classifier.fit(
            X, LABELS, class_weight={0: 1.0, 1: 3.0}, epochs=1, verbose=0,
            callbacks=[EvidenceCallback(X, LABELS, verbose=0)],
        )  # fmt: skip


def test_the_held_out_part_of_a_validation_split_is_left_out():
    """issue 19: Keras trains on the first ⌊40 · 0.7⌋ = 28 samples; the curvature, E_D and N
    are those of these 28, exactly as a Laplace fitted on them alone."""
    model = _compiled("mse")
    cb = EvidenceCallback(X, Y, structure="full", prior="scalar", every=1, verbose=0)
    model.fit(X, Y, validation_split=0.3, epochs=2, batch_size=10, verbose=0, callbacks=[cb])
    assert [h["n_data"] for h in cb.history] == [28, 28] and cb.laplace.n_data == 28
    alone = sigma.Laplace(model, X[:28], Y[:28], alpha=cb.laplace.alpha, beta=cb.laplace.beta)
    assert cb.laplace.data_error == pytest.approx(alone.data_error, rel=1e-12)
    assert cb.laplace.log_evidence() == pytest.approx(alone.log_evidence(), rel=1e-10)
    other = EvidenceCallback(X[5:], Y[5:], structure="diag", every=2, verbose=0)  # not fit's data
    model.fit(X, Y, validation_split=0.3, epochs=2, verbose=0, callbacks=[other])
    assert other.laplace.n_data == 35


def test_a_callback_serves_one_model_and_numbers_its_fits():
    """issue 19: two fit calls continue from the α, β reached (the penalty acts from the first
    step of the second fit) and each history row says which fit it comes from; a second
    model is refused."""
    model = _compiled("mse")
    cb = EvidenceCallback(X, Y, structure="diag", prior="scalar", every=1, verbose=0)
    model.fit(X, Y, epochs=2, batch_size=20, verbose=0, callbacks=[cb])
    alpha, beta = cb.laplace.alpha, cb.laplace.beta
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["w0"] = flat_weights(self.model)

        def on_train_batch_end(self, batch, logs=None):
            seen.setdefault("w1", flat_weights(self.model))  # after the first step

    plain = _loss_gradient(model, X[:20], Y[:20])  # no penalty on the model between fits
    model.fit(X, Y, epochs=2, batch_size=20, shuffle=False, verbose=0, callbacks=[cb, Spy()])
    # the first SGD step of the second fit: w ← w − lr (∇ mean loss + 2 c w), c = α/(β N K)
    penalty = (seen["w0"] - seen["w1"]) / model.optimizer.learning_rate.numpy() - plain
    np.testing.assert_allclose(
        penalty, 2 * alpha / (beta * 40 * 2) * seen["w0"], rtol=1e-3, atol=1e-7
    )
    assert [(h["fit"], h["epoch"]) for h in cb.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    other = _compiled("mse", seed=1)
    with pytest.raises(ValueError, match=r"already used to train another model .*of its own"):
        other.fit(X, Y, epochs=1, verbose=0, callbacks=[cb])
    assert all(v.regularizer is None for v in other.trainable_variables)
    assert len(cb.history) == 4


class _Raise(keras.callbacks.Callback):
    """Raises RuntimeError in fit's second epoch, at the hook named ``where``."""

    def __init__(self, where):
        super().__init__()
        self.where, self.epoch = where, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.where == "batch begin" and self.epoch == 1 and batch == 1:
            raise RuntimeError("raised by another callback")

    def on_train_batch_end(self, batch, logs=None):
        if self.where == "batch end" and self.epoch == 1 and batch == 1:
            raise RuntimeError("raised by another callback")

    def on_epoch_end(self, epoch, logs=None):
        if self.where == "epoch end" and epoch == 1:
            raise RuntimeError("raised by another callback")


def _first_step(model, x, y) -> np.ndarray:
    """The direction of the first SGD step of a plain one-batch fit: (w_before − w_after)/lr."""
    before = flat_weights(model)
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    return (before - flat_weights(model)) / model.optimizer.learning_rate.numpy()


@pytest.mark.parametrize("where", ["epoch end", "batch begin", "batch end"])
def test_a_fit_ended_by_an_exception_leaves_the_model_as_it_was_given(where):
    """issue 28: an exception in another callback ends fit before on_train_end. The prior's
    penalty must not stay behind: no extra term in model.losses, evaluate reports the plain
    mean squared error, the next plain fit steps along the plain gradient, and the next
    EvidenceCallback finds no regularizer to replace (no warning)."""
    model = _compiled("mse", seed=4)
    model.optimizer.learning_rate.assign(1e-4)
    cb = EvidenceCallback(X, Y, structure="diag", prior="layer", every=1, verbose=0)
    with pytest.raises(RuntimeError, match="raised by another callback"):
        model.fit(X, Y, epochs=5, batch_size=10, verbose=0, callbacks=[cb, _Raise(where)])
    assert cb.history and np.all(np.asarray(cb.history[-1]["alpha"]) > 0)  # the penalty acted
    assert model.losses == [] and all(v.regularizer is None for v in model.trainable_variables)
    mse = np.mean((model.predict(X, verbose=0) - Y) ** 2)
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(mse, rel=1e-5)
    plain = _loss_gradient(model, X, Y)
    np.testing.assert_allclose(_first_step(model, X, Y), plain, rtol=1e-4, atol=1e-7)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="EvidenceCallback replaces the weight")
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[EvidenceCallback(X, Y, verbose=0)])


def test_validation_during_fit_leaves_no_penalty_in_evaluate():
    """Found with issue 28: Keras traces its test step during fit for validation_data, while
    the penalty was on the variables, and kept that graph: after a fit that ended normally,
    evaluate still added the prior's penalty. val_loss is the plain held-out loss."""
    model = _compiled("mse", seed=6)
    cb = EvidenceCallback(X, Y, structure="diag", every=1, verbose=0)
    hist = model.fit(
        X[:30], Y[:30], validation_data=(X[30:], Y[30:]), epochs=2, batch_size=10, verbose=0,
        callbacks=[cb],
    )  # fmt: skip
    mse = np.mean((model.predict(X, verbose=0) - Y) ** 2)
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(mse, rel=1e-5)
    held_out = np.mean((model.predict(X[30:], verbose=0) - Y[30:]) ** 2)
    assert hist.history["val_loss"][-1] == pytest.approx(held_out, rel=1e-5)


def test_a_fit_ended_by_an_exception_gives_back_the_users_regularizers():
    """The model's own L2 regularizer (replaced by the prior's penalty during fit) is back
    after a fit an exception ended: evaluate = mean squared error + its penalty, by hand."""
    keras.utils.set_random_seed(0)
    l2 = keras.regularizers.L2(0.01)
    model = keras.Sequential(  # float32: Keras adds a float64 layer's L2 to its float32 loss
        [
            keras.Input((3,)),
            keras.layers.Dense(5, "tanh", kernel_regularizer=l2),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    cb = EvidenceCallback(X, Y, structure="diag", every=1, verbose=0)
    with pytest.warns(RuntimeWarning, match="replaces the weight regularizers") as caught:
        with pytest.raises(RuntimeError, match="raised by another callback"):
            model.fit(X, Y, epochs=3, batch_size=10, verbose=0, callbacks=[cb, _Raise("epoch end")])
    assert caught[0].filename == __file__  # the warning names the user's model.fit
    kernel = model.layers[0].kernel
    assert kernel.regularizer is l2 and len(model.losses) == 1
    expected = np.mean((model.predict(X, verbose=0) - Y) ** 2) + 0.01 * np.sum(kernel.numpy() ** 2)
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(expected, rel=1e-5)


_INTERRUPTED = textwrap.dedent(
    """
    import json, signal, sys, warnings
    import keras, numpy as np
    import sigma

    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3))
    y = np.tanh(x @ rng.normal(size=(3, 2)))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.SGD(1e-3), "mse")


    class Announce(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                print("TRAINING", flush=True)


    cb = sigma.EvidenceCallback(x, y, structure="diag", every=1, verbose=0)
    try:
        model.fit(x, y, epochs=10**6, batch_size=8, verbose=0, callbacks=[cb, Announce()])
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one was enough: ignore any further
        print("INTERRUPTED", flush=True)
    else:
        sys.exit("fit ended without an interrupt")
    mse = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    result = {
        "estimates": len(cb.history),
        "losses": len(model.losses),
        "regularizers": [repr(v.regularizer) for v in model.trainable_variables],
        "evaluate": float(model.evaluate(x, y, verbose=0)),
        "mse": mse,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = sigma.EvidenceCallback(x, y, structure="diag", verbose=0)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[again])
    result["warnings"] = [str(w.message) for w in caught]
    print("RESULT" + json.dumps(result), flush=True)
    """
)


def test_ctrl_c_during_fit_leaves_the_model_as_it_was_given(tmp_path):
    """issue 28: Ctrl-C (SIGINT) wherever it lands in fit — a train step, a re-estimation,
    Keras' loop — leaves no penalty on the model (a real signal, in a process of its own)."""
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _INTERRUPTED],
            cwd=tmp_path,
            preexec_fn=terminal_sigint,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )

    def stderr():
        return (tmp_path / "stderr.txt").read_text()[-3000:]

    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)

            def next_line(seconds):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and proc.poll() is None:
                    if sel.select(timeout=0.5):
                        return proc.stdout.readline().strip()
                return ""

            assert next_line(300) == "TRAINING", stderr()
            for _ in range(10):
                proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal delivers
                # (Python drops a KeyboardInterrupt raised inside a __del__, e.g. of a
                # tf.data iterator, as "Exception ignored in": as a user would, press again)
                line = next_line(10)
                if line:
                    break
            assert line == "INTERRUPTED", stderr()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr()
    result = json.loads(next(ln[6:] for ln in out.splitlines() if ln.startswith("RESULT")))
    assert result["estimates"] >= 1  # the penalty was on
    assert result["losses"] == 0 and set(result["regularizers"]) == {"None"}
    assert result["evaluate"] == pytest.approx(result["mse"], rel=1e-5)
    assert not [w for w in result["warnings"] if "regularizer" in w], result["warnings"]
