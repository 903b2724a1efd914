"""curvature="ggn_mc": the GGN from one sampled label per input — unbiased (its mean over
draws is the exact GGN), one pseudo-output per precision group, reproducible by its seed."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import sigma
from sigma.curvature.capture import capture

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "likelihood, y",
    [
        ("regression", RNG.normal(size=(5, 3))),
        ("classification", RNG.integers(0, 3, size=5)),
    ],
)
@pytest.mark.parametrize("structure", ["full", "diag"])
def test_its_mean_over_draws_is_the_exact_ggn(likelihood, y, structure):
    model = make_mlp(n_out=3)
    x = RNG.normal(size=(5, 3))
    exact = sigma.Laplace(model, x, y, likelihood=likelihood, structure=structure)
    reps = 4000  # every sample repeated: the sum over the copies averages 4000 draws
    xr, yr = np.repeat(x, reps, axis=0), np.repeat(y, reps, axis=0)
    mc = sigma.Laplace(model, xr, yr, likelihood=likelihood, structure=structure,
                       curvature="ggn_mc", seed=3)  # fmt: skip
    if structure == "full":
        ref, got = exact.structure.matrix, mc.structure.matrix / reps
    else:
        ref, got = exact.structure.diagonal, mc.structure.diagonal / reps
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1e-6 < err < 0.08, err  # random, and within ~4 standard errors of the GGN
    assert mc.curvature == "ggn_mc"


def test_one_pseudo_output_per_group_and_the_seed_decides():
    model = make_mlp(n_out=10)
    x = RNG.normal(size=(20, 3))
    y = RNG.integers(0, 10, 20)
    mc = sigma.Laplace(model, x, y, likelihood="classification", structure="kfac",
                       curvature="ggn_mc", seed=1)  # fmt: skip
    plan = mc.structure.plan
    lik = sigma.likelihoods.MonteCarlo(
        sigma.likelihoods.get("classification"), sigma.curvature.engine(model).generator(0)
    )
    cap = capture(model, plan, tf.constant(x), likelihood=lik)
    assert [int(s.shape[0]) for s in cap.sens] == [1, 1, 1]  # one backward pass, not 10
    again = sigma.Laplace(model, x, y, likelihood="classification", structure="kfac",
                          curvature="ggn_mc", seed=1)  # fmt: skip
    other = sigma.Laplace(model, x, y, likelihood="classification", structure="kfac",
                          curvature="ggn_mc", seed=2)  # fmt: skip
    np.testing.assert_array_equal(again.structure.eigenvalues, mc.structure.eigenvalues)
    assert not np.allclose(other.structure.eigenvalues, mc.structure.eigenvalues)
    mc.optimize_evidence()
    assert np.isfinite(mc.log_evidence()) and np.all(np.isfinite(mc.predict_proba(x[:3])))


def test_a_likelihood_per_head_draws_each_groups_own_column():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), dtype="float64")
    h = keras.layers.Dense(6, activation="tanh", dtype="float64")(inp)
    model = keras.Model(
        inp,
        [keras.layers.Dense(1, name="a", dtype="float64")(h),
         keras.layers.Dense(3, name="b", dtype="float64")(h)],
    )  # fmt: skip
    x = RNG.normal(size=(4, 3))
    y = [RNG.normal(size=(4, 1)), RNG.integers(0, 3, 4)]
    lik = ["regression", "classification"]
    exact = sigma.Laplace(model, x, y, likelihood=lik, structure="full")
    reps = 4000
    mc = sigma.Laplace(model, np.repeat(x, reps, 0), [np.repeat(t, reps, 0) for t in y],
                       likelihood=lik, structure="full", curvature="ggn_mc")  # fmt: skip
    for h in range(2):  # each group's curvature C_h, unbiased
        ref, got = exact.structure.matrices[h], mc.structure.matrices[h] / reps
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.08


def test_where_it_is_refused(mlp64):
    x, y = RNG.normal(size=(8, 3)), RNG.normal(size=(8, 2))
    with pytest.raises(ValueError, match="structure='lowrank' supports curvature='ggn' or"):
        sigma.Laplace(mlp64, x, y, structure="lowrank", curvature="ggn_mc")
    with pytest.raises(ValueError, match="curvature must be one of"):
        sigma.Laplace(mlp64, x, y, curvature="mc")
    with pytest.raises(ValueError, match="seed"):
        sigma.Laplace(mlp64, x, y, curvature="ggn_mc", seed=-1)
