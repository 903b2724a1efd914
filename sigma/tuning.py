"""Held-out tuning of the precisions, for when the evidence is not trusted.

Regression (and α alone on request): a bounded search over a common factor of the prior
precisions (the α_g ratios kept) — and of β for regression — within ``span``× of the current
values either way, minimising a held-out metric: Brent's method in 1-D (α), Nelder–Mead in log
coordinates in 2-D (α, β).

A classifier (every precision group tempered, β = 1/T): a search over the likelihood's
temperature T within ``span``× of the current one, with the α_g of the tempered model's
evidence at each T (:func:`optimize_temperature`) — one value per decade of T, then Brent's
method around the best of them. The evidence alone spreads the variance over the weight
directions the data pin down and leaves a classifier less confident than its own softmax; a
small T takes it off those directions and keeps the prior's variance on the others. A search
whose best T is its lower bound, and whose metric there is still worse than the network's
own probabilities give, raises those α_g by the smallest common factor (up to ``span``) that
makes it no worse, to within :data:`NETWORK_TOLERANCE` (else the best factor tried): as the
factor → ∞, the network's own softmax.

Every trial is a new :class:`~sigma.posterior.Posterior` (nothing is refitted); the posterior
given is never changed. A search that ends at a bound of its range (within twice its
tolerance) says so: a warning naming ``span``, and the record's ``at_bound``.

:func:`check_confidence` is the warning for a classifier whose evidence predictive is less
confident on its own training data than the network.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

import sigma
from sigma import keras_compat, metrics, predictive
from sigma._checks import check_inputs, check_positive_int, check_precision, take
from sigma._checks import n_samples as sample_count
from sigma.evidence import EvidenceError

# check_confidence: how many training samples its predictive pass reads at most, and by how
# much (relative) the predictive's mean NLL there may exceed the network's own before it warns
CONFIDENCE_SAMPLES = 2000
CONFIDENCE_MARGIN = 0.10
# optimize_prior on a classifier whose smallest T is still worse on held-out data than the
# network's own probabilities: how far (relative) above the network's metric is "no worse"
# (a Laplace tends to the network's value from above as its α_g grow, reaching it only in
# the limit)
NETWORK_TOLERANCE = 1e-3


def is_classifier(post: sigma.Posterior) -> bool:
    """Whether every precision group of the likelihood is a classifier's tempered one (β =
    1/T): held-out tuning then searches T, with α by the evidence."""
    return all(kind == "tempered" for kind in post.groups.kinds)


def optimize_prior(
    post: sigma.Posterior,
    model,
    x_val,
    y_val,
    *,
    metric: str = "nll",
    beta: bool = True,
    temperature: bool | None = None,
    method: str | None = None,
    span: float = 1e4,
    tol: float = 1e-3,
    max_iter: int = 100,
    start: float | None = None,
) -> tuple[sigma.Posterior, dict]:
    """(the posterior at the best value of ``metric`` on (x_val, y_val), a record of the
    search): see :meth:`sigma.Laplace.optimize_prior`.

    ``start``: the temperature the search is centred on (default: the posterior's; the
    posterior need not be valid there, e.g. a range reaching down to T = 1e-150).

    ``temperature``: search the classifier's temperature with α by the evidence at each T
    (:func:`optimize_temperature`; None: on a classifier) or a common factor of α (False).
    ``method``: the link to class probabilities the metric is computed with (None:
    "mean_field" for the temperature, else the posterior's link); the posterior returned
    keeps it as its link.

    The record of a search over α (and β): alpha, beta, metric, value, evaluations, and
    ``at_bound`` — {"alpha": "upper" or "lower", "beta": ...} for each tuned precision whose
    best value lies within twice ``tol`` (in ln) of the bound of the search, ``span``× its
    start (empty when none is); a RuntimeWarning names them and ``span``."""
    from sigma.classification import check_method

    lik = post.likelihood
    classifier = is_classifier(post)
    if metric not in lik.metrics:
        raise ValueError(f"metric must be one of {lik.metrics} for {lik.name}, got {metric!r}")
    if not isinstance(beta, bool):
        raise ValueError(f"beta must be True or False (also tune β), got {beta!r}")
    if temperature is None:
        temperature = classifier
    elif not isinstance(temperature, bool):
        raise ValueError(
            "temperature must be None (search it on a classifier), True or False (a common "
            f"factor of alpha at the current temperature), got {temperature!r}"
        )
    if temperature and not classifier:
        raise ValueError(
            "temperature=True searches a classifier's temperature (every output a softmax or "
            f"sigmoid head, likelihood='classification'), not likelihood {lik.name!r}: use "
            "temperature=None or False"
        )
    if method is None:
        method = "mean_field" if temperature else post.link
    if start is not None and not temperature:
        raise ValueError("start is the temperature a classifier's search is centred on")
    method = check_method(method)
    if method != post.link and not classifier:
        raise ValueError(
            f"method={method!r} is a classifier's link to probabilities (likelihood="
            f"'classification'), not likelihood {lik.name!r}'s: leave method unset"
        )
    span = check_precision(span, "span", allow_zero=False)
    if span <= 1:
        raise ValueError(f"span must be > 1 (a factor either way), got {span}")
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_precision(tol, "tol", allow_zero=False)
    x_val = check_inputs(model, x_val, "x_val")
    k = post.summary.n_outputs
    n_val = sample_count(x_val)
    y_val = lik.targets(y_val, n_val, k, "y_val", "x_val", layout=post.output_layout)
    # β too when one noise precision covers every output (a factor of it)
    tune_beta = beta and post.n_groups == 1 and bool(post.groups.free[0]) and not temperature
    metrics.check_validation_size(metric, n_val, lik.validation_values(n_val, k), 1 + tune_beta)

    mean = predictive.outputs(model, x_val, "x_val")  # once: the weights do not change

    def score(trial: sigma.Posterior) -> float:
        prediction = predictive.predict(
            trial, model, x_val, name="x_val", flat=True, mean=mean, method=method
        )
        return lik.score(prediction, y_val, metric)

    if temperature:
        found, record = optimize_temperature(
            post, score, metric=metric, method=method, span=span, tol=tol, max_iter=max_iter,
            start=start,
        )  # fmt: skip
        if record["at_bound"].get("temperature") == "lower":
            own = float(lik.score(_softmax(lik, mean, k), y_val, metric))
            record = {**record, "network_value": own}
            if record["value"] > _no_worse_bound(own):
                found, record = _no_worse_than_the_network(
                    found, record, score, own, span=span, tol=tol, max_iter=max_iter
                )
    else:
        found, record = _optimize_factor(
            post, score, metric=metric, tune_beta=tune_beta, span=span, tol=tol,
            max_iter=max_iter,
        )  # fmt: skip
    _warn_at_bound(record, metric, span)
    return dataclasses.replace(found, link=method), record


def _no_worse_than_the_network(found, record, score, own, *, span, tol, max_iter):
    """After a temperature search that ended at its lower bound with a held-out metric worse
    than the network's own probabilities give (``own``): the smallest common factor c ≥ 1 of
    the evidence's α_g there, up to ``span``, at which the metric is within
    :data:`NETWORK_TOLERANCE` (relative) of ``own`` — two c per decade from 1, then bisection
    in ln c to ``tol`` between the first that is and the one before (at most ``max_iter``
    more predictions; the smallest such c where the metric falls as c grows). When no c up
    to ``span`` is, the c of the best metric tried (1: α unchanged), with
    ``at_bound["alpha"] = "upper"`` if that is ``span``.

    As T → 0 the tempered evidence's α_g stay finite (γ_g tends to the number of weights the
    data give any curvature), so a small T removes the variance on the directions the
    training data determine and keeps the prior's, 1/α_g, on the others — the variance an
    input unlike the training data sees. Held-out data from the training distribution cannot
    value that; when they say the Laplace is worse than the network itself, α_g are raised
    until it is not (as c → ∞ the predictive tends to the network's own), and no further.
    Returns (posterior, record) as :func:`optimize_temperature`, the record's
    ``alpha_factor`` c, ``alpha`` (c × the evidence's), ``value`` and ``evaluations``
    updated; the posterior and record given when no c > 1 does better than c = 1."""
    bound = float(np.log(span))
    enough = _no_worse_bound(own)
    tried: dict[float, tuple[float, sigma.Posterior]] = {0.0: (record["value"], found)}

    def at(z: float) -> float:
        if z not in tried:
            trial = found.replace(alpha=found.alpha * (span if z >= bound else np.exp(z)))
            value = float(score(trial))
            tried[z] = (value if np.isfinite(value) else np.inf, trial)
        return tried[z][0]

    n_grid = max(5, int(np.ceil(2.0 * bound / np.log(10.0))) + 1)  # ≥ two c per decade
    n_grid = max(2, min(n_grid, max_iter + 1))  # c = 1 is known: max_iter predictions at most
    grid = np.linspace(0.0, bound, n_grid)
    passing = next((k for k, z in enumerate(grid) if k and at(z) <= enough), None)
    if passing is not None:
        lo, hi = grid[passing - 1], grid[passing]  # worse at lo (or c = 1), within at hi
        while hi - lo > tol and len(tried) <= max_iter:
            z = 0.5 * (lo + hi)
            lo, hi = (lo, z) if at(z) <= enough else (z, hi)
        z = hi
    else:
        z = min(tried, key=lambda key: tried[key][0])
    value, best = tried[z]
    evaluations = record["evaluations"] + len(tried) - 1
    if z == 0.0:  # no c > 1 does better than the evidence's α_g (a metric not monotone in c)
        return found, {**record, "evaluations": evaluations}
    at_bound = {"alpha": "upper"} if passing is None and z >= bound - 2.0 * tol else {}
    return best, {
        **record,
        "alpha": float(best.alpha[0]) if best.prior.scalar else best.alpha.copy(),
        "alpha_factor": float(span) if z >= bound else float(np.exp(z)),
        "value": value,
        "evaluations": evaluations,
        "at_bound": {**record["at_bound"], **at_bound},
    }


def _no_worse_bound(own: float) -> float:
    """The largest held-out metric still "no worse" than the network's ``own``."""
    return own + NETWORK_TOLERANCE * abs(own)


def _softmax(lik, mean, k: int):
    """The likelihood's probabilities of the logits ``mean`` with no weight uncertainty: the
    probit link at zero variance, which is exactly the softmax (or sigmoid) of every head (the
    Laplace bridge's at zero covariance is not)."""
    return lik.predictive(mean, np.zeros((len(mean), k)), noise_var=np.zeros(k), method="probit")


def _optimize_factor(post, score, *, metric, tune_beta, span, tol, max_iter):
    """A common factor of α (and of β with ``tune_beta``) within ``span``× either way."""
    alpha0, beta0 = post.alpha, post.beta
    if post.prior.scalar and alpha0[0] == 0:
        alpha0 = np.full_like(alpha0, post.alpha_from_zero())
    trials = []

    def at(z) -> sigma.Posterior | None:
        try:
            return post.replace(
                alpha=alpha0 * np.exp(z[0]), beta=beta0 * np.exp(z[1]) if tune_beta else None
            )
        except ValueError:
            return None  # A not positive definite there

    def objective(z):
        trial = at(z)
        if trial is None:
            return np.inf
        trials.append(1)
        return score(trial)

    import scipy.optimize

    bound = float(np.log(span))
    if tune_beta:
        res = scipy.optimize.minimize(
            objective, np.zeros(2), method="Nelder-Mead", bounds=[(-bound, bound)] * 2,
            options={"xatol": tol, "fatol": tol * 1e-3, "maxfev": max_iter},
        )  # fmt: skip
        best = res.x
    else:
        res = scipy.optimize.minimize_scalar(
            lambda s: objective([s]), bounds=(-bound, bound), method="bounded",
            options={"xatol": tol, "maxiter": max_iter},
        )  # fmt: skip
        best = np.array([res.x])
    value = objective(best)
    found = at(best)
    if found is None or not np.isfinite(value):
        shown = float(post.alpha[0]) if post.prior.scalar else post.alpha
        raise ValueError(
            f"no alpha within a factor {span:g} of {shown} gives a positive definite "
            "posterior precision: widen span or fit with another structure"
        )
    at_bound = _at_bound(best, bound, tol, ("alpha", "beta") if tune_beta else ("alpha",))
    record = {
        "alpha": float(found.alpha[0]) if found.prior.scalar else found.alpha.copy(),
        "beta": float(found.beta[0]) if found.beta.size == 1 else found.beta.copy(),
        "metric": metric,
        "value": float(value),
        "evaluations": len(trials),
        "at_bound": at_bound,
    }
    return found, record


def optimize_temperature(
    post: sigma.Posterior, score, *, metric: str, method: str, span: float, tol: float, max_iter: int,
    start: float | None = None,
) -> tuple[sigma.Posterior, dict]:  # fmt: skip
    """A classifier's temperature T within ``span``× of the current one either way, each T
    with the α_g that maximise the tempered model's evidence (from the current α), chosen by
    ``score`` (a held-out metric of a posterior, smaller is better).

    The search runs in ln T: one T per decade across the range (the held-out metric of the
    evidence's posterior need not be unimodal over eight decades, and a T whose evidence has
    no maximum is only known by trying it), then Brent's bounded method between the
    neighbours of the best of them, to ``tol`` in ln T. At most ``max_iter`` evaluations in
    all (the grid's included: at most half of them, coarser than a decade on a wide range). A T whose evidence fails (no interior maximum, no
    convergence) or whose A is ill-conditioned is never chosen.

    Returns the posterior at the best T seen, with its α_g and ``evidence_result``, and the
    record {temperature, alpha (the evidence's at that T), alpha_factor (1.0), metric, method,
    value, evaluations, values: [(T, value)] of every T tried in increasing T (None where the
    evidence failed), at_bound: {"temperature": "upper" | "lower"} or {}}."""
    import scipy.optimize

    t0 = post.temperature if start is None else float(start)
    bound = float(np.log(span))
    tried: dict[float, tuple[float, sigma.Posterior] | None] = {}

    def temperature(z: float) -> float:
        # the ends of the range exactly: t0·exp(ln span) can round past t0·span
        return t0 * span if z >= bound else t0 / span if z <= -bound else t0 * float(np.exp(z))

    def evaluate(z: float) -> float:
        z = float(z)
        if z not in tried:
            if len(tried) >= max_iter:
                return _FAILED
            try:
                trial = post.with_temperature(temperature(z)).optimize_evidence(
                    confidence_check=False
                )
                tried[z] = (score(trial), trial)
            except (EvidenceError, ValueError):  # no maximum, or A ill-conditioned at this T
                tried[z] = None
        found = tried[z]
        return _FAILED if found is None or not np.isfinite(found[0]) else found[0]

    # one T per decade, at most half the evaluations (the rest refine)
    n_grid = max(3, min(int(np.ceil(2.0 * bound / np.log(10.0))) + 1, max_iter // 2))
    grid = np.linspace(-bound, bound, n_grid)
    values = [evaluate(z) for z in grid]
    i = int(np.argmin(values))
    if values[i] < _FAILED:
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
        scipy.optimize.minimize_scalar(
            evaluate, bounds=(lo, hi), method="bounded",
            options={"xatol": tol, "maxiter": max(max_iter - n_grid, 1)},
        )  # fmt: skip
    ok = {z: v for z, v in tried.items() if v is not None and np.isfinite(v[0])}
    if not ok:
        raise ValueError(
            f"no temperature within a factor {span:g} of {t0:g} has an evidence maximum "
            "with a positive definite posterior precision: set alpha and temperature "
            "yourself, or fit with another structure"
        )
    best = min(ok, key=lambda z: ok[z][0])
    value, found = ok[best]
    at_bound = _at_bound([best], bound, tol, ("temperature",))
    record = {
        "temperature": found.temperature,
        "alpha": float(found.alpha[0]) if found.prior.scalar else found.alpha.copy(),
        "metric": metric,
        "alpha_factor": 1.0,
        "method": method,
        "value": float(value),
        "evaluations": len(tried),
        "values": [
            (temperature(z), None if v is None else float(v[0])) for z, v in sorted(tried.items())
        ],
        "at_bound": at_bound,
    }
    return found, record


_FAILED = 1e100  # finite: an infinite score makes Brent's parabolic step NaN


def _warn_at_bound(record: dict, metric: str, span: float) -> None:
    """The RuntimeWarning for a search that ended at an edge of its range (``record``'s
    ``at_bound``), with the network's own held-out value beside the posterior's when the
    temperature ended at its lower bound."""
    at_bound = record["at_bound"]
    if not at_bound:
        return
    ends = " and ".join(
        f"{name} at the {side} bound ({'×' if side == 'upper' else '÷'}{span:g} of its start)"
        for name, side in at_bound.items()
    )
    hint = ""
    if "network_value" in record:
        value, own, c = record["value"], record["network_value"], record["alpha_factor"]
        worse = value > _no_worse_bound(own)
        hint = (
            f" (the held-out {metric} is {value:.6g} there with the evidence's α_g"
            + (f" × {c:.4g}" if c != 1.0 else "")
            + f", the network's own probabilities' {own:.6g}: "
            + (
                "the held-out data prefer the network's probabilities to the posterior's "
                "spread" + ("; no factor of α_g up to span helped" if c == 1.0 else "")
                if worse
                else f"within {NETWORK_TOLERANCE:.1%} of the network or better"
            )
            + ")"
        )
    warnings.warn(
        f"optimize_prior: the held-out {metric} is best with {ends}, the edge of the "
        f"search: the best value may lie beyond it{hint}. Search a wider range (span={span:g} "
        "now), or start from other precisions",
        RuntimeWarning,
        stacklevel=keras_compat.user_stacklevel(),
    )


def check_confidence(post: sigma.Posterior) -> dict | None:
    """After the evidence on a classifier: the mean NLL of the predictive (its link, as
    ``predict_proba`` gives it by default) and of the network's own softmax on the training data, and a RuntimeWarning
    when the predictive's exceeds the network's by more than :data:`CONFIDENCE_MARGIN`
    (relative), saying what to do.

    One predictive pass over at most :data:`CONFIDENCE_SAMPLES` training samples, evenly
    spaced over the data (arrays; a dataset is read from its start); nothing without the
    training data (a loaded posterior). Returns {"nll", "softmax_nll", "n_samples"} or None.

    Why 10%: on the training data the weights are pinned where the data are, so a predictive
    whose variance stays off those directions changes the training NLL little — measured on
    digits 0–4 (472 training samples, a small CNN, mean-field link at the temperature the
    held-out NLL chose): 3% above the softmax's — while the evidence's α alone at T = 1 gave
    0.355 against 0.0037 there (an MLP: 0.364 against 0.0043), about 90×. 10% sits above
    the first and far below the second.
    """
    if not is_classifier(post) or post.data is None or post.model is None:
        return None
    x, y = _training_sample(post.data, post.targets, CONFIDENCE_SAMPLES)
    if x is None:
        return None
    model, lik, k = post.model, post.likelihood, post.summary.n_outputs
    n = sample_count(x)
    t = lik.targets(y, n, k, "y", "x", layout=post.output_layout)
    from sigma.curvature.engine import engine

    mean = engine(model).outputs(x)
    form = lik.predictive_form(method=post.link)
    second = predictive.weight_uncertainty(post, model, x, form)
    probs = lik.predictive(mean, second, noise_var=np.zeros(k), method=post.link)
    own = _softmax(lik, mean, k)
    found = {
        "nll": float(lik.score(probs, t, "nll")),
        "softmax_nll": float(lik.score(own, t, "nll")),
        "n_samples": n,
    }
    if found["nll"] > (1.0 + CONFIDENCE_MARGIN) * found["softmax_nll"]:
        warnings.warn(
            f"optimize_evidence: on {n} training samples the Laplace predictive's mean NLL is "
            f"{found['nll']:.3g}, the network's own softmax's {found['softmax_nll']:.3g} "
            f"(more than {CONFIDENCE_MARGIN:.0%} worse): with the evidence's alpha at "
            f"temperature={post.temperature:g} the probabilities are less confident than the "
            "network on the data it was trained on. Pass held-out data to "
            "optimize_prior(x_val, y_val), which picks the temperature by their NLL with "
            "alpha by the evidence at each, or set a smaller temperature before "
            "optimize_evidence()",
            RuntimeWarning,
            stacklevel=keras_compat.user_stacklevel(),
        )
    return found


def _training_sample(data, targets, limit: int):
    """(x, y) of at most ``limit`` training samples: evenly spaced rows of arrays x with
    their ``targets``, or the first batches of a dataset of (x, y); (None, None) for another
    form."""
    from sigma.fitting import is_dataset

    if is_dataset(data):
        xs, ys, n = [], [], 0
        for batch in data:
            if not isinstance(batch, tuple) or len(batch) != 2:
                return None, None
            xs.append(batch[0])
            ys.append(batch[1])
            n += sample_count(batch[0])
            if n >= limit:
                break
        import tensorflow as tf

        cat = lambda *parts: np.concatenate([np.asarray(p) for p in parts])[:limit]  # noqa: E731
        return tf.nest.map_structure(cat, *xs), tf.nest.map_structure(cat, *ys)
    if targets is None:
        return None, None
    n = sample_count(data)
    index = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))
    return take(data, index), take(targets, index)


def _at_bound(z, bound: float, tol: float, names) -> dict:
    """{name: "upper" | "lower"} for the coordinates of z (ln factors within ±bound) that lie
    within 2·tol of a bound (Brent's bounded search stops within about 0.65·tol of a bound it
    runs into; Nelder–Mead's bounds clip onto it); a range narrower than that: the nearer."""
    out = {}
    for name, value in zip(names, np.asarray(z, np.float64), strict=True):
        upper, lower = bound - value, value + bound  # distances to the two bounds, ≥ 0
        if min(upper, lower) <= 2.0 * tol:
            out[name] = "upper" if upper <= lower else "lower"
    return out
