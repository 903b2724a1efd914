"""Notebook 06's helpers (sigma.lab.classifiers): sigma's tempered Laplace recipe (written out
in the notebook, as here), the record of its tuning, the scoring
of every method in distribution / under shift / out of distribution, the means over seeds and
the issue's targets, on hand-made predictors and tiny models."""

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import metrics
from sigma.lab import classifiers as cl
from sigma.lab import data
from sigma.lab.models import Recipe


def tempered_laplace(model, x, labels, x_val, labels_val, *, temperatures):
    """Notebook 06's method (:func:`sigma.lab.classifiers.tempered_laplace`) over every weight
    with the full structure, and its search record."""
    recipe = Recipe(structure="full", prior="layer", link="mean_field", temperatures=temperatures)
    la = cl.tempered_laplace(model, x, labels, x_val, labels_val, recipe)
    return la, cl.tuning_info(la)


def test_tempered_laplace_picks_the_best_validation_temperature(rng):
    x = rng.normal(size=(60, 3))
    labels = (x[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int) + (x[:, 1] > 0.5)
    model = make_mlp(hidden=(5,), n_out=3)
    la, info = tempered_laplace(
        model, x[:40], labels[:40], x[40:], labels[40:], temperatures=(1e-3, 1.0)
    )
    assert 1e-3 <= la.temperature <= 1.0 and info["temperature"] == la.temperature
    nll = metrics.nll(la.predict_proba(x[40:], method="mean_field"), labels[40:])
    assert info["validation_nll"] == pytest.approx(nll, rel=1e-12)
    # the α_g are the evidence's at that temperature (a fixed point of MacKay's update)
    np.testing.assert_allclose(la.alpha, la.gammas / (2 * la.weight_errors), rtol=1e-6)
    # and no other temperature on a grid does better on the validation data
    for t in np.geomspace(1e-3, 1.0, 7):
        la.temperature = t
        la.optimize_evidence()
        other = metrics.nll(la.predict_proba(x[40:], method="mean_field"), labels[40:])
        assert other >= info["validation_nll"] - 1e-3, t


def _uniform(x):
    return np.full((len(x), 10), 0.1)


def test_evaluate_with_hand_made_predictors():
    x_train, x_test, _, l_test = data.digits_split(seed=0)
    x_test, l_test = x_test[:40], l_test[:40]
    onehot = np.eye(10)[l_test]
    predictors = {
        "uniform": _uniform,
        # right on the test digits (recognised by their first pixels), uniform elsewhere
        "oracle": lambda x: np.array(
            [onehot[i] if (i := _find(x_test, row)) is not None else np.full(10, 0.1) for row in x]
        ),  # fmt: skip
    }
    out = cl.evaluate(predictors, x_test, l_test, angles=(0, 45), noise_levels=(0.2,), ood=True)
    ind = {r["method"]: r for r in out["in_distribution"]}
    assert ind["uniform"]["nll"] == pytest.approx(np.log(10))
    assert ind["oracle"]["accuracy"] == 1.0 and ind["oracle"]["ece"] == pytest.approx(0.0)
    shifts = {(r["method"], r["shift"], r["level"]): r for r in out["shift"]}
    assert set(shifts) == {(m, s, lv) for m in predictors
                           for s, lv in (("rotation", 0.0), ("rotation", 45.0), ("noise", 0.2))}  # fmt: skip
    assert shifts[("oracle", "rotation", 0.0)]["accuracy"] == 1.0  # 0° is the test set
    assert shifts[("oracle", "rotation", 45.0)]["nll"] == pytest.approx(np.log(10))
    ood = {(r["method"], r["data"], r["score"]): r for r in out["ood"]}
    assert len(ood) == 2 * 2 * 2
    for data_name in (cl.UNIFORM, cl.INVERTED):
        assert ood[("uniform", data_name, cl.ENTROPY)]["auroc"] == 0.5  # all tied
        assert ood[("oracle", data_name, cl.ENTROPY)]["auroc"] == 1.0
        assert ood[("oracle", data_name, cl.MAX_PROB)]["fpr95"] == 0.0
        assert ood[("oracle", data_name, cl.MAX_PROB)]["confidence"] == pytest.approx(0.1)
    np.testing.assert_array_equal(out["probabilities"]["uniform"], _uniform(x_test))


def _find(x, row):
    hits = np.flatnonzero(np.all(x == row, axis=1))
    return int(hits[0]) if hits.size else None


def _result(ece_sigma, ece_map, nll=(0.1, 0.2)):
    shift = []
    for level, (s, m) in zip((0.0, 30.0, 60.0), zip(ece_sigma, ece_map, strict=True), strict=True):
        shift += [
            {"method": cl.SIGMA, "shift": "rotation", "level": level, "ece": s, "nll": 1.0},
            {"method": cl.MAP, "shift": "rotation", "level": level, "ece": m, "nll": 1.0},
            {"method": cl.DROPOUT, "shift": "rotation", "level": level, "ece": m, "nll": 1.0},
        ]
    ood = [
        {"method": me, "data": cl.UNIFORM, "score": cl.ENTROPY, "auroc": a, "fpr95": 0.5,
         "confidence": 0.5}
        for me, a in ((cl.SIGMA, 0.9), (cl.MAP, 0.8), (cl.ENSEMBLE, 0.905), (cl.DROPOUT, 0.8))
    ]  # fmt: skip
    ind = [
        {"method": cl.SIGMA, "nll": nll[0], "ece": 0.01},
        {"method": cl.MAP, "nll": nll[1], "ece": 0.02},
    ]
    return {"in_distribution": ind, "shift": shift, "ood": ood}


def test_means_over_seeds_and_targets():
    results = [
        _result((0.0, 0.2, 0.5), (0.0, 0.3, 0.35)),
        _result((0.0, 0.2, 0.1), (0.0, 0.3, 0.35)),
    ]
    rows = cl.mean_over_seeds(results, "shift", ("method", "shift", "level"))
    sigma60 = next(r for r in rows if r["method"] == cl.SIGMA and r["level"] == 60.0)
    assert sigma60["ece"] == pytest.approx(0.3) and sigma60["ece_sd"] == pytest.approx(
        0.2828, abs=1e-4
    )
    by_method = cl.mean_over_seeds(results, "shift", ("method",))  # text "shift" left out
    assert "shift" not in by_method[0] and by_method[0]["level"] == pytest.approx(30.0)
    single = cl.mean_over_seeds(results[:1], "in_distribution", ("method",))
    assert single[0]["nll_sd"] is None
    t = {r["target"].split(" (")[0]: r for r in cl.targets(results)}
    assert t["in distribution: NLL ≤ MAP's"]["met"]
    assert t["in distribution: NLL ≤ MAP's"]["margin"] == pytest.approx(0.1)
    worst = next(r for r in cl.targets(results) if r["target"].startswith("rotation: ECE <"))
    assert "worst: 60°" in worst["target"]  # gaps 0.1 at 30°, 0.05 at 60°
    assert worst["margin"] == pytest.approx(0.05) and worst["met"]
    assert t["rotation: mean ECE over angles ≤ MC dropout's"]["margin"] == pytest.approx(
        (0.0 + 0.3 + 0.35) / 3 - (0.0 + 0.2 + 0.3) / 3
    )
    assert t["OOD uniform noise: AUROC ≥ MAP's"]["margin"] == pytest.approx(0.1)
    within = t["OOD uniform noise: AUROC within 0.01 of the ensemble's"]
    assert within["margin"] == pytest.approx(0.005) and within["met"]
    worse = [_result((0.0, 0.5, 0.5), (0.0, 0.3, 0.4), nll=(0.3, 0.2))]
    missed = {r["target"].split(" (")[0]: r["met"] for r in cl.targets(worse)}
    assert not missed["in distribution: NLL ≤ MAP's"]
    assert not missed["rotation: ECE < MAP's at every angle ≥ 30°"]


def test_calibrated_ece_is_the_sampling_floor(rng):
    """Labels drawn from the probabilities: the ECE of a calibrated predictor on N samples is
    the same as simulating directly; it shrinks with N (≈ 1/sqrt(N))."""
    logits = 3.0 * rng.normal(size=(4000, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    small = cl.calibrated_ece(probs[:200], n_draws=100, seed=1)
    large = cl.calibrated_ece(probs, n_draws=20, seed=1)
    assert 0 < large["mean"] < small["mean"] <= small["q95"]
    assert small["mean"] / large["mean"] > 2.0  # sqrt(4000/200) ≈ 4.5, bins add a little
    # by hand, one draw
    u = np.random.default_rng(7).uniform(size=(200, 1))
    labels = np.minimum((u > np.cumsum(probs[:200], axis=1)).sum(axis=1), 4)
    one = cl.calibrated_ece(probs[:200], n_draws=1, seed=7)
    assert one["mean"] == pytest.approx(metrics.expected_calibration_error(probs[:200], labels))


def test_tempered_laplace_skips_temperatures_where_a_is_ill_conditioned(rng):
    """At T ≤ 1e-50 A = αI + G/T is refused (ValueError): the search scores it 1e100 and goes on,
    instead of crashing; info says whether T ended at a bound. (A Laplace cannot be put at the
    centre of such a range, T = 1e-75, so the search is started there by sigma.tuning's
    ``start``.)"""
    import dataclasses

    from sigma import tuning

    x = rng.normal(size=(60, 3))
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    model = make_mlp(hidden=(5,), n_out=3)
    la = sigma.Laplace(model, x[:40], labels[:40], likelihood="classification",
                       structure="full", prior="layer")  # fmt: skip
    best, found = tuning.optimize_prior(
        la.posterior, model, x[40:], labels[40:], method="mean_field", span=1e75, tol=0.05,
        start=1e-75,
    )  # fmt: skip
    la.posterior = dataclasses.replace(best, prior_result=found)
    info = cl.tuning_info(la)
    assert 1e-150 <= la.temperature <= 1.0 and np.isfinite(info["validation_nll"])
    assert info["at_bound"] in ("lower", "upper", None)
    expected = (
        "lower" if np.log(la.temperature) - np.log(1e-150) <= 0.1
        else "upper" if -np.log(la.temperature) <= 0.1 else None
    )  # fmt: skip
    assert info["at_bound"] == expected
    _, info = tempered_laplace(
        model, x[:40], labels[:40], x[40:], labels[40:], temperatures=(1e-3, 1e-3 * 1.01)
    )
    assert info["at_bound"] == "lower"  # a range narrower than the tolerance
