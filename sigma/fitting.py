"""Fitting a Laplace posterior: from a trained model and its training data to a
:class:`~sigma.posterior.Posterior` (docs/math.md).

    A = D_α + Σ_h β_h C_h        C_h: the GGN (or Hessian) of precision group h's data term

:func:`fitted` validates the input, binds the likelihood to the model's outputs, summarises the
data the evidence needs, checks the memory the structure will take, accumulates the curvature
once in the chosen structure (:mod:`sigma.structures`) over the chosen weights
(:mod:`sigma.weights`), builds the prior's groups (:mod:`sigma.priors`) and returns the
posterior at the given precisions. Everything else — predictions, the evidence and its
maximum, held-out tuning, saving, serving — is a function of that value.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import numpy as np
import tensorflow as tf

import sigma
from sigma import evidence, keras_compat, likelihoods, structures
from sigma._checks import (
    MAX_PRECISION,
    check_finite_outputs,
    check_inputs,
    check_model,
    check_precision,
    check_precisions,
    check_seed,
    input_scale,
    take,
)
from sigma._grappler import own_calls
from sigma.curvature import engine, prepare
from sigma.curvature.accumulate import (
    ArrayBatches,
    check_dataset,
    current_strategy,
    first_samples,
    is_dataset,
    prepare_dataset,
)
from sigma.likelihoods.heads import check_mixed_heads
from sigma.priors import build_prior, owners_of
from sigma.progress import check as progress_check
from sigma.progress import mode as progress_mode
from sigma.structures import Structure, fit_structure
from sigma.summary import DataSummary, frozen_state, moments, target_moments
from sigma.weights import select

CURVATURES = ("ggn", "ggn_mc", "hessian")
NEGATIVE = ("keep", "clip")


def fitted(
    model,
    x,
    y=None,
    *,
    likelihood="regression",
    temperature: float = 1.0,
    curvature: str = "ggn",
    structure: str | Structure = "full",
    weights="all",
    prior="scalar",
    alpha=1.0,
    beta=1.0,
    batch_size: int | None = None,
    negative: str = "keep",
    structure_options: dict | None = None,
    strategy=None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    seed: int = 0,
) -> tuple[dict, object, object]:
    """The fields of the Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras
    model, its α and its starting β: :func:`sigma.fit` (:func:`sigma.posterior.fit`) makes
    the :class:`~sigma.posterior.Posterior` of them.

    Parameters
    ----------
    model : keras.Model, built and trained; f(x) ∈ R^K per sample.
    x : array (N, ...) of training inputs, matching the model's input shape; or a
        ``tf.data.Dataset`` yielding ``(x, y)`` batches (then ``y`` is None). Every
        structure consumes the dataset batch by batch.
    y : array (N, K) of training targets.
    curvature : "ggn" (Gauss–Newton, always PSD), "ggn_mc" (its Monte-Carlo estimate: one
        sampled label per input, one backward pass per batch whatever K — for many outputs;
        :mod:`sigma.likelihoods.montecarlo`) or "hessian" (exact, nested tapes).
    weights : which weights the posterior covers (:mod:`sigma.weights`): "all" (default),
        "last_layer" (the last Dense layer's), a list of the model's trainable variables (e.g.
        Keras' LoRA adapters), or a boolean mask per trainable variable; the others are held
        at their trained values and P is the number selected.
    structure : how C is stored: a registered name (:mod:`sigma.structures`; "full": P×P,
        "diag": the exact GGN diagonal, "kfac": Kronecker factors per Dense/Conv layer,
        "lowrank": top-k eigenpairs by block Lanczos (+ the exact diagonal of the rest); see
        README "Structures and layers") or an unfitted :class:`~sigma.structures.Structure`.
        "last_layer" stands for ``weights="last_layer", structure="full"``.
    structure_options : keyword arguments for the structure's constructor, e.g.
        ``{"rank": 50}`` for "lowrank".
    prior : the groups of weights that share a prior precision (:mod:`sigma.priors`):
        "scalar" (one α), "layer" (one α per layer), "variable" (one per trainable variable:
        kernel and bias apart), or an integer array (P,) of group ids 0 … G−1 (one group per
        weight: automatic relevance determination).
    alpha : prior precision α ≥ 0 (w ~ N(0, α⁻¹ I)); with several groups a number (all groups)
        or an array (G,) in the order of :attr:`prior_groups`.
    beta : noise precision β > 0 (t ~ N(f, β⁻¹ I)), or a (K,) array with one β_k per output
        (A = α I + Σ_k β_k C_k, ``curvature="ggn"``, ``structure="full"``, one α). Fixed at 1
        for ``likelihood="classification"``.
    likelihood : "regression" (squared error, y (N, K)) or "classification" (softmax
        cross-entropy on linear logits; y one-hot (N, K) or integer labels (N,); a model with
        one logit is a binary classifier, Bernoulli with a sigmoid link, y labels 0/1) or
        "heteroscedastic" (a Gaussian NLL with the model's own noise: 2K outputs [μ | ln σ²],
        y (N, K); or :class:`sigma.likelihoods.Heteroscedastic` for another parameterisation;
        no β; :mod:`sigma.likelihoods.heteroscedastic`). A model compiled with
        :class:`sigma.losses.GaussianNLL` is read in that loss's parameterisation; a
        ``Heteroscedastic`` of another one is refused.
    temperature : T > 0, classification only: the tempered likelihood p(y | f)^(1/T), exact
        in the curvature (C/T, i.e. A = D_α + C/T) and in the evidence (cross-entropy/T);
        :attr:`beta` then reads 1/T. T < 1 sharpens the likelihood (less weight
        uncertainty), T > 1 flattens it. Default 1 (the plain likelihood).
    negative : what to do with negative eigenvalues of the exact Hessian: "keep" them (A must
        still be positive definite; the evidence refuses them) or "clip" them to zero (C → its
        positive semi-definite part, for predictions and evidence alike, with a warning saying
        how many and how large).
    batch_size : samples per batch when accumulating the curvature (default: automatic; a
        dataset is re-batched to it when given).
    strategy : a ``tf.distribute.Strategy`` to accumulate the curvature under (per-replica sums
        reduced); default: the strategy whose ``scope()`` is active, if any.
    max_memory : the memory the structure may use, bytes or a string like "2GB" (default: 80%
        of the memory available); a structure estimated to need more is refused before any
        large allocation, with :class:`sigma.memory.InsufficientMemoryError` naming structures
        that fit.
    progress : bars over the batches of the fit and of every prediction: None (default: a bar
        once the work has taken a few seconds, so quick calls print nothing), True (always),
        False (never).
    seed : the seed of ``curvature="ggn_mc"``'s draws (the same seed, the same curvature).

    Raises ValueError for bad input and when A is not positive definite.

    :class:`sigma.Laplace` is the same fit behind the README's interface.
    """

    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    structure, weights = structures.resolve(structure, weights)
    if isinstance(structure, Structure):
        if structure_options is not None and not isinstance(structure_options, dict):
            raise ValueError(
                "structure_options must be a dict of keyword arguments, got "
                f"{type(structure_options).__name__}"
            )
        if structure_options:
            raise ValueError("structure_options apply to a structure name, not an instance")
    else:
        structure = structures.get(structure).from_options(structure_options)
    if curvature not in structure.curvatures:
        others = sorted(n for n, c in Structure.registry.items() if curvature in c.curvatures)
        supported = " or ".join(f"curvature={c!r}" for c in structure.curvatures)
        raise ValueError(
            f"structure={structure.name!r} supports {supported} only, got "
            f"curvature={curvature!r}: use {supported}, or structure={others} for the "
            f"{curvature} of a small model"
        )
    if not isinstance(negative, str) or negative not in NEGATIVE:
        raise ValueError(f"negative must be one of {NEGATIVE}, got {negative!r}")
    check_precisions(alpha, "alpha", allow_zero=True)
    progress = progress_check(progress)
    seed = check_seed(seed)
    lik = likelihoods.get(likelihood)
    check_model(model)
    with own_calls(model):  # sigma's graph options for a float64 model, for this call only
        lik = lik.for_model(model, likelihood)  # e.g. the form a compiled loss trained
        selection = select(model, weights)
        structure = structure.on(selection)
        if not is_dataset(x):
            x = check_inputs(model, x)
            layout = engine(model).output_layout(x)
        else:
            check_dataset(x, model)
            first = check_inputs(model, first_samples(x, 1), "x (dataset batch 0)")
            layout = engine(model).output_layout(first)
        check_connected(model, selection, first if is_dataset(x) else take(x, slice(0, 8)))
        # one softmax head per output (and per position) for a classifier; one β per output
        # when beta is an array
        lik = likelihoods.get(lik, layout).with_beta(beta)
        check_mixed_heads(model, lik, layout)
        if not (isinstance(beta, numbers.Real) and float(beta) == 1.0):
            lik.require_beta()
        if np.ndim(beta) == 0:
            check_precision(beta, "beta", allow_zero=False)
        temperature = check_temperature(temperature, lik)
        if is_dataset(x):
            if y is not None:
                raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
            x, n, k, e_d, e_dk, square, e_g, sums = prepare_dataset(
                model, x, lik, batch_size=batch_size, layout=layout
            )
            first = tf.nest.map_structure(lambda t: t.numpy(), next(iter(x))[0])
            lik.check_outputs(model, engine(model).outputs(first), layout)
        else:
            if y is None:
                raise ValueError(
                    "y is required when x is an array: pass the training targets, shape (N, K) "
                    "(or integer labels (N,) for classification), or pass x as a "
                    "tf.data.Dataset of (x, y) batches"
                )
            x, y, k = prepare(model, x, y, lik)
            sums = moments(lik.distinct_targets(y))
            rows = lik.check_rows
            shown = x if rows is None else tf.nest.map_structure(lambda a: a[:rows], x)
            lik.check_outputs(model, engine(model).outputs(shown), layout)
            # E_D, E_Dk = ½ Σ_n (f_nk − t_nk)² per output, E_h per precision group
            n, e_d, e_dk, square, e_g = engine(model).summary(ArrayBatches((x, y), 4096), lik)
            if not (np.isfinite(e_d) and np.isfinite(square)):
                check_finite_outputs(model, x, engine(model).outputs(x))
        summary = DataSummary(
            n_data=n,
            n_outputs=k,
            data_error=e_d,
            data_errors=lik.output_errors(e_dk),
            output_scale=float(np.sqrt(square / max(n * k, 1))),
            batch_size=batch_size,
            input_scale=None if is_dataset(x) else input_scale(x),
            group_errors=np.asarray(e_g, np.float64),
            target_moments=target_moments(sums),
        )
        groups = lik.groups(k)
        memory_estimate = structures.check_memory(
            structure,
            model,
            n_data=n,
            n_outputs=k,
            batch_size=batch_size,
            curvature=curvature,
            max_memory=max_memory,
        )  # bytes; refuses (InsufficientMemoryError) before any large allocation
        fit_likelihood = lik
        if curvature == "ggn_mc":  # one sampled label per input: E[Ĝ] = G
            if current_strategy(strategy) is not None:
                raise ValueError(
                    "curvature='ggn_mc' draws its labels on one device: use curvature='ggn' "
                    "under a tf.distribute strategy"
                )
            fit_likelihood = likelihoods.MonteCarlo(lik, engine(model, selection).generator(seed))
        with progress_mode(progress):
            fitted = fit_structure(
                structure,
                model,
                x,
                y,
                likelihood=fit_likelihood,
                curvature="ggn" if curvature == "ggn_mc" else curvature,
                batch_size=batch_size,
                strategy=current_strategy(strategy),
                progress=progress,
            )
        prior = build_prior(
            prior, selection.variables(model), owners_of(model), sizes=selection.sizes
        )
        fitted.check_prior(prior)
        w_post = np.asarray(fitted.posterior_weights(model), np.float64)
        if negative == "clip":
            _clip_negative(fitted, curvature)
        fields = dict(
            structure=fitted,
            prior=prior,
            selection=selection,
            likelihood=lik,
            curvature=curvature,
            negative=negative,
            output_layout=layout,
            summary=summary,
            weight_errors=prior.weight_errors(w_post),  # E_Wg per group
            alpha=np.zeros(prior.n_groups),
            groups=groups,
            model=model,
            w_map=engine(model).flat_weights().astype(np.float64),
            state=frozen_state(model),
            data=x,  # the training data, for refitting with one β per output
            targets=None if is_dataset(x) else y,  # and for check_confidence
            memory_estimate=memory_estimate,
            progress=progress,
        )
        return fields, alpha, _start_beta(groups, beta, temperature)


def regroup(post: sigma.Posterior, *, per_output: bool) -> sigma.Posterior:
    """The posterior with one β per output (its structure refitted with each output's
    curvature apart, from the training data) or one β for all (the groups' curvatures
    summed, nothing refitted)."""
    regression = post.likelihood.regrouped(per_output)
    if not per_output:
        merged, _ = post.structure.combine(np.ones(post.n_groups))
        return dataclasses.replace(
            post, structure=merged, likelihood=regression,
            groups=regression.groups(post.summary.n_outputs),
            beta=np.array([float(np.mean(post.beta))]),
            summary=dataclasses.replace(post.summary, group_errors=None),
            evidence_result=None, prior_result=None,  # records of other precision groups
        )  # fmt: skip
    if post.curvature != "ggn":
        raise ValueError(
            "one beta per output needs curvature='ggn' (the exact Hessian does not split "
            f"into per-output Gauss–Newton blocks), got curvature={post.curvature!r}"
        )
    post.check_weights_unchanged()
    if post.data is None:
        raise ValueError(
            "one beta per output needs the training data, which a Laplace loaded from "
            "a file does not have: fit a new Laplace for it"
        )
    if is_dataset(post.data):
        raise ValueError("one beta per output needs the training data as arrays, not a dataset")
    per = post.likelihood.regrouped(True).bind(post.output_layout)
    structure = type(post.structure).from_options(post.structure.options()).on(post.selection)
    fitted = fit_structure(
        structure, post.model, post.data, None, likelihood=per, curvature="ggn",
        batch_size=post.summary.batch_size,
    )  # fmt: skip
    groups = per.groups(post.summary.n_outputs)
    return dataclasses.replace(
        post, structure=fitted, likelihood=per, groups=groups,
        beta=np.broadcast_to(post.beta[:1], (groups.n_groups,)).copy(),
        summary=dataclasses.replace(post.summary, group_errors=post.summary.data_errors),
        evidence_result=None, prior_result=None,  # records of other precision groups
    )  # fmt: skip


def _start_beta(groups, beta, temperature) -> np.ndarray:
    """β of every precision group (G,): a noise group's from ``beta`` (a number, or one per
    group), a tempered group's 1/T (the tempered likelihood's curvature is C/T), else 1."""
    kinds = np.array(groups.kinds)
    if np.ndim(beta) != 0 and np.shape(beta) != (groups.n_groups,):
        raise ValueError(
            f"beta as an array must hold one positive precision per output, shape "
            f"({groups.n_groups},), got {np.shape(beta)}"
        )
    noise = np.broadcast_to(np.asarray(beta, np.float64), (groups.n_groups,))
    return np.where(kinds == "noise", noise, np.where(kinds == "tempered", 1.0 / temperature, 1.0))


def check_temperature(value, likelihood) -> float:
    """A finite T > 0; only 1 unless the likelihood is a classifier's (for regression β itself
    is the likelihood's scale; a heteroscedastic model's noise is its own output)."""
    try:
        t = float(value) if isinstance(value, numbers.Real) else np.nan
    except OverflowError:  # an integer beyond float64
        t = np.inf
    if isinstance(value, bool) or not (np.isfinite(t) and t > 0 and np.isfinite(1.0 / t)):
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}")
    if t < 1.0 / MAX_PRECISION:  # β = 1/T is a precision: bounded like beta and alpha
        raise ValueError(
            f"temperature must be at least {1.0 / MAX_PRECISION:g} (the likelihood's precision "
            f"1/temperature overflows float64 beyond {MAX_PRECISION:g}), got {value!r}"
        )
    if not likelihood.tempered and t != 1.0:
        raise ValueError(
            "temperature applies to likelihood='classification' (for regression the noise "
            "precision beta scales the likelihood, beta/T tempers it; a heteroscedastic "
            f"model's noise is its own output), got temperature={value!r} with "
            f"likelihood={likelihood.name!r}"
        )
    return t


def _clip_negative(structure, curvature) -> None:
    """negative="clip": C → its positive semi-definite part, with a warning saying how much."""
    count, worst = evidence.negative_eigenvalues(structure.eigenvalues)
    if not count:
        return
    if not structure.can_clip:
        raise ValueError(
            f"structure {structure.name!r} cannot clip negative eigenvalues; use "
            "negative='keep' or curvature='ggn'"
        )
    structure.clip_negative()
    warnings.warn(
        f"the {curvature} curvature has {count} negative eigenvalue(s) out of "
        f"{structure.n_params} (most negative {worst:.4g}; largest "
        f"{structure.eigenvalues.max():.4g}): clipped to zero (negative='clip'), so "
        "A = alpha*I + beta*C+ with C+ the positive part, for predictions and the evidence "
        "alike",
        RuntimeWarning,
        stacklevel=keras_compat.user_stacklevel(),
    )


def check_connected(model, selection, x) -> None:
    """ValueError naming the layers of selected weights that no output has a gradient for
    (TensorFlow has no gradient for an op of their call, or their output is not used): their
    curvature would be read as zero, and σ would silently leave them out."""
    columns = selection.columns() if selection is not None else None
    missing = [i for i in engine(model).disconnected(x) if columns is None or i in columns]
    if not missing:
        return
    owners = owners_of(model)
    variables = model.trainable_variables
    names = sorted({owners.get(id(variables[i]), variables[i].path) for i in missing})
    raise ValueError(
        f"model: no output has a gradient with respect to the weights of layer(s) "
        f"{', '.join(repr(n) for n in names)} (TensorFlow has no gradient for an operation of "
        "their call, e.g. tf.numpy_function or a cast to an integer, or their output is not "
        "used), so their curvature cannot be computed: leave them out of the posterior with "
        "weights=[...] (the variables σ should cover), or make their call differentiable"
    )
