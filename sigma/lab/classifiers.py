"""Classifiers in distribution, under shift and out of distribution
(``notebooks/06_classifiers_under_shift.py``).

The same MLP, trained by the same optimiser for the same epochs on the same data, gives
class probabilities five ways:

* **MAP softmax** — the trained network's own softmax;
* **temperature scaling** — its logits divided by one T fitted on a validation part of the
  training data (:class:`sigma.lab.baselines.TemperatureScaling`);
* **deep ensemble** and **MC dropout** — :mod:`sigma.lab.baselines`;
* **sigma** — a Laplace at the MAP weights (:func:`tempered_laplace`, which notebook 06 prints; any ``laplace=`` of its signature): KFAC curvature over
  every layer, one prior precision per layer, and the likelihood's temperature T
  (``Laplace(temperature=)``): for each T the α_g are set by the evidence of the tempered
  model, and T is chosen by the validation NLL; probabilities by Lu et al.'s mean-field link
  with the full logit covariance (``predict_proba(method="mean_field")``).

Why the temperature: A = D_α + G/T, so the weight covariance is T (T D_α + G)⁻¹ — where the
data pin the weights (large G) the variance is ≈ T/g, where they do not (G ≈ 0) it stays the
prior's 1/α. The evidence's α alone puts so much variance on the data's directions that the
digits come out under-confident; a small T removes it there and keeps it off the data, which
is what an out-of-distribution input sees.

Every method sees the same fit/validation split of the training data (the validation part is
used by temperature scaling and sigma's T only). Shapes: x (N, D) inputs, labels (N,)
integers in [0, K); probabilities (N, K).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict

import numpy as np

from sigma import metrics
from sigma.classification import softmax
from sigma.lab import baselines, shift
from sigma.lab.models import Recipe, train
from sigma.laplace import Laplace

MAP, SCALED, ENSEMBLE, DROPOUT, SIGMA = (
    "MAP softmax",
    "temperature scaling",
    "deep ensemble",
    "MC dropout",
    "sigma",
)
METHODS = (MAP, SCALED, ENSEMBLE, DROPOUT, SIGMA)
UNIFORM, INVERTED = "uniform noise", "inverted digits"
MAX_PROB, ENTROPY = "max probability", "entropy"


def tuning_info(la: Laplace) -> dict:
    """What a classifier's held-out tuning of the likelihood's temperature found
    (``la.posterior.prior_result`` after :meth:`sigma.Laplace.optimize_prior`): {temperature,
    alpha, alpha_factor, validation_nll, evaluations, at_bound}; ``at_bound`` is "lower" or
    "upper" when T ended at a bound of the search, else None; ``alpha_factor`` is the factor
    by which the evidence's α_g were raised at T's lower bound (1.0 otherwise)."""
    found = la.posterior.prior_result
    return {
        "temperature": la.temperature,
        "alpha": np.atleast_1d(la.alpha).tolist(),
        "alpha_factor": found.get("alpha_factor", 1.0),
        "validation_nll": found["value"],
        "evaluations": found["evaluations"],
        "at_bound": found["at_bound"].get("temperature"),
    }


def split(x_train, labels_train, validation: float, seed: int):
    """(x_fit, x_val, labels_fit, labels_val): a stratified, seeded hold-out of the training
    data."""
    from sklearn.model_selection import train_test_split

    return train_test_split(
        x_train, labels_train, test_size=validation, random_state=seed, stratify=labels_train
    )


def tempered_laplace(model, x_fit, labels_fit, x_val, labels_val, recipe: Recipe) -> Laplace:
    """sigma's classifier recipe, as the README gives it: a Laplace at the network's weights,
    then ``optimize_prior`` on the held-out part — the temperature T by its NLL within
    ``recipe.temperatures``, α_g by the evidence at each T (raised at the lowest T only as
    far as makes the NLL no worse than the network's own) — with ``recipe.link``."""
    la = Laplace(model, x_fit, labels_fit, likelihood="classification",
                 structure=recipe.structure, weights=recipe.weights, prior=recipe.prior)  # fmt: skip
    low, high = recipe.temperatures
    la.temperature = np.sqrt(low * high)
    return la.optimize_prior(x_val, labels_val, method=recipe.link, span=np.sqrt(high / low),
                             tol=0.05)  # fmt: skip


def predictors(x_train, labels_train, setup: Recipe, *, laplace=tempered_laplace, seed: int = 0
               ) -> tuple[dict, dict]:  # fmt: skip
    """Train every method on one seed: the MAP network, temperature scaling, the deep ensemble,
    MC dropout, and sigma — ``laplace(model, x_fit, labels_fit, x_val, labels_val, setup)``,
    by default :func:`tempered_laplace`: a fitted and tuned :class:`sigma.Laplace` at the MAP network's weights.
    Returns ``(predictors, info)``: {method: callable x (N, D) → probabilities (N, K)} and
    {"seconds": {method: training time}, "temperature_scaling": T, "sigma":
    :func:`tuning_info`}."""
    x_fit, x_val, l_fit, l_val = split(x_train, labels_train, setup.validation, seed)
    n_in, k = x_fit.shape[1], int(labels_train.max()) + 1
    loss = baselines.classification_loss()
    predictors, seconds, info = {}, {}, {}

    start = time.perf_counter()
    model = setup.network(n_in, k, seed)
    train(model, x_fit, l_fit, loss=loss, seed=seed, **setup.training())
    predictors[MAP] = lambda x: softmax(baselines.model_outputs(model, x))
    seconds[MAP] = time.perf_counter() - start

    start = time.perf_counter()
    scaled = baselines.TemperatureScaling(model).fit(x_val, l_val)
    predictors[SCALED] = scaled.predict_proba
    info["temperature_scaling"] = scaled.temperature
    seconds[SCALED] = seconds[MAP] + time.perf_counter() - start

    start = time.perf_counter()
    ens = baselines.DeepEnsemble(
        n_in, setup.hidden, k, size=setup.ensemble_size, likelihood="classification",
        activation=setup.activation, dtype=setup.dtype, seed=seed,
    ).fit(x_fit, l_fit, **setup.training())  # fmt: skip
    predictors[ENSEMBLE] = ens.predict_proba
    seconds[ENSEMBLE] = time.perf_counter() - start

    start = time.perf_counter()
    mc = baselines.MCDropout(
        n_in, setup.hidden, k, rate=setup.dropout, likelihood="classification",
        activation=setup.activation, dtype=setup.dtype, seed=seed,
    ).fit(x_fit, l_fit, **setup.training())  # fmt: skip
    predictors[DROPOUT] = lambda x: mc.predict_proba(x, n_samples=setup.mc_samples, seed=seed)
    seconds[DROPOUT] = time.perf_counter() - start

    start = time.perf_counter()
    la = laplace(model, x_fit, l_fit, x_val, l_val, setup)
    info["sigma"] = tuning_info(la)
    predictors[SIGMA] = lambda x: la.predict_proba(x, method=setup.link)
    seconds[SIGMA] = seconds[MAP] + time.perf_counter() - start
    info["seconds"] = seconds
    return predictors, info


def _scores(probs, labels) -> dict:
    return {
        **metrics.classification_metrics(probs, labels),
        "confidence": float(np.mean(np.max(probs, axis=1))),
    }


def evaluate(
    predictors: dict, x_test, labels_test, *, angles=(), noise_levels=(), ood: bool = False,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Score every predictor on the test set, on its rotations by ``angles`` (degrees) and its
    noisy copies (``noise_levels``: pixel noise standard deviations), and (``ood``) on as many
    uniform-noise images and the test digits' inversions. All inputs of a method go through
    one call. Returns {"in_distribution": rows {method, accuracy, nll, brier, ece,
    confidence}, "shift": rows {method, shift ("rotation" or "noise"), level, accuracy, nll,
    ece, confidence}, "ood": rows {method, data, score, auroc, fpr95, confidence} (the score
    is the max probability, negated, or the predictive entropy), "probabilities": {method:
    test probabilities}}."""
    n = len(x_test)
    sets = [("test", None, x_test)]
    sets += [("rotation", float(a), shift.rotate(x_test, a)) for a in angles]
    sets += [
        ("noise", float(s), shift.add_noise(x_test, s, seed=seed + i))
        for i, s in enumerate(noise_levels)
    ]
    if ood:
        sets += [(UNIFORM, None, shift.uniform_images(n, seed=seed, like=x_test))]
        sets += [(INVERTED, None, shift.invert(x_test))]
    stacked = np.concatenate([s[2] for s in sets])
    out = {"in_distribution": [], "shift": [], "ood": [], "probabilities": {}}
    for method, predict in predictors.items():
        probs = np.asarray(predict(stacked), np.float64)
        parts = {i: probs[i * n : (i + 1) * n] for i in range(len(sets))}
        test = parts[0]
        out["probabilities"][method] = test
        out["in_distribution"].append({"method": method, **_scores(test, labels_test)})
        for i, (kind, level, _) in enumerate(sets):
            if kind in ("rotation", "noise"):
                row = _scores(parts[i], labels_test)
                row.pop("brier")
                out["shift"].append({"method": method, "shift": kind, "level": level, **row})
            elif kind in (UNIFORM, INVERTED):
                for score, f in ((MAX_PROB, lambda p: -p.max(axis=1)),
                                 (ENTROPY, metrics.predictive_entropy)):  # fmt: skip
                    s_in, s_out = f(test), f(parts[i])
                    out["ood"].append({
                        "method": method, "data": kind, "score": score,
                        "auroc": metrics.auroc(s_in, s_out),
                        "fpr95": metrics.fpr_at_tpr(s_in, s_out, 0.95),
                        "confidence": float(np.mean(parts[i].max(axis=1))),
                    })  # fmt: skip
    return out


def run(
    x_train, labels_train, x_test, labels_test, setup: Recipe, *, laplace=tempered_laplace,
    seeds=(0,),
    angles=(), noise_levels=(), ood: bool = False,
) -> list[dict]:  # fmt: skip
    """:func:`predictors` and :func:`evaluate` for every seed (the data split stays; the seed sets
    the hold-out, the initialisations, shufflings, masks and noise). Returns one dict per
    seed: :func:`evaluate`'s tables plus "seed" and "info"."""
    results = []
    for seed in seeds:
        found, info = predictors(x_train, labels_train, setup, laplace=laplace, seed=int(seed))
        result = evaluate(
            found, x_test, labels_test, angles=angles, noise_levels=noise_levels, ood=ood,
            seed=int(seed),
        )  # fmt: skip
        result.update(seed=int(seed), info=info, setup=asdict(setup))
        results.append(result)
    return results


def mean_over_seeds(results: list[dict], table: str, keys) -> list[dict]:
    """The rows of ``table`` averaged over the seeds' results, grouped by ``keys`` (e.g.
    ("method",) or ("method", "shift", "level")); every other numeric column becomes its mean
    and ``<column>_sd`` its standard deviation over seeds (None for one seed); other text
    columns are left out."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        for row in result[table]:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, rows in groups.items():
        row = dict(zip(keys, key, strict=True))
        for column in rows[0]:
            if column in keys or isinstance(rows[0][column], str):
                continue  # a grouping key, or a label not asked to group by
            values = np.array([r[column] for r in rows], np.float64)
            row[column] = float(values.mean())
            row[f"{column}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out.append(row)
    return out


def _value(rows, column, **where):
    for row in rows:
        if all(row[k] == v for k, v in where.items()):
            return row[column]
    raise KeyError(where)


def targets(results: list[dict], *, method: str = SIGMA, min_angle: float = 30.0) -> list[dict]:
    """The issue's targets, on the means over seeds: {target, value (``method``'s), reference
    (the other method's), margin (how much better: positive when met), met}.

    In distribution NLL ≤ MAP's and ECE ≤ MAP's; under rotation ECE below MAP's at every angle
    ≥ ``min_angle`` (the worst angle is reported) and at or below MC dropout's on average over
    all angles; out of distribution (predictive entropy, each OOD set) AUROC ≥ MAP's and within
    1 point (0.01) of the deep ensemble's.
    """
    ind = mean_over_seeds(results, "in_distribution", ("method",))
    rows = []

    def add(target, value, reference, margin):
        rows.append({"target": target, "value": value, "reference": reference,
                     "margin": margin, "met": bool(margin >= 0)})  # fmt: skip

    for column in ("nll", "ece"):
        v, r = _value(ind, column, method=method), _value(ind, column, method=MAP)
        add(f"in distribution: {column.upper()} ≤ MAP's", v, r, r - v)
    rot = [
        r for r in mean_over_seeds(results, "shift", ("method", "shift", "level"))
        if r["shift"] == "rotation"
    ]  # fmt: skip
    angles = sorted({r["level"] for r in rot if r["level"] >= min_angle})
    if angles:
        gaps = {
            a: _value(rot, "ece", method=MAP, level=a) - _value(rot, "ece", method=method, level=a)
            for a in angles
        }
        worst = min(gaps, key=gaps.get)
        add(
            f"rotation: ECE < MAP's at every angle ≥ {min_angle:g}° (worst: {worst:g}°)",
            _value(rot, "ece", method=method, level=worst),
            _value(rot, "ece", method=MAP, level=worst),
            gaps[worst],
        )
    if rot and DROPOUT in {r["method"] for r in rot}:
        v = float(np.mean([r["ece"] for r in rot if r["method"] == method]))
        r = float(np.mean([r["ece"] for r in rot if r["method"] == DROPOUT]))
        add("rotation: mean ECE over angles ≤ MC dropout's", v, r, r - v)
    ood = mean_over_seeds(results, "ood", ("method", "data", "score"))
    for data in dict.fromkeys(r["data"] for r in ood):
        v = _value(ood, "auroc", method=method, data=data, score=ENTROPY)
        m = _value(ood, "auroc", method=MAP, data=data, score=ENTROPY)
        add(f"OOD {data}: AUROC ≥ MAP's", v, m, v - m)
        if ENSEMBLE in {r["method"] for r in ood}:
            e = _value(ood, "auroc", method=ENSEMBLE, data=data, score=ENTROPY)
            add(f"OOD {data}: AUROC within 0.01 of the ensemble's", v, e, v - (e - 0.01))
    return rows


def recipes(x_train, labels_train, setup: Recipe, *, laplace=tempered_laplace, seed: int = 0
            ) -> tuple[dict, dict]:  # fmt: skip
    """The ingredients of sigma's recipe, one at a time, on one seed: a Laplace at the MAP
    weights of :func:`predictors`' network with the α_g of the post-hoc evidence, of training with
    the evidence (:class:`sigma.EvidenceCallback`, its own network), of held-out tuning
    (``optimize_prior`` on the validation NLL or ECE) and of the evidence at the validation
    temperature (``laplace``, as in :func:`predictors`) — over every layer (KFAC), the last layer (full and
    KFAC), with the probit, mean-field or Monte Carlo link. Returns ``(predictors, info)`` as
    :func:`predictors` does, for :func:`evaluate`; ``info`` holds each recipe's α, T and seconds."""
    from sigma.callbacks import EvidenceCallback

    x_fit, x_val, l_fit, l_val = split(x_train, labels_train, setup.validation, seed)
    n_in, k = x_fit.shape[1], int(labels_train.max()) + 1
    loss = baselines.classification_loss()
    model = setup.network(n_in, k, seed)
    train(model, x_fit, l_fit, loss=loss, seed=seed, **setup.training())
    predictors = {MAP: lambda x: softmax(baselines.model_outputs(model, x))}
    info = {}

    def at_map(**kw):
        return Laplace(model, x_fit, l_fit, likelihood="classification", prior=setup.prior, **kw)

    def add(name, la, link, start, extra=None):
        predictors[name] = lambda x: la.predict_proba(x, method=link)
        info[name] = {"alpha": np.atleast_1d(la.alpha).tolist(), "temperature": la.temperature,
                      "seconds": time.perf_counter() - start, **(extra or {})}  # fmt: skip

    start = time.perf_counter()
    post_hoc = at_map(structure="kfac").optimize_evidence()
    add("post-hoc evidence, probit", post_hoc, "probit", start)
    add("post-hoc evidence, mean field", post_hoc, "mean_field", start)

    start = time.perf_counter()
    trained = setup.network(n_in, k, seed)
    cb = EvidenceCallback(x_fit, l_fit, structure="kfac", prior=setup.prior, every=10, verbose=0)
    train(trained, x_fit, l_fit, loss=loss, seed=seed, callbacks=[cb], **setup.training())
    add("evidence-trained (EvidenceCallback), mean field", cb.laplace, "mean_field", start)

    for metric in ("nll", "ece"):
        start = time.perf_counter()
        tuned = at_map(structure="kfac").optimize_evidence()
        tuned.optimize_prior(x_val, l_val, metric=metric)
        add(f"held-out α ({metric.upper()}), mean field", tuned, "mean_field", start)

    for name, kw in (
        ("tempered, KFAC all layers", {"structure": "kfac"}),
        ("tempered, last layer full", {"structure": "full", "weights": "last_layer"}),
        ("tempered, last layer KFAC", {"structure": "kfac", "weights": "last_layer"}),
    ):
        start = time.perf_counter()
        kw = {"weights": "all", **kw}
        la = laplace(model, x_fit, l_fit, x_val, l_val, dataclasses.replace(setup, **kw))
        extra = tuning_info(la)
        add(f"{name}, mean field", la, "mean_field", start, extra)
        if kw["structure"] == "kfac" and kw["weights"] == "all":
            add(f"{name}, probit", la, "probit", start, extra)
            predictors[f"{name}, Monte Carlo"] = lambda x, la=la: la.predict_proba(
                x, method="mc", n_samples=1000, seed=seed
            )
            add(f"{name}, Laplace bridge", la, "bridge", start, extra)
    return predictors, info


def calibrated_ece(probs, *, n_draws: int = 200, n_bins: int = 10, seed: int = 0) -> dict:
    """The ECE a perfectly calibrated predictor shows on a test set of this size: labels drawn
    from the probabilities (N, K) themselves, ``n_draws`` times. Returns {"mean", "q95"}: the
    ECE below which a measured difference is sampling noise of the test set (ECE is biased
    upwards at finite N)."""
    probs = np.asarray(probs, np.float64)
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probs, axis=1)
    values = []
    for _ in range(int(n_draws)):
        labels = (rng.uniform(size=(len(probs), 1)) > cumulative).sum(axis=1)
        labels = np.minimum(labels, probs.shape[1] - 1)  # round-off of the last cumulative
        values.append(metrics.expected_calibration_error(probs, labels, n_bins))
    return {"mean": float(np.mean(values)), "q95": float(np.quantile(values, 0.95))}


def ece_floor(results: list[dict], *, n_draws: int = 200) -> list[dict]:
    """Per method, the mean over seeds of :func:`calibrated_ece` of its test probabilities
    next to its measured ECE: rows {method, ece, calibrated_ece, calibrated_ece_q95}."""
    rows = []
    for method in dict.fromkeys(r["method"] for res in results for r in res["in_distribution"]):
        floors = [
            calibrated_ece(res["probabilities"][method], n_draws=n_draws, seed=res["seed"])
            for res in results
        ]
        measured = [
            r["ece"] for res in results for r in res["in_distribution"] if r["method"] == method
        ]
        rows.append({
            "method": method, "ece": float(np.mean(measured)),
            "calibrated_ece": float(np.mean([f["mean"] for f in floors])),
            "calibrated_ece_q95": float(np.mean([f["q95"] for f in floors])),
        })  # fmt: skip
    return rows
