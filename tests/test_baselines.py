"""The baselines of notebook 05 (sigma.lab.baselines): a deep ensemble's σ is exactly the spread
of its members plus its noise term, MC dropout at rate 0 has no epistemic spread, and a seed
makes either deterministic."""

import keras
import numpy as np
import pytest

from sigma.lab import baselines, models
from sigma.lab.models import train

pytestmark = pytest.mark.slow  # trains ensembles and dropout networks

RNG = np.random.default_rng(3)
X = RNG.normal(size=(60, 3))
Y = np.sin(X[:, :1]) + 0.1 * RNG.normal(size=(60, 1))
LABELS = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)  # 3 classes
FIT = {"epochs": 3, "batch_size": 16, "learning_rate": 1e-2}


@pytest.mark.parametrize("head", ["gaussian", "mse"])
def test_ensemble_std_is_member_spread_plus_noise(head):
    ens = baselines.DeepEnsemble(3, 8, 1, size=3, head=head, seed=1).fit(X, Y, **FIT)
    means, variances = ens.member_predictions(X[:10])
    assert means.shape == variances.shape == (3, 10, 1)
    mean, std = ens.predict(X[:10])
    np.testing.assert_allclose(mean, means.mean(axis=0), rtol=1e-12)
    spread = np.mean((means - means.mean(axis=0)) ** 2, axis=0)
    np.testing.assert_allclose(std**2, spread + variances.mean(axis=0), rtol=1e-10)
    _, epistemic = ens.predict(X[:10], noise=False)
    np.testing.assert_allclose(epistemic**2, spread, rtol=1e-10, atol=1e-300)
    if head == "mse":  # the noise: the members' mean squared training residual, for every input
        residuals = [
            np.mean((Y - m(X.astype("float32")).numpy()) ** 2, axis=0) for m in ens.members
        ]
        np.testing.assert_allclose(ens.noise_variance, np.mean(residuals, axis=0), rtol=1e-5)
        np.testing.assert_allclose(variances, np.broadcast_to(ens.noise_variance, (3, 10, 1)))
    else:  # the Gaussian head's variance is positive and the members differ
        assert np.all(variances > 0) and np.all(spread > 0)


def test_gaussian_head_is_the_cores_mean_logvar_head():
    """The ensemble's Gaussian members are trained on sigma.losses.GaussianNLL and read as
    its [μ | ln σ²] head: σ² = exp of the second half of the outputs."""
    from sigma.losses import GaussianNLL

    ens = baselines.DeepEnsemble(3, 8, 2, size=2, head="gaussian", seed=0)
    assert isinstance(ens.loss, GaussianNLL) and ens.loss.parameterisation == "mean_logvar"
    y2 = np.concatenate([Y, -Y], axis=1)
    ens.fit(X, y2, **FIT)
    means, variances = ens.member_predictions(X[:5])
    out = ens.members[0](X[:5].astype("float32")).numpy().astype(np.float64)
    np.testing.assert_allclose(means[0], out[:, :2])
    np.testing.assert_allclose(variances[0], np.exp(out[:, 2:]), rtol=1e-12)


