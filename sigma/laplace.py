"""The Laplace approximation around trained weights: error bars σ for every output.

    A = D_α + β C        C = Gauss–Newton G or exact Hessian H of E_D (docs/math.md)
    σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x),   g_k(x) = ∂f_k(x)/∂w at the trained weights

D_α = α I for one prior precision, or α_g on each group of weights (``prior=``).

The facade of the README's API over the modules that do the work: which weights
(:mod:`sigma.weights`), a structure holding C (:mod:`sigma.structures`) computed by the model's
curvature engine (:mod:`sigma.curvature`), the posterior as a value (:mod:`sigma.posterior`:
structure, prior, α, β, data summary), its evidence and the evidence's maximum
(:mod:`sigma.evidence.posterior`), its predictive (:mod:`sigma.predictive`), held-out tuning
(:mod:`sigma.tuning`), saving (:mod:`sigma.saving`) and serving (:mod:`sigma.serving`). A
:class:`Laplace` validates the input, fits the structure once and holds the current
:class:`~sigma.posterior.Posterior`; setting α or β, or optimising them, replaces it.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import warnings

import numpy as np
import tensorflow as tf

from sigma import (
    conformal,
    evidence,
    likelihoods,
    predictive,
    saving,
    serving,
    structures,
    tuning,
)
from sigma._checks import (
    MAX_PRECISION,
    check_finite_outputs,
    check_inputs,
    check_model,
    check_positive_int,
    check_precision,
    check_precisions,
    check_seed,
    input_scale,
    model_dtype,
)
from sigma._grappler import own_calls
from sigma.classification import MAX_SAMPLES, check_method
from sigma.curvature import engine, prepare
from sigma.curvature.accumulate import (
    ArrayBatches,
    check_dataset,
    current_strategy,
    first_samples,
    is_dataset,
    prepare_dataset,
)
from sigma.evidence import posterior as posterior_evidence
from sigma.likelihoods.heads import check_mixed_heads
from sigma.outputs import OutputLayout
from sigma.posterior import DataSummary, Posterior, no_beta
from sigma.priors import build_prior, owners_of
from sigma.progress import check as progress_check
from sigma.progress import mode as progress_mode
from sigma.structures import Structure, fit_structure
from sigma.weights import select

CURVATURES = ("ggn", "ggn_mc", "hessian")
NEGATIVE = ("keep", "clip")


def _own_calls(method):
    """Run ``method`` with sigma's graph-optimiser options for the model's graphs
    (:func:`sigma._grappler.own_calls`: no remapper on a float64 model, which only logs
    "Not handling type DT_DOUBLE" there); the model is ``self.model``, or ``__init__``'s."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        model = self.__dict__.get("model")
        if model is None:  # __init__
            model = args[0] if args else kwargs.get("model")
        shown = self.__dict__.get("progress", kwargs.get("progress"))
        with own_calls(model), progress_mode(progress_check(shown)):
            return method(self, *args, **kwargs)

    return call


