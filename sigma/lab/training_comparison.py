"""Training for the posterior, compared (``notebooks/05_training_for_the_posterior.py``).

The same network, trained for the same epochs by the same optimiser, four ways:

* **post-hoc evidence** — ordinary training (squared error or cross-entropy, no penalty), then
  a :class:`sigma.Laplace` at the trained weights with α_g, β set by the evidence;
* **evidence-trained** — training with :class:`sigma.EvidenceCallback` (the loss is the log
  posterior, α_g and β re-estimated every few epochs), then its ``laplace``;

(:func:`post_hoc_evidence` and :func:`evidence_trained`, whose source notebook 05 prints;
``post_hoc=``/``trained=`` others)
* **deep ensemble** and **MC dropout** — :mod:`sigma.lab.baselines`.

Classification adds the two networks' own softmax (no weight uncertainty) as references:
"plain softmax" is what ordinary training gives. Every method is scored on held-out data with
:mod:`sigma.metrics`; a method that cannot produce a predictive (the post-hoc evidence of a
network that interpolates its data) is reported with its reason instead of numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sigma import metrics
from sigma.classification import softmax
from sigma.evidence import EvidenceError
from sigma.lab import baselines
from sigma.lab.models import Recipe, train
from sigma.laplace import Laplace

POST_HOC, TRAINED, ENSEMBLE, DROPOUT = (
    "post-hoc evidence",
    "evidence-trained",
    "deep ensemble",
    "MC dropout",
)
PLAIN_SOFTMAX, TRAINED_SOFTMAX = "plain softmax", "evidence-trained softmax"


@dataclass
class Result:
    """One dataset's comparison.

    rows : {method: metrics} — regression: coverage_68, coverage_95, nll, rmse, mean_sigma
        (in the units of ``y_scale``), and for the Laplace methods alpha, beta (β in those
        units), gamma, log_evidence; classification: accuracy, nll, brier, ece and confidence
        (the mean of the largest probability: below the accuracy is under-confident). A method
        that failed has no metrics and a note.
    history : the :class:`sigma.EvidenceCallback`'s ``history`` (β in the training units).
    prior_groups : the names of the α_g.
    notes : {method: why it failed}; seconds : {method: training + prediction time}.
    probabilities : classification only, {method: (N_test, K) predictive probabilities}.
    """

    rows: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    prior_groups: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


PRIORS = ("scalar", "layer", "ard")


def layer_names(model) -> dict[str, str]:
    """Readable names of an MLP's layers with weights, by Keras layer name: "hidden layer 1",
    …, "output layer" (Keras numbers its layers per process: dense_98 says nothing)."""
    weighted = [layer for layer in model.layers if layer.trainable_variables]
    return {
        layer.name: "output layer" if i == len(weighted) - 1 else f"hidden layer {i + 1}"
        for i, layer in enumerate(weighted)
    }


def ard_groups(model) -> tuple[np.ndarray, tuple[str, ...]]:
    """MacKay's automatic relevance determination for an MLP: one prior precision per input
    (the first layer's weights leaving that input), one for the first layer's biases, one per
    later layer (its kernel and bias together).

    Returns ``(groups, names)``: group ids (P,) in the package's weight order
    (:mod:`sigma.params`), for ``Laplace(prior=groups)`` or ``EvidenceCallback(prior=groups)``,
    and a name per group ("input 1" … "input D", "hidden layer 1 biases", "hidden layer 2" …,
    "output layer"). An input whose α grows large is switched off: the evidence says the data
    do not need it. The groups cut through the first layer's Kronecker block, so they need a
    structure that takes any grouping ("full", "diag", "lowrank"), not "kfac".
    """
    variables = list(model.trainable_variables)
    kernel = variables[0]
    if len(kernel.shape) != 2:
        raise ValueError(
            "ard_groups needs a model whose first weights are a Dense kernel (D, H), got shape "
            f"{tuple(kernel.shape)}"
        )
    d, h = (int(n) for n in kernel.shape)
    owner = {id(v): layer.name for layer in model.layers for v in layer.trainable_variables}
    readable = layer_names(model)
    layers = [owner.get(id(v), str(getattr(v, "path", v.name))) for v in variables]
    ids, names = [np.repeat(np.arange(d), h)], [f"input {i + 1}" for i in range(d)]
    for v, layer in zip(variables[1:], layers[1:], strict=True):
        name = readable.get(layer, layer)
        name = f"{name} biases" if layer == layers[0] else name
        if name not in names:
            names.append(name)
        ids.append(np.full(int(np.prod(v.shape)), names.index(name)))
    return np.concatenate(ids).astype(np.int64), tuple(names)


def prior_spec(model, prior: str):
    """The ``prior=`` argument for a prior name: "scalar", "layer" as they are, "ard" as the
    group ids of :func:`ard_groups`."""
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    return ard_groups(model)[0] if prior == "ard" else prior


def _group_names(model, prior: str, callback) -> tuple[str, ...]:
    if prior == "ard":
        return ard_groups(model)[1]
    readable = layer_names(model)
    return tuple(readable.get(name, name) for name in callback.prior_groups)


def _laplace_summary(la: Laplace, beta_unit: float) -> dict:
    out = {
        "alpha": la.alpha,
        "gamma": la.gamma,
        "log_evidence": la.log_evidence(),
    }
    if la.likelihood.has_beta:
        out["beta"] = float(la.beta) / beta_unit
    return out


def post_hoc_evidence(model, x, y, recipe: Recipe, prior, likelihood):
    """A :class:`sigma.Laplace` at a plainly trained model's weights with α_g (and β) by the
    evidence."""
    la = Laplace(model, x, y, likelihood=likelihood, structure=recipe.structure, prior=prior)
    return la.optimize_evidence()


def evidence_trained(model, x, y, recipe: Recipe, loss, prior, seed):
    """``model`` trained with :class:`sigma.EvidenceCallback` (the loss the log posterior at the
    evidence's current α_g, β); returns the callback (its ``laplace``, ``history``)."""
    options = dict(structure=recipe.structure, prior=prior, every=recipe.every,
                   warmup=recipe.warmup, verbose=0)  # fmt: skip
    return train(model, x, y, loss=loss, seed=seed, evidence=options,
                 **recipe.training()).evidence  # fmt: skip


def run_regression(split, recipe: Recipe, *, post_hoc=post_hoc_evidence,
                   trained=evidence_trained, seed: int = 0,
                   y_scale: float = 1.0) -> Result:  # fmt: skip
    """The four methods on one regression split (x (N, D), y (N, K) standardised, e.g. a
    :class:`sigma.lab.data.RegressionSplit`). Metrics are reported in units of ``y_scale``
    (targets, means and σ multiplied by it; 1: the training units) and β in those units
    (β / y_scale²).

    The evidence methods (by default :func:`post_hoc_evidence` and :func:`evidence_trained`): ``post_hoc(model, x, y, recipe, prior,
    likelihood)`` → a :class:`sigma.Laplace` at a plainly trained model's weights with the
    evidence's α_g, β (or :class:`~sigma.evidence.EvidenceError`); ``trained(model, x, y,
    recipe, loss, prior, seed)`` → the :class:`sigma.EvidenceCallback` a fresh model was trained
    with (its ``laplace`` at the final weights). ``prior`` is :func:`prior_spec`'s."""
    x_train, x_test, y_train, y_test = split[:4]
    n_in, k = x_train.shape[1], y_train.shape[1]
    result = Result(recipe=asdict(recipe))
    unit = y_scale**2

    def score(method, mean, std, extra=None):
        result.rows[method] = {
            **metrics.regression_metrics(mean * y_scale, std * y_scale, y_test * y_scale),
            **(extra or {}),
        }

    # 1. plain training, then the evidence at the trained weights
    start = time.perf_counter()
    plain = recipe.network(n_in, k, seed)
    train(plain, x_train, y_train, loss="mse", seed=seed, **recipe.training())
    prior = prior_spec(plain, recipe.prior)
    try:
        la = post_hoc(plain, x_train, y_train, recipe, prior, "regression")
        score(POST_HOC, *la.predict(x_test), _laplace_summary(la, unit))
    except EvidenceError as err:
        result.notes[POST_HOC] = str(err)
    result.seconds[POST_HOC] = time.perf_counter() - start

    # 2. training for the posterior
    start = time.perf_counter()
    model = recipe.network(n_in, k, seed)
    cb = trained(model, x_train, y_train, recipe, "mse", prior, seed)
    score(TRAINED, *cb.laplace.predict(x_test), _laplace_summary(cb.laplace, unit))
    result.history, result.prior_groups = cb.history, _group_names(model, recipe.prior, cb)
    result.seconds[TRAINED] = time.perf_counter() - start

    # 3. deep ensemble
    start = time.perf_counter()
    ens = baselines.DeepEnsemble(
        n_in, recipe.hidden, k, size=recipe.ensemble_size, head=recipe.ensemble_head,
        activation=recipe.activation, dtype=recipe.dtype, seed=seed,
    ).fit(x_train, y_train, **recipe.training())  # fmt: skip
    score(ENSEMBLE, *ens.predict(x_test))
    result.seconds[ENSEMBLE] = time.perf_counter() - start

    # 4. MC dropout
    start = time.perf_counter()
    mc = baselines.MCDropout(
        n_in, recipe.hidden, k, rate=recipe.dropout, activation=recipe.activation,
        dtype=recipe.dtype, seed=seed,
    ).fit(x_train, y_train, n_samples=recipe.mc_samples, **recipe.training())  # fmt: skip
    score(DROPOUT, *mc.predict(x_test, n_samples=recipe.mc_samples, seed=seed))
    result.seconds[DROPOUT] = time.perf_counter() - start
    return result


def run_classification(
    x_train, labels_train, x_test, labels_test, recipe: Recipe, *,
    post_hoc=post_hoc_evidence, trained=evidence_trained,
    seed: int = 0,
) -> Result:  # fmt: skip
    """The four methods on a classifier (labels (N,) integers in [0, K)), plus the plain and
    the evidence-trained networks' own softmax; ``post_hoc``, ``trained`` as in
    :func:`run_regression`."""
    n_in, k = x_train.shape[1], int(max(labels_train.max(), labels_test.max())) + 1
    result = Result(recipe=asdict(recipe))
    loss = baselines.classification_loss()

    def score(method, probs, extra=None):
        result.rows[method] = {
            **metrics.classification_metrics(probs, labels_test),
            "confidence": float(np.mean(np.max(probs, axis=1))),
            **(extra or {}),
        }
        result.probabilities[method] = probs

    start = time.perf_counter()
    plain = recipe.network(n_in, k, seed)
    train(plain, x_train, labels_train, loss=loss, seed=seed, **recipe.training())
    score(PLAIN_SOFTMAX, softmax(baselines.model_outputs(plain, x_test)))
    prior = prior_spec(plain, recipe.prior)
    try:
        la = post_hoc(plain, x_train, labels_train, recipe, prior, "classification")
        score(POST_HOC, la.predict_proba(x_test), _laplace_summary(la, 1.0))
    except EvidenceError as err:
        result.notes[POST_HOC] = str(err)
    result.seconds[POST_HOC] = time.perf_counter() - start

    start = time.perf_counter()
    model = recipe.network(n_in, k, seed)
    cb = trained(model, x_train, labels_train, recipe, loss, prior, seed)
    score(TRAINED_SOFTMAX, softmax(baselines.model_outputs(model, x_test)))
    score(TRAINED, cb.laplace.predict_proba(x_test), _laplace_summary(cb.laplace, 1.0))
    result.history, result.prior_groups = cb.history, _group_names(model, recipe.prior, cb)
    result.seconds[TRAINED] = time.perf_counter() - start

    start = time.perf_counter()
    ens = baselines.DeepEnsemble(
        n_in, recipe.hidden, k, size=recipe.ensemble_size, likelihood="classification",
        activation=recipe.activation, dtype=recipe.dtype, seed=seed,
    ).fit(x_train, labels_train, **recipe.training())  # fmt: skip
    score(ENSEMBLE, ens.predict_proba(x_test))
    result.seconds[ENSEMBLE] = time.perf_counter() - start

    start = time.perf_counter()
    mc = baselines.MCDropout(
        n_in, recipe.hidden, k, rate=recipe.dropout, likelihood="classification",
        activation=recipe.activation, dtype=recipe.dtype, seed=seed,
    ).fit(x_train, labels_train, **recipe.training())  # fmt: skip
    score(DROPOUT, mc.predict_proba(x_test, n_samples=recipe.mc_samples, seed=seed))
    result.seconds[DROPOUT] = time.perf_counter() - start
    return result


def table(result: Result, columns) -> list[dict]:
    """One row per method with the given metric columns (None where a method has none)."""
    methods = list(result.rows) + [m for m in result.notes if m not in result.rows]
    return [{"method": m, **{c: result.rows.get(m, {}).get(c) for c in columns}} for m in methods]


def aggregate(results: list[Result], columns) -> list[dict]:
    """Mean and standard deviation over several results (e.g. random splits) per method and
    column: rows {method, <column>: mean, <column>_sd: spread, n: how many results had it}.
    Methods that failed on a split are averaged over the others (``n`` says how many)."""
    methods = list(dict.fromkeys(m for r in results for m in r.rows))
    rows = []
    for m in methods:
        ok = [r.rows[m] for r in results if m in r.rows]
        row = {"method": m, "n": len(ok)}
        for c in columns:
            values = np.array([o[c] for o in ok if c in o and np.ndim(o[c]) == 0], float)
            row[c] = float(values.mean()) if values.size else None
            row[f"{c}_sd"] = float(values.std(ddof=1)) if values.size > 1 else None
        rows.append(row)
    return rows


def wins(results: list[Result], method: str, others, column: str = "nll") -> dict:
    """On how many results ``method``'s ``column`` is at or below each of ``others``',
    {other: (count, of how many results both have it)}."""
    out = {}
    for other in others:
        both = [r for r in results if method in r.rows and other in r.rows]
        out[other] = (sum(r.rows[method][column] <= r.rows[other][column] for r in both), len(both))
    return out


def mean_sd(rows: list[dict], columns, decimals: int = 3) -> list[dict]:
    """The rows of :func:`aggregate` for reading: one "mean ± sd" string per column."""

    def show(row, c):
        mean, sd = row.get(c), row.get(f"{c}_sd")
        if mean is None:
            return ""
        return f"{mean:.{decimals}f}" + ("" if sd is None else f" ± {sd:.{decimals}f}")

    return [{"method": r["method"], **{c: show(r, c) for c in columns}} for r in rows]


def choose_structure(
    x_train, labels_train, recipe: Recipe, candidates, *, trained=evidence_trained,
    validation: float = 0.25,
    seed: int = 0,
) -> tuple[str, list[dict]]:  # fmt: skip
    """The Laplace structure for the evidence-trained classifier, chosen on held-out part of
    the *training* data (the test set is never seen): a stratified ``validation`` fraction is
    set aside, the plain network and an evidence-trained one per candidate structure are
    trained on the rest, and the candidate with the lowest validation NLL of its Laplace
    predictive wins (``trained`` as in :func:`run_regression`).

    Returns ``(structure, rows)``: rows {method, accuracy, nll, ece, confidence} on the
    validation part, the plain softmax first, then "evidence-trained (<structure>)" per
    candidate.
    """
    from dataclasses import replace

    from sklearn.model_selection import train_test_split

    x_fit, x_val, l_fit, l_val = train_test_split(
        x_train, labels_train, test_size=validation, random_state=seed, stratify=labels_train
    )
    k = int(labels_train.max()) + 1
    loss = baselines.classification_loss()

    def row(method, probs):
        scores = metrics.classification_metrics(probs, l_val)
        return {"method": method, "accuracy": scores["accuracy"], "nll": scores["nll"],
                "ece": scores["ece"], "confidence": float(np.mean(np.max(probs, axis=1)))}  # fmt: skip

    plain = recipe.network(x_fit.shape[1], k, seed)
    train(plain, x_fit, l_fit, loss=loss, seed=seed, **recipe.training())
    rows = [row(PLAIN_SOFTMAX, softmax(baselines.model_outputs(plain, x_val)))]
    nll = {}
    for structure in candidates:
        trial = replace(recipe, structure=structure)
        cb = trained(trial.network(x_fit.shape[1], k, seed), x_fit, l_fit, trial, loss,
                     prior_spec(plain, recipe.prior), seed)  # fmt: skip
        rows.append(row(f"{TRAINED} ({structure})", cb.laplace.predict_proba(x_val)))
        nll[structure] = rows[-1]["nll"]
    return min(nll, key=nll.get), rows