def test_ensemble_classification_averages_member_softmax():
    ens = baselines.DeepEnsemble(3, 8, 3, size=2, likelihood="classification", seed=0)
    ens.fit(X, LABELS, **FIT)
    probs = ens.predict_proba(X)
    members = ens.member_predictions(X)
    assert probs.shape == (60, 3) and members.shape == (2, 60, 3)
    np.testing.assert_allclose(probs, members.mean(axis=0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="predict_proba for classification"):
        ens.predict(X)


def test_mc_dropout_at_rate_zero_has_no_epistemic_spread():
    mc = baselines.MCDropout(3, (8, 8), 1, rate=0.0, seed=0).fit(X, Y, **FIT, n_samples=5)
    mean, std = mc.predict(X, n_samples=7)
    _, epistemic = mc.predict(X, n_samples=7, noise=False)
    assert np.all(epistemic == 0.0)
    np.testing.assert_allclose(std, np.broadcast_to(np.sqrt(mc.noise_variance), std.shape))
    np.testing.assert_allclose(mean, mc.model(X.astype("float32")).numpy(), rtol=1e-6)
    np.testing.assert_allclose(mc.noise_variance, np.mean((Y - mean) ** 2, axis=0), rtol=1e-10)


def test_mc_dropout_samples_vary_and_are_seeded():
    mc = baselines.MCDropout(3, (16,), 1, rate=0.5, seed=0).fit(X, Y, **FIT)
    a = mc.samples(X[:4], 20, seed=5)
    assert a.shape == (20, 4, 1) and np.all(a.std(axis=0) > 0)  # masks differ between passes
    np.testing.assert_array_equal(a, mc.samples(X[:4], 20, seed=5))
    assert not np.array_equal(a, mc.samples(X[:4], 20, seed=6))
    probs = baselines.MCDropout(3, 8, 3, rate=0.2, likelihood="classification", seed=0)
    probs = probs.fit(X, LABELS, **FIT).predict_proba(X, n_samples=10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", ["ensemble", "dropout"])
def test_a_seed_makes_training_and_prediction_deterministic(kind):
    def run(seed):
        if kind == "ensemble":
            ens = baselines.DeepEnsemble(3, 8, 1, size=2, seed=seed).fit(X, Y, **FIT)
            return ens.predict(X)
        mc = baselines.MCDropout(3, 8, 1, rate=0.3, seed=seed).fit(X, Y, **FIT, n_samples=4)
        return mc.predict(X, n_samples=4, seed=seed)

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_mlp_with_dropout_has_the_weights_of_the_plain_mlp():
    plain = models.mlp(3, (5, 4), 2, activation="tanh", seed=2)
    dropped = models.mlp(3, (5, 4), 2, activation="tanh", dropout=0.2, seed=2)
    assert sum(isinstance(la, keras.layers.Dropout) for la in dropped.layers) == 2
    for a, b in zip(plain.get_weights(), dropped.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be a positive integer"):
        baselines.DeepEnsemble(3, 8, 1, size=0)
    with pytest.raises(ValueError, match="head must be one of"):
        baselines.DeepEnsemble(3, 8, 1, head="student")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        baselines.MCDropout(3, 8, 1, likelihood="poisson")
    with pytest.raises(ValueError, match="dropout must be a rate"):
        models.mlp(3, 8, 1, dropout=1.0)
    with pytest.raises(ValueError, match="fit first"):
        baselines.MCDropout(3, 8, 1).predict(X)
    with pytest.raises(ValueError, match=r"must both be \(N, K\)"):
        baselines.residual_variance(np.zeros(3), np.zeros(3))


def test_metrics_of_the_comparison_by_hand():
    """The scores every method of notebook 05 gets (sigma.metrics), on cases worked by hand."""
    from sigma import metrics

    t = np.array([[0.5], [1.5], [2.5], [-0.1]])
    mean, std = np.zeros_like(t), np.ones_like(t)
    scores = metrics.regression_metrics(mean, std, t)
    assert scores["coverage_68"] == 0.5  # |t| ≤ 0.994: 0.5 and −0.1
    assert scores["coverage_95"] == 0.75  # |t| ≤ 1.960: also 1.5
    np.testing.assert_allclose(scores["nll"], np.mean(0.5 * np.log(2 * np.pi) + t**2 / 2))
    np.testing.assert_allclose(scores["rmse"], np.sqrt(np.mean(t**2)))
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1])
    scores = metrics.classification_metrics(probs, labels)
    np.testing.assert_allclose(scores["accuracy"], 2 / 3)
    np.testing.assert_allclose(scores["nll"], -np.mean(np.log([0.9, 0.4, 0.7])))
    # one sample per bin: |1 − 0.9| + |0 − 0.6| + |1 − 0.7| over 3
    np.testing.assert_allclose(scores["ece"], (0.1 + 0.6 + 0.3) / 3)


def test_aggregate_and_wins_over_splits():
    from sigma.lab import training_comparison as comparison

    def result(trained, ensemble):
        r = comparison.Result()
        r.rows = {comparison.TRAINED: {"nll": trained}, comparison.ENSEMBLE: {"nll": ensemble}}
        return r

    runs = [result(1.0, 2.0), result(3.0, 2.0), result(0.5, 0.5)]
    rows = {row["method"]: row for row in comparison.aggregate(runs, ["nll"])}
    assert rows[comparison.TRAINED]["n"] == 3
    np.testing.assert_allclose(rows[comparison.TRAINED]["nll"], 1.5)
    np.testing.assert_allclose(rows[comparison.TRAINED]["nll_sd"], np.std([1.0, 3.0, 0.5], ddof=1))
    assert comparison.wins(runs, comparison.TRAINED, [comparison.ENSEMBLE]) == {
        comparison.ENSEMBLE: (2, 3)  # at or below: 1 ≤ 2 and 0.5 ≤ 0.5
    }


def test_sigma_errors_line_of_a_comparison():
    from sigma.lab import compare

    full = np.array([[1.0], [2.0], [4.0]])
    rows = [
        {"structure": "full", "sigma_rel_err_median": 0.0, "sigma_rel_err_max": 0.0},
        {"structure": "diag", "sigma_rel_err_median": 0.5, "sigma_rel_err_max": 0.5},
        {"structure": "kfac", "sigma_rel_err_median": 0.0025, "sigma_rel_err_max": 0.004},
        {"structure": "lowrank", "status": "refused"},
    ]
    sigmas = {"full": full, "diag": 1.5 * full, "kfac": 0.9975 * full}
    c = compare.Comparison(rows, sigmas, alpha=1.0, beta=1.0, notes={})
    assert (
        compare.sigma_errors(c)
        == "diag 50% (at most 50%, above), kfac 0.25% (at most 0.40%, below)"
    )
    assert compare.percent(0.123) == "12%" and compare.percent(0.001234) == "0.12%"


def test_temperature_scaling_recovers_the_temperature_of_the_data():
    """Labels drawn from softmax(z / T0): the fitted T is T0 (to the sampling error of 20,000
    labels), and it is the minimum of the NLL (a scan around it)."""
    rng = np.random.default_rng(0)
    z = 3.0 * rng.normal(size=(20_000, 4))
    probs = baselines.softmax(z / 2.5)
    labels = (rng.uniform(size=(len(z), 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    t = baselines.fit_temperature(z, labels)
    assert abs(t - 2.5) < 0.1, t

    def nll(tt):
        return -np.mean(np.log(baselines.softmax(z / tt)[np.arange(len(z)), labels]))

    assert all(nll(t) <= nll(t * f) for f in (0.97, 1.03))
    with pytest.raises(ValueError, match="logits must be"):
        baselines.fit_temperature(z, labels[:-1])


def test_temperature_scaling_of_a_network_keeps_its_argmax():
    model = models.mlp(3, 8, 3, activation="tanh", seed=0)
    train(model, X, LABELS, loss=baselines.classification_loss(), optimizer="adam", fast=True,
          **FIT)  # fmt: skip
    ts = baselines.TemperatureScaling(model).fit(X[:30], LABELS[:30])
    logits = model(X.astype("float32")).numpy().astype(np.float64)
    assert ts.temperature == pytest.approx(baselines.fit_temperature(logits[:30], LABELS[:30]))
    p = ts.predict_proba(X)
    np.testing.assert_allclose(p, baselines.softmax(logits / ts.temperature), rtol=1e-10)
    np.testing.assert_array_equal(p.argmax(axis=1), logits.argmax(axis=1))


def test_temperature_scaling_of_one_logit_is_a_sigmoid():
    """A binary classifier with one logit (it raised IndexError): labels drawn from
    sigmoid(z / T0), the fitted T is T0 and equals the fit on the two logits (0, z)."""
    rng = np.random.default_rng(1)
    z = 3.0 * rng.normal(size=(20_000, 1))
    labels = (rng.uniform(size=len(z)) < 1.0 / (1.0 + np.exp(-z[:, 0] / 2.5))).astype(int)
    t = baselines.fit_temperature(z, labels)
    assert abs(t - 2.5) < 0.15, t
    pair = np.concatenate([np.zeros_like(z), z], axis=1)
    assert t == pytest.approx(baselines.fit_temperature(pair, labels), rel=1e-5)
    with pytest.raises(ValueError, match="labels must be 0 or 1 for one logit"):
        baselines.fit_temperature(z, labels + 1)
    model = models.mlp(3, 8, 1, activation="tanh", seed=0)
    ts = baselines.TemperatureScaling(model).fit(X[:30], (LABELS[:30] > 0).astype(int))
    f = model(X.astype("float32")).numpy().astype(np.float64)
    np.testing.assert_allclose(ts.predict_proba(X), 1.0 / (1.0 + np.exp(-f / ts.temperature)))