class Laplace:
    """Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras model.

    Parameters
    ----------
    model : keras.Model, built and trained; f(x) ∈ R^K per sample.
    x : array (N, ...) of training inputs, matching the model's input shape; or a
        ``tf.data.Dataset`` yielding ``(x, y)`` batches (then ``y`` is None). Every streaming
        structure (all four built in) consumes the dataset batch by batch.
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

    Evidence: :meth:`log_evidence`, :meth:`optimize_evidence`, :attr:`gamma`,
    :attr:`gammas`; held-out tuning: :meth:`optimize_prior`. Classification:
    :meth:`predict_proba` (``predict`` returns the same for a classifier).
    """

    @_own_calls
    def __init__(
        self,
        model,
        x,
        y=None,
        *,
        likelihood: str = "regression",
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
    ):
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
        self.progress = progress_check(progress)
        seed = check_seed(seed)
        lik = likelihoods.get(likelihood)
        check_model(model)
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
        # one softmax head per output (and per position) for a classifier; one β per output
        # when beta is an array
        if isinstance(lik, likelihoods.Regression) and np.ndim(beta) != 0:
            lik = likelihoods.Regression(per_output=True)
        lik = likelihoods.get(lik, layout)
        check_mixed_heads(model, lik, layout)
        if not lik.has_beta and not (isinstance(beta, numbers.Real) and float(beta) == 1.0):
            raise ValueError(no_beta(lik))
        if np.ndim(beta) == 0:
            check_precision(beta, "beta", allow_zero=False)
        temperature = _check_temperature(temperature, lik)
        if is_dataset(x):
            if y is not None:
                raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
            x, n, k, e_d, e_dk, square, e_g = prepare_dataset(
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
            lik.check_outputs(model, engine(model).outputs(x), layout)
            # E_D, E_Dk = ½ Σ_n (f_nk − t_nk)² per output, E_h per precision group
            n, e_d, e_dk, square, e_g = engine(model).summary(ArrayBatches((x, y), 4096), lik)
            if not (np.isfinite(e_d) and np.isfinite(square)):
                check_finite_outputs(model, x, engine(model).outputs(x))
        summary = DataSummary(
            n_data=n,
            n_outputs=k,
            data_error=e_d,
            data_errors=e_dk if lik.has_beta else None,
            output_scale=float(np.sqrt(square / max(n * k, 1))),
            batch_size=batch_size,
            input_scale=None if is_dataset(x) else input_scale(x),
            group_errors=np.asarray(e_g, np.float64),
        )
        groups = lik.groups(k)
        self.model = model
        self.w_map = engine(model).flat_weights().astype(np.float64)
        self._state = _frozen_state(model)
        self._x = x  # the training data, for the per-output blocks of one β per output
        self.memory_estimate = structures.check_memory(
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
        post = Posterior(
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
        )
        self.posterior = post.replace(alpha=alpha, beta=_start_beta(groups, beta, temperature))
        self.evidence_result = None  # an evidence.EvidenceResult after optimize_evidence()
        self.prior_result = None  # a dict after optimize_prior()

    # -- the posterior's parts ------------------------------------------------------------------
    @property
    def structure(self) -> Structure:
        """The fitted structure holding C over the selected weights."""
        return self.posterior.structure

    @property
    def prior(self):
        """The prior groups (:class:`sigma.priors.Prior`)."""
        return self.posterior.prior

    @property
    def selection(self):
        """The weights the posterior covers (:class:`sigma.weights.Selection`)."""
        return self.posterior.selection

    @property
    def likelihood(self):
        return self.posterior.likelihood

    @property
    def curvature(self) -> str:
        return self.posterior.curvature

    @property
    def negative(self) -> str:
        return self.posterior.negative

    @property
    def output_layout(self) -> OutputLayout:
        """The structure of the model's outputs (flat arrays are (N, K), all concatenated)."""
        return self.posterior.output_layout

    @property
    def n_params(self) -> int:
        """P, the number of weights the posterior covers."""
        return self.posterior.n_params

    @property
    def n_data(self) -> int:
        return self.posterior.summary.n_data

    @property
    def n_outputs(self) -> int:
        return self.posterior.summary.n_outputs

    @property
    def batch_size(self) -> int | None:
        return self.posterior.summary.batch_size

    @property
    def data_error(self) -> float:
        """E_D at the trained weights (the cross-entropy for classification)."""
        return self.posterior.summary.data_error

    @property
    def data_errors(self) -> np.ndarray | None:
        """E_D per output (K,), regression; None for classification."""
        return self.posterior.summary.data_errors

    @property
    def weight_errors(self) -> np.ndarray:
        """E_Wg = ½ ‖w_g‖² per prior group (G,)."""
        return self.posterior.weight_errors

    @property
    def weight_error(self) -> float:
        """E_W = ½ ‖w‖² over the posterior's weights (Σ of :attr:`weight_errors`)."""
        return self.posterior.weight_error

    @property
    def prior_groups(self) -> tuple[str, ...]:
        """The names of the prior groups, in the order of :attr:`alpha` (one: ("all",))."""
        return self.posterior.prior.names

    # -- precisions -----------------------------------------------------------------------------
    @property
    def alpha(self) -> float | np.ndarray:
        """Prior precision: a float for one group, else an array (G,) over :attr:`prior_groups`."""
        post = self.posterior
        return float(post.alpha[0]) if post.prior.scalar else post.alpha.copy()

    @alpha.setter
    def alpha(self, value):
        self.posterior = self.posterior.replace(alpha=value)

    @property
    def temperature(self) -> float:
        """The likelihood's temperature T (classification: p(y | f)^(1/T); 1 for regression).
        Settable (classification): the curvature is not refitted, A = D_α + C/T."""
        post = self.posterior
        tempered = np.array(post.groups.kinds) == "tempered"
        return 1.0 / float(post.beta[tempered][0]) if tempered.any() else 1.0

    @temperature.setter
    def temperature(self, value):
        value = _check_temperature(value, self.likelihood)
        post = self.posterior
        tempered = np.array(post.groups.kinds) == "tempered"
        if tempered.any():
            self.posterior = post.replace(beta=np.where(tempered, 1.0 / value, post.beta))

    @property
    def beta(self) -> float | np.ndarray:
        """Noise precision β: a float, or an array with one β per precision group (one per
        output with one β per output; one per head, named by :attr:`beta_groups`, with a
        likelihood per head — a classifier head's reads 1/T)."""
        beta = self.posterior.beta
        return float(beta[0]) if beta.size == 1 else beta.copy()

    @beta.setter
    def beta(self, value):
        if not self.likelihood.has_beta:
            raise ValueError(no_beta(self.likelihood))
        post = self.posterior
        if np.ndim(value) != 0 and post.n_groups == 1 and self.n_outputs > 1:
            post = self._regrouped(per_output=True)  # one β per output asked for
        self.posterior = post.replace(beta=value)

    @property
    def beta_groups(self) -> tuple[str, ...]:
        """The names of the precision groups, in the order of :attr:`beta` when it is an
        array."""
        return self.posterior.groups.names

    @property
    def beta_gammas(self) -> np.ndarray:
        """γ_h = β_h Tr(A⁻¹ C_h) per precision group: how many parameters each group's data
        determine (Σ_h γ_h = γ)."""
        return posterior_evidence.group_gammas(self.posterior)

    def _regrouped(self, *, per_output: bool) -> Posterior:
        """The posterior with one β per output (its structure refitted with each output's
        curvature apart, from the training data) or one β for all (the groups' curvatures
        summed, nothing refitted)."""
        post = self.posterior
        lik = post.likelihood
        if not isinstance(lik, likelihoods.Regression):
            raise ValueError(
                "one beta per output is for likelihood='regression' (with a likelihood per "
                "head, each regression head has its own beta already)"
            )
        if not per_output:
            merged, _ = post.structure.combine(np.ones(post.n_groups))
            regression = likelihoods.Regression()
            return dataclasses.replace(
                post, structure=merged, likelihood=regression,
                groups=regression.groups(self.n_outputs),
                beta=np.array([float(np.mean(post.beta))]),
                summary=dataclasses.replace(post.summary, group_errors=None),
            )  # fmt: skip
        if post.curvature != "ggn":
            raise ValueError(
                "one beta per output needs curvature='ggn' (the exact Hessian does not split "
                f"into per-output Gauss–Newton blocks), got curvature={post.curvature!r}"
            )
        self.check_weights_unchanged()
        if self._x is None:
            raise ValueError(
                "one beta per output needs the training data, which a Laplace loaded from "
                "a file does not have: fit a new Laplace for it"
            )
        if is_dataset(self._x):
            raise ValueError("one beta per output needs the training data as arrays, not a dataset")
        per = likelihoods.Regression(per_output=True).bind(post.output_layout)
        structure = type(post.structure).from_options(post.structure.options()).on(post.selection)
        fitted = fit_structure(
            structure, self.model, self._x, None, likelihood=per, curvature="ggn",
            batch_size=post.summary.batch_size,
        )  # fmt: skip
        groups = per.groups(self.n_outputs)
        return dataclasses.replace(
            post, structure=fitted, likelihood=per, groups=groups,
            beta=np.broadcast_to(post.beta[:1], (groups.n_groups,)).copy(),
            summary=dataclasses.replace(post.summary, group_errors=post.summary.data_errors),
        )  # fmt: skip

    # -- prediction -----------------------------------------------------------------------------
    def check_weights_unchanged(self) -> None:
        """ValueError when the model's weights (or its non-trainable state) changed since the
        fit: the posterior belongs to the weights it was fitted at."""
        if not np.array_equal(engine(self.model).flat_weights(), self.w_map) or any(
            not np.array_equal(a, b)
            for a, b in zip(_frozen_state(self.model), self._state, strict=True)
        ):
            raise ValueError(
                "model weights (or its non-trainable state, e.g. BatchNorm statistics) changed "
                "since this Laplace was fitted: build a new Laplace"
            )

    def _inputs(self, x, name: str = "x"):
        self.check_weights_unchanged()
        return check_inputs(self.model, x, name)

    @_own_calls
    def predict(
        self,
        x,
        *,
        noise: bool = True,
        batch_size: int | None = None,
        method: str = "probit",
        n_samples: int = 1000,
        seed: int = 0,
        split: bool = False,
    ):
        """Regression: predictive mean and standard deviation at inputs x (N, ...; a list or
        dict of arrays for a model with several inputs).

        Returns ``(mean, std)``, both (N, K) float64 — for a model with several outputs, a
        list (or a dict by output name) of (N, K_i) arrays each. ``std² = 1/β + gᵀA⁻¹g``
        (noise included; 1/β_k per output when β is an array); with ``noise=False`` only
        ``gᵀA⁻¹g``.

        ``split=True`` returns ``(mean, aleatoric std, epistemic std)``: the noise (1/√β)
        and the weight uncertainty √(gᵀA⁻¹g) apart.

        Heteroscedastic (``likelihood="heteroscedastic"``): mean (N, K) and std (N, K) with
        std² = σ²_noise(x) + the weight uncertainty of the mean (:mod:`sigma.likelihoods.heteroscedastic`);
        ``split=True`` gives the two apart.

        Classification: the class probabilities (N, K) of :meth:`predict_proba` (``method``,
        ``n_samples``, ``seed`` are passed on; ``noise`` and ``split`` do not apply).

        A likelihood per head: a dict by output name, ``(mean, std)`` for a regression head
        (its own 1/β in the noise), the class probabilities for a classification head.
        """
        for flag, flag_name in ((noise, "noise"), (split, "split")):
            _check_flag(flag, flag_name)
        return predictive.predict(
            self.posterior, self.model, self._inputs(x), batch_size=batch_size, noise=noise,
            split=split, method=check_method(method), n_samples=_check_samples(n_samples),
            seed=check_seed(seed),
        )  # fmt: skip

    @_own_calls
    def predictive_covariance(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Σ(x) = β⁻¹ I + J(x) A⁻¹ J(x)ᵀ for each input: (N, K, K), float64 (all outputs
        flattened and concatenated, see :attr:`output_layout`).

        Classification: the logit covariance J(x) A⁻¹ J(x)ᵀ (there is no noise term).
        """
        return predictive.covariance(
            self.posterior, self.model, self._inputs(x), noise=noise, batch_size=batch_size
        )

    @_own_calls
    def predict_proba(
        self,
        x,
        *,
        method: str = "probit",
        n_samples: int = 1000,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Predictive class probabilities E[softmax(f)] at inputs x: (N, K), rows sum to 1 (a
        list or dict of (N, K_i), one softmax head per output, for several outputs). A model
        with one logit per output is a binary classifier: its column is P(y = 1) = σ(f),
        probit σ(μ / sqrt(1 + π/8 · Σ)), the way Keras' own sigmoid output reads.

        The logits are f ~ N(f(x; w*), J A⁻¹ Jᵀ) (K×K covariance per input). ``method``
        (:mod:`sigma.classification`): "probit" (default), softmax(μ / sqrt(1 + π/8 · diag Σ));
        "mc", the mean of softmax over ``n_samples`` draws of the logits with the full
        covariance, from a generator seeded by ``seed``; "mean_field" (Lu et al. 2020, the
        variances of the logit differences, Σ_kk + Σ_jj − 2Σ_kj) and "mean_field_diag"
        (Σ_kk + Σ_jj); "bridge", the mean of the Laplace bridge's Dirichlet (Hobbhahn et al.
        2022). Classification only (ValueError for regression).
        """
        self.likelihood.probabilities(None)  # a classifier's, or refused
        prediction = self.predict(
            x, method=method, n_samples=n_samples, seed=seed, batch_size=batch_size
        )
        return self.likelihood.probabilities(prediction)

    # -- evidence -------------------------------------------------------------------------------
    @property
    def gammas(self) -> np.ndarray:
        """γ_g = P_g − α_g Tr_g(A⁻¹) per prior group, (G,): how many of each group's weights
        the data determine."""
        return posterior_evidence.gammas(self.posterior)

    @property
    def gamma(self) -> float:
        """γ = Σ_g γ_g (= Σ_i λ_i/(λ_i + α), λ_i the eigenvalues of β C, for one α): the
        effective number of well-determined parameters at the current α, β (0 ≤ γ ≤ P)."""
        return posterior_evidence.gamma(self.posterior)

    def log_evidence(self, alpha=None, beta=None):
        """ln p(D | α, β) in nats, constants included (docs/math.md); defaults: the current α, β.

        With one prior group, ``alpha`` and ``beta`` may be arrays (broadcast against each
        other, e.g. a meshgrid): the result then has their broadcast shape, for drawing the
        evidence surface. With several groups ``alpha`` is one α per group (G,) or a number
        for all. A given ``beta`` is one noise precision shared by all outputs; with one β_k
        per output set, ``log_evidence()`` (beta=None) uses them. Classification:
        ln p(D | α), no β.
        """
        self.check_weights_unchanged()
        return posterior_evidence.log_evidence(self.posterior, alpha, beta)

    def optimize_evidence(
        self,
        *,
        fix_alpha: bool = False,
        fix_beta: bool = False,
        per_output: bool | None = None,
        tol: float = 1e-8,
        max_iter: int = 1000,
    ) -> Laplace:
        """Set α (every α_g) and β to the maximum of the evidence at the trained weights.

        MacKay's fixed point, α_g ← γ_g/(2E_Wg), β ← (NK − γ)/(2E_D), from the current α, β
        until the relative change is below ``tol``; where it overshoots (γ ≥ NK) or oscillates,
        a direct maximisation in (ln α_g, ln β) (:func:`sigma.evidence.maximize`).
        ``fix_alpha`` / ``fix_beta`` hold one precision at its current value. ``per_output``:
        one β_k per output (β_k ← (N − γ_k)/(2E_Dk)); default: keep the current form of β.
        Classification re-estimates α only (β is fixed at 1). Returns self.

        Afterwards ``alpha``, ``beta``, ``gamma`` and ``log_evidence()`` refer to the optimum and
        ``evidence_result`` records how it was reached. Raises
        :class:`sigma.evidence.EvidenceBoundaryError` when the evidence has no interior maximum
        (the network interpolates its training data, so β → ∞; or an α_g → 0), saying what
        to do; :class:`sigma.evidence.EvidenceError` (with the last α, β) when the iterations
        run out; ValueError for a curvature with negative eigenvalues (see ``negative``).
        """
        self.check_weights_unchanged()
        for flag, name in ((fix_alpha, "fix_alpha"), (fix_beta, "fix_beta")):
            _check_flag(flag, name)
        if per_output is not None:
            _check_flag(per_output, "per_output", "True, False or None")
        max_iter = check_positive_int(max_iter, "max_iter")
        tol = check_precision(tol, "tol", allow_zero=False)
        post = self.posterior
        if not self.likelihood.has_beta and per_output:
            raise ValueError(no_beta(self.likelihood))
        per_output_now = isinstance(post.likelihood, likelihoods.Regression) and (
            post.likelihood.per_output
        )
        if per_output is not None and per_output != per_output_now:
            post = self._regrouped(per_output=per_output)
        self.posterior, self.evidence_result = posterior_evidence.optimize(
            post,
            fix_alpha=fix_alpha,
            fix_beta=fix_beta,
            tol=tol,
            max_iter=max_iter,
            eps=float(np.finfo(model_dtype(self.model)).eps),
        )
        return self

    # -- conformal calibration ----------------------------------------------------------------
    @_own_calls
    def conformalize(self, x_cal, y_cal, *, level=None, randomised: bool = True, seed: int = 0):
        """A calibrated predictor from held-out calibration data (x_cal (n, ...), y_cal (n, K);
        labels for a classifier) by split conformal prediction (:mod:`sigma.conformal`):
        regression → :class:`~sigma.conformal.ConformalRegressor` (``interval(x, level)``,
        coverage ≥ level in finite samples); classification →
        :class:`~sigma.conformal.ConformalClassifier` (adaptive prediction sets,
        ``predict_set(x, level)``). Needs n ≥ ⌈1/ε⌉ − 1 for level 1 − ε (checked now when
        ``level`` is given, else when an interval is asked for)."""
        return conformal.calibrate(
            self, x_cal, y_cal, level=level, randomised=randomised, seed=seed
        )

    # -- held-out tuning ------------------------------------------------------------------------
    @_own_calls
    def optimize_prior(
        self,
        x_val,
        y_val,
        *,
        metric: str = "nll",
        beta: bool = True,
        span: float = 1e4,
        tol: float = 1e-3,
        max_iter: int = 100,
    ) -> Laplace:
        """Set α (and β, for regression) to the best value of a held-out metric; returns self.

        For when the evidence is not trusted: a bounded search over a common factor of the
        prior precisions (α_g ratios kept) — and of β for regression with ``beta=True`` —
        within ``span``× of the current values either way, minimising ``metric`` on
        (x_val, y_val): "nll" (Gaussian NLL per value for regression; NLL per sample for
        classification), "brier" or "ece" (classification). Heteroscedastic: α only, on the
        Gaussian NLL of the predictive (noise head + weight uncertainty). A bounded 1-D search
        (Brent's method) or 2-D search (Nelder–Mead in log coordinates), no fixed grid
        (:mod:`sigma.tuning`). ``prior_result`` records the values found, how many
        predictions it took and ``at_bound``: {"alpha": "upper" | "lower", "beta": ...} for a
        precision whose best value is at the edge of the search (``span``× its start; empty
        when none is), which a RuntimeWarning also reports — the best value may lie beyond.
        """
        self.check_weights_unchanged()
        self.posterior, self.prior_result = tuning.optimize_prior(
            self.posterior, self.model, x_val, y_val, metric=metric, beta=beta, span=span,
            tol=tol, max_iter=max_iter,
        )  # fmt: skip
        return self

    # -- serving ----------------------------------------------------------------------------------
    def to_keras(self, *, name: str | None = None):
        """A ``keras.Model`` from the model's inputs to this posterior's predictive — ``{"mean",
        "std"}`` (N, K) for regression, class probabilities (N, K) for classification — with
        the variance computed inside the graph at the current α, β (:mod:`sigma.serving`).
        ``.save("m.keras")`` reloads with ``keras.saving.load_model`` where sigma is installed;
        ``.export("dir")`` writes a SavedModel whose ``serve`` signature needs no sigma."""
        self.check_weights_unchanged()
        return serving.to_keras(self.model, self.posterior, name=name)

    # -- saving -----------------------------------------------------------------------------------
    def save(self, path):
        """Write this Laplace to ``path`` (a ``.npz`` archive in the versioned format of
        :mod:`sigma.saving`: the structure's state, α, β, the prior groups, the data summary
        the evidence needs and the model's fingerprint — not the training data), atomically.
        Returns the path."""
        self.check_weights_unchanged()
        return saving.save(self.posterior, self.model, self.w_map, path)

    @classmethod
    def load(cls, path, model) -> Laplace:
        """The Laplace saved in ``path``, for ``model`` — which must be the model it was fitted
        on: same architecture, same weights, same non-trainable state (ValueError otherwise,
        naming the difference). Nothing is refitted; predictions, the evidence and its
        optimisation work as before saving. (One β per output needs the saved blocks; a file
        from another format version is refused.)"""
        check_model(model)
        post, w_map = saving.load(path, model)
        la = cls.__new__(cls)
        la.model, la.w_map, la._state = model, w_map, _frozen_state(model)
        la._x, la.memory_estimate, la.progress = None, None, None
        la.posterior = post
        la.evidence_result = la.prior_result = None
        return la

    def __repr__(self):
        post = self.posterior
        alpha = (
            f"{post.alpha[0]:.4g}"
            if post.prior.scalar
            else np.array2string(post.alpha, precision=4, threshold=6)
        )
        return (
            f"Laplace(structure={self.structure.name!r}, weights={self.selection.kind!r}, "
            f"curvature={self.curvature!r}, prior={post.prior.kind!r}, P={self.n_params}, "
            f"N={self.n_data}, K={self.n_outputs}, alpha={alpha}, "
            f"beta={np.array2string(np.asarray(post.beta), precision=4)})"
        )


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


def _tempered(likelihood) -> bool:
    """Whether some of the likelihood's outputs are a classifier's (its temperature applies)."""
    parts = getattr(likelihood, "parts", {None: likelihood})
    return any(isinstance(p, likelihoods.Classification) for p in parts.values())


def _check_temperature(value, likelihood) -> float:
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
    if not _tempered(likelihood) and t != 1.0:
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
        stacklevel=4,
    )


def _check_samples(n_samples) -> int:
    n_samples = check_positive_int(n_samples, "n_samples")
    if n_samples > MAX_SAMPLES:
        raise ValueError(f"n_samples must be at most {MAX_SAMPLES:.0e}, got {n_samples}")
    return n_samples


def _check_flag(value, name: str, allowed: str = "True or False") -> None:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _frozen_state(model) -> list[np.ndarray]:
    """Copies of the non-trainable state the curvature depends on (normalisation statistics;
    not the random-seed state, which inference does not use)."""
    return [
        np.array(v.numpy())
        for v in model.non_trainable_variables
        if "seed_generator" not in getattr(v, "path", v.name)
    ]
