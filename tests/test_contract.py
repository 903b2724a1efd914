"""One contract for every registered structure: a structure is tested by being registered.

For each structure of ``Structure.registry`` (its default options), on a regression and on a
classification network, over all weights and over the last layer's: the fit, the evidence and
its optimum, the predictive (shapes, finiteness, the noise floor, probabilities that sum to 1,
σ falling as α grows), save/load to the same predictions, and the served Keras model giving
what ``predict`` gives. What each structure computes is tested against exact references in its
own module (test_diag, test_kfac, test_lowrank, test_ekfac, test_weights); this is what every
structure owes the rest of the package.
"""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import structures

RNG = np.random.default_rng(11)
X = RNG.normal(size=(40, 3))
Y = np.tanh(X @ RNG.normal(size=(3, 2))) + 0.1 * RNG.normal(size=(40, 2))
LABELS = np.argmax(X @ RNG.normal(size=(3, 3)), axis=1)
X_TEST = RNG.normal(size=(7, 3))
REGISTERED = sorted(structures.Structure.registry)


@pytest.fixture(scope="module")
def models():
    """One network per likelihood for the whole module: each structure's graphs trace once."""
    return {"regression": make_mlp(n_out=2, seed=3), "classification": make_mlp(n_out=3, seed=4)}


def _last_layer(model):
    head = model.layers[-1]
    return [head.kernel, head.bias]


def _targets(likelihood):
    return Y if likelihood == "regression" else LABELS


def test_the_contract_covers_every_registered_structure():
    assert set(REGISTERED) >= {"full", "diag", "kfac", "ekfac", "lowrank"}


@pytest.mark.parametrize("selection", ["all", "last layer"])
@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("name", REGISTERED)
def test_every_structure_keeps_the_contract(models, tmp_path, name, likelihood, selection):
    model = models[likelihood]
    weights = "all" if selection == "all" else _last_layer(model)
    la = sigma.Laplace(model, X, _targets(likelihood), likelihood=likelihood, structure=name,
                       weights=weights)  # fmt: skip
    n_selected = sum(int(np.prod(v.shape)) for v in _last_layer(model))
    assert la.n_params == (sigma.num_params(model) if selection == "all" else n_selected)

    # the evidence: finite, and its optimum is a maximum along α
    start = la.log_evidence()
    la.optimize_evidence()
    best = la.log_evidence()
    assert np.isfinite(start) and best >= start - 1e-9
    alpha = np.atleast_1d(la.alpha)
    for factor in (0.5, 2.0):
        assert la.log_evidence(alpha=alpha * factor) <= best + 1e-8
    assert 0 < la.gamma <= la.n_params

    # the predictive
    if likelihood == "regression":
        mean, std = la.predict(X_TEST)
        assert mean.shape == std.shape == (7, 2) and np.all(np.isfinite(std))
        np.testing.assert_allclose(mean, keras.ops.convert_to_numpy(model(X_TEST)), rtol=1e-12)
        assert np.all(std**2 >= 1.0 / np.asarray(la.beta) - 1e-12)  # the noise floor
        tighter = la.posterior.replace(alpha=alpha * 10).predict(X_TEST)[1]
        assert np.all(tighter <= std + 1e-12) and np.any(tighter < std)
        prediction = std
    else:
        probs = la.predict_proba(X_TEST)
        assert probs.shape == (7, 3) and np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-10)
        prediction = probs

    # save and load: the same predictions, through the same constructor path
    path = tmp_path / "fit.npz"
    la.save(path)
    again = sigma.Laplace.load(path, model)
    assert type(again.structure) is type(la.structure)
    reloaded = (
        again.predict(X_TEST)[1] if likelihood == "regression" else again.predict_proba(X_TEST)
    )
    np.testing.assert_allclose(reloaded, prediction, rtol=1e-9, atol=1e-12)

    # served: the Keras model computes the same predictive in its graph
    served = la.to_keras()(X_TEST)
    served = served["std"] if likelihood == "regression" else served
    np.testing.assert_allclose(keras.ops.convert_to_numpy(served), prediction, rtol=1e-6,
                               atol=1e-9)  # fmt: skip
