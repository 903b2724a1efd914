"""The Laplace approximation around trained weights: error bars σ for every output.

    A = D_α + Σ_h β_h C_h     C_h = Gauss–Newton G or exact Hessian H of E_D (docs/math.md)
    σ_k²(x) = 1/β + g_k(x)ᵀ A⁻¹ g_k(x),   g_k(x) = ∂f_k(x)/∂w at the trained weights

:class:`Laplace` is the README's interface: it fits once (:func:`sigma.fit`) and holds the
current :class:`~sigma.posterior.Posterior` — the value that predicts, gives the evidence and
returns new posteriors at other precisions. Setting α, β or the temperature, or optimising
them, replaces it; nothing is refitted. The work is done by the modules the posterior calls:
the structure (:mod:`sigma.structures`), the likelihood (:mod:`sigma.likelihoods`), the
predictive (:mod:`sigma.predictive`), the evidence (:mod:`sigma.evidence`), held-out tuning
(:mod:`sigma.tuning`), saving (:mod:`sigma.saving`) and serving (:mod:`sigma.serving`).
"""

from __future__ import annotations

import numpy as np

from sigma import fitting
from sigma.posterior import Posterior, fit, load


def _read(name: str, doc: str):
    """A read-only attribute of the current posterior."""
    return property(lambda self: getattr(self.posterior, name), doc=doc)


def _summary(name: str, doc: str):
    return property(lambda self: getattr(self.posterior.summary, name), doc=doc)


class Laplace:
    """Gaussian posterior N(w*, A⁻¹) over the weights of a trained Keras model.

    ``Laplace(model, x, y, **options)`` fits it (the options are :func:`sigma.fit`'s:
    likelihood, temperature, curvature, structure, weights, prior, alpha, beta, batch_size,
    negative, structure_options, strategy, max_memory, progress, seed); ``Laplace(model,
    posterior=post)`` holds a posterior fitted or loaded before (``Laplace.load`` does this).

    Raises ValueError for bad input and when A is not positive definite.

    Evidence: :meth:`log_evidence` (its data fit and Occam factor: :meth:`log_evidence_parts`),
    :meth:`optimize_evidence`, :attr:`gamma`, :attr:`gammas`; held-out tuning: :meth:`optimize_prior`. Classification:
    :meth:`predict_proba` (``predict`` returns the same for a classifier).
    """

    def __init__(self, model, x=None, y=None, *, posterior: Posterior | None = None, **options):
        if posterior is None:
            if x is None:
                raise ValueError(
                    "x is required: the training inputs (N, ...) with their targets y, or a "
                    "tf.data.Dataset of (x, y) batches (or posterior=, a fitted posterior)"
                )
            posterior = fit(model, x, y, **options)
        elif x is not None or y is not None or options:
            raise ValueError("posterior= is a fitted posterior: give it without data or options")
        elif posterior.model is not model:
            raise ValueError("posterior= belongs to another model")
        self.model = model
        self.posterior = posterior

    # -- the posterior's parts (read-only) --------------------------------------------------------
    structure = _read("structure", "The fitted structure holding C over the selected weights.")
    prior = _read("prior", "The prior groups (:class:`sigma.priors.Prior`).")
    selection = _read("selection", "The weights the posterior covers.")
    likelihood = _read("likelihood", "The likelihood object (:mod:`sigma.likelihoods`).")
    curvature = _read("curvature", '"ggn", "ggn_mc" or "hessian".')
    negative = _read("negative", '"keep" or "clip".')
    output_layout = _read("output_layout", "The structure of the model's outputs.")
    n_params = _read("n_params", "P, the number of weights the posterior covers.")
    weight_errors = _read("weight_errors", "E_Wg = ½ ‖w_g‖² per prior group (G,).")
    weight_error = _read("weight_error", "E_W = ½ ‖w‖² over the posterior's weights.")
    w_map = _read("w_map", "The weights (P,) the posterior was fitted at.")
    memory_estimate = _read("memory_estimate", "Bytes the structure was estimated to need.")
    evidence_result = _read(
        "evidence_result",
        "How optimize_evidence reached its optimum (None before it, and once α or β is set "
        "otherwise).",
    )
    prior_result = _read(
        "prior_result",
        "The record of optimize_prior's search (None before it, and once α or β is set otherwise).",
    )
    gammas = _read("gammas", "γ_g = P_g − α_g Tr_g(A⁻¹) per prior group (G,).")
    gamma = _read("gamma", "γ = Σ_g γ_g, the effective number of well-determined weights.")
    beta_gammas = _read("beta_gammas", "γ_h = β_h Tr(A⁻¹ C_h) per precision group.")
    n_data = _summary("n_data", "N, the training samples.")
    n_outputs = _summary("n_outputs", "K, the outputs per sample (all outputs flattened).")
    batch_size = _summary("batch_size", "The batch size of the fit (None: automatic).")
    data_error = _summary("data_error", "E_D at the trained weights (a cross-entropy too).")
    data_errors = _summary("data_errors", "E_D per output (K,), regression; else None.")
    target_moments = _summary(
        "target_moments",
        "The training targets' column means (class frequencies for labels) and mean square: "
        "which targets the evidence is of (None for a posterior saved before it was kept).",
    )

    @property
    def prior_groups(self) -> tuple[str, ...]:
        """The names of the prior groups, in the order of :attr:`alpha` (one: ("all",))."""
        return self.posterior.prior.names

    @property
    def beta_groups(self) -> tuple[str, ...]:
        """The names of the precision groups, in the order of :attr:`beta` as an array."""
        return self.posterior.groups.names

    # -- precisions ---------------------------------------------------------------------------------
    @property
    def alpha(self) -> float | np.ndarray:
        """Prior precision: a float for one group, else an array (G,) over :attr:`prior_groups`."""
        post = self.posterior
        return float(post.alpha[0]) if post.prior.scalar else post.alpha.copy()

    @alpha.setter
    def alpha(self, value):
        self.posterior = self.posterior.replace(alpha=value)

    @property
    def beta(self) -> float | np.ndarray:
        """Noise precision β: a float, or an array with one β per precision group (one per
        output with one β per output; one per head, named by :attr:`beta_groups`, with a
        likelihood per head — a classifier head's reads 1/T)."""
        beta = self.posterior.beta
        return float(beta[0]) if beta.size == 1 else beta.copy()

    @beta.setter
    def beta(self, value):
        self.likelihood.require_beta()
        post = self.posterior
        if np.ndim(value) != 0 and post.n_groups == 1 and self.n_outputs > 1:
            post = fitting.regroup(post, per_output=True)  # one β per output asked for
        self.posterior = post.replace(beta=value)

    @property
    def temperature(self) -> float:
        """The likelihood's temperature T (classification: p(y | f)^(1/T); 1 for regression).
        Settable (classification): the curvature is not refitted, A = D_α + C/T."""
        return self.posterior.temperature

    @temperature.setter
    def temperature(self, value):
        self.posterior = self.posterior.with_temperature(value)

    # -- the predictive -----------------------------------------------------------------------------
    def check_weights_unchanged(self) -> None:
        """ValueError when the model's weights (or its non-trainable state) changed since the
        fit: the posterior belongs to the weights it was fitted at."""
        self.posterior.check_weights_unchanged()

    def predict(self, x, *, noise: bool = True, batch_size: int | None = None,
                method: str | None = None, n_samples: int = 1000, seed: int = 0,
                split: bool = False):  # fmt: skip
        """Regression: predictive mean and standard deviation at inputs x (N, ...; a list or
        dict of arrays for a model with several inputs).

        Returns ``(mean, std)``, both (N, K) float64 — in the model's output structure: a list
        (or a dict by output name) of arrays for several outputs, (N, T, C) for an output per
        position. ``std² = 1/β + gᵀA⁻¹g`` (1/β of each output's group when β is an array);
        ``noise=False``: ``gᵀA⁻¹g`` alone. ``split=True``: ``(mean, aleatoric std, epistemic
        std)``, the noise (1/√β) and the weight uncertainty √(gᵀA⁻¹g) apart.

        Heteroscedastic: std² = the noise head's σ²(x) + the weight uncertainty of the mean
        (:mod:`sigma.likelihoods.heteroscedastic`); ``split=True`` gives the two apart.
        Classification: the class probabilities of :meth:`predict_proba` (``method``,
        ``n_samples``, ``seed``). A likelihood per head: a dict by output name, ``(mean,
        std)`` for a regression head, the class probabilities for a classification head.
        """
        return self.posterior.predict(
            x, noise=noise, batch_size=batch_size, method=method, n_samples=n_samples,
            seed=seed, split=split,
        )  # fmt: skip

    def predictive_covariance(self, x, *, noise: bool = True, batch_size: int | None = None):
        """Σ(x) = β⁻¹ I + J(x) A⁻¹ J(x)ᵀ for each input: (N, K, K), float64 (all outputs
        flattened and concatenated, see :attr:`output_layout`). Classification: the logit
        covariance J(x) A⁻¹ J(x)ᵀ (there is no noise term)."""
        return self.posterior.predictive_covariance(x, noise=noise, batch_size=batch_size)

    def predict_proba(self, x, *, method: str | None = None, n_samples: int = 1000,
                      seed: int = 0, batch_size: int | None = None) -> np.ndarray:  # fmt: skip
        """Predictive class probabilities E[softmax(f)] at inputs x: (N, K), rows sum to 1 (in
        the model's output structure: a list or dict for several outputs, (N, T, C) for a
        softmax per position). A model with one logit per output is a binary classifier: its
        column is P(y = 1) = σ(f), the way Keras' own sigmoid output reads.

        The logits are f ~ N(f(x; w*), J A⁻¹ Jᵀ). ``method`` (:mod:`sigma.classification`;
        None: the link :meth:`optimize_prior` tuned the temperature with, "mean_field", else
        "probit"): "probit", softmax(μ / sqrt(1 + π/8 · diag Σ)), from the variances alone;
        "mc", the mean of softmax over ``n_samples`` draws of the logits with the full
        covariance, from a generator seeded by ``seed``; "mean_field" (Lu et al. 2020, the
        variances of the logit differences, Σ_kk + Σ_jj − 2Σ_kj) and "mean_field_diag"
        (Σ_kk + Σ_jj); "bridge", the mean of the Laplace bridge's Dirichlet (Hobbhahn et al.
        2022). Classification only (ValueError for regression); a likelihood per head: a
        dict of its classification heads'."""
        return self.posterior.predict_proba(
            x, method=method, n_samples=n_samples, seed=seed, batch_size=batch_size
        )

    # -- the evidence ---------------------------------------------------------------------------------
    def log_evidence(self, alpha=None, beta=None):
        """ln p(D | α, β) in nats, constants included (docs/math.md); defaults: the current α, β.

        With one prior group and one precision group, ``alpha`` and ``beta`` may be arrays
        (broadcast against each other, e.g. a meshgrid): the result then has their broadcast
        shape, for drawing the evidence surface. With several groups ``alpha`` is one α per
        group (G,) or a number for all, ``beta`` one per precision group. Classification:
        ln p(D | α), no β."""
        return self.posterior.log_evidence(alpha, beta)

    def log_evidence_parts(self) -> dict:
        """The log evidence at the current α, β split into ``{"data_fit": ..., "occam": ...}``
        (nats; their sum is :meth:`log_evidence`): the data fit is the log likelihood at the
        weights w* (regression: −βE_D + (NK/2) ln(β/2π); a classifier or a heteroscedastic
        model: −E), the Occam factor the rest, −Σ α_g E_Wg + ½ ln|D_α| − ½ ln|A|
        (docs/math.md, "Which model? Comparing evidences")."""
        return self.posterior.log_evidence_parts()

    def optimize_evidence(self, *, fix_alpha: bool = False, fix_beta: bool = False,
                          per_output: bool | None = None, tol: float = 1e-8,
                          max_iter: int = 1000, confidence_check: bool = True) -> Laplace:  # fmt: skip
        """Set α (every α_g) and β (every free β_h) to the maximum of the evidence at the
        trained weights; returns self.

        MacKay's fixed point, α_g ← γ_g/(2E_Wg), β_h ← (N_h − γ_h)/(2E_h), from the current
        precisions until the relative change is below ``tol``; where it overshoots (γ ≥ NK),
        oscillates or crawls (``tol`` more than 20 iterations away at its rate), a direct
        maximisation in (ln α_g, ln β_h), finished by the fixed point where it converges
        from there (:func:`sigma.evidence.maximize`).
        ``fix_alpha`` / ``fix_beta`` hold one kind at its current value. ``per_output``: one
        β_k per output (True; refits the structure with each output's curvature apart, from
        the training data) or one for all (False); default: keep the current form of β.
        Classification re-estimates α only (β is 1/T).

        A classifier's evidence alone often makes probabilities less confident than the
        network's own softmax: with ``confidence_check`` (default) one predictive pass over
        at most 2,000 training samples compares the two mean NLLs and a RuntimeWarning says
        when the predictive's is more than 10% worse, and what to do — held-out data for
        :meth:`optimize_prior`, or a smaller ``temperature`` (:func:`sigma.tuning.check_confidence`).

        Afterwards ``alpha``, ``beta``, ``gamma`` and ``log_evidence()`` refer to the optimum
        and ``evidence_result`` records how it was reached. Raises
        :class:`sigma.evidence.EvidenceBoundaryError` when the evidence has no interior maximum
        (the network interpolates its training data, so β → ∞; or an α_g → 0), saying what
        to do; :class:`sigma.evidence.EvidenceError` (with the last α, β) when the iterations
        run out; ValueError for a curvature with negative eigenvalues (see ``negative``)."""
        self.posterior = self.posterior.optimize_evidence(
            fix_alpha=fix_alpha, fix_beta=fix_beta, per_output=per_output, tol=tol,
            max_iter=max_iter, confidence_check=confidence_check,
        )  # fmt: skip
        return self

    def optimize_prior(self, x_val, y_val, *, metric: str = "nll", beta: bool = True,
                       temperature: bool | None = None, method: str | None = None,
                       span: float = 1e4, tol: float = 1e-3, max_iter: int = 100) -> Laplace:  # fmt: skip
        """Tune the precisions on held-out data (x_val, y_val); returns self.

        A classifier (``temperature=None`` or True): the likelihood's temperature T within
        ``span``× of the current one either way, with α_g set by the evidence of the tempered
        model at each T, and T chosen by ``metric`` of ``predict_proba(x_val, method=method)``
        — one T per decade, then Brent's method around the best (:mod:`sigma.tuning`); at
        the lower bound, if the metric is still worse than the network's own probabilities
        give, the α_g are raised by the smallest factor c ≥ 1 (≤ ``span``) making it no
        worse to within 0.1% (else the best c tried). The Laplace ends at the best T with its
        α_g (× c), and
        ``method`` (default "mean_field": the variances of the logit differences, blind to
        the shift common to all logits that softmax ignores) becomes the link
        ``predict_proba`` uses when given none.
        ``temperature=False``: a common factor of α at the current T instead (``method``
        default: the current link).

        Regression: a bounded search over a common factor of the prior precisions (α_g ratios
        kept) — and of β with ``beta=True`` — within ``span``× of the current values either
        way, on the Gaussian NLL per value: Brent's method in 1-D, Nelder–Mead in log
        coordinates in 2-D. Heteroscedastic: α only.

        ``metric``: "nll", or for a classifier "brier" or "ece". ``prior_result`` records
        the values found (a classifier's: temperature, alpha — the evidence's there × the
        ``alpha_factor`` c — the metric at every T of the search over T, and at T's lower
        bound ``network_value``, the metric of the network's own probabilities), how many
        predictions it took and ``at_bound``: {"alpha": "upper" |
        "lower", "beta": ..., "temperature": ...} for a value at the edge of the search
        (``span``× its start; empty when none is), which a RuntimeWarning naming ``span`` also
        reports — the best value may lie beyond."""
        self.posterior = self.posterior.optimize_prior(
            x_val, y_val, metric=metric, beta=beta, temperature=temperature, method=method,
            span=span, tol=tol, max_iter=max_iter,
        )  # fmt: skip
        return self

    def conformalize(self, x_cal, y_cal, *, level=None, randomised: bool = True, seed: int = 0):
        """A calibrated predictor from held-out calibration data (x_cal (n, ...), y_cal (n, K);
        labels for a classifier) by split conformal prediction (:mod:`sigma.conformal`):
        regression → :class:`~sigma.conformal.ConformalRegressor` (``interval(x, level)``,
        coverage ≥ level in finite samples); classification →
        :class:`~sigma.conformal.ConformalClassifier` (adaptive prediction sets,
        ``predict_set(x, level)``). Needs n ≥ ⌈1/ε⌉ − 1 for level 1 − ε (checked now when
        ``level`` is given, else when an interval is asked for)."""
        return self.posterior.conformalize(
            x_cal, y_cal, level=level, randomised=randomised, seed=seed
        )

    # -- serving and saving ----------------------------------------------------------------------------
    def to_keras(self, *, name: str | None = None):
        """A ``keras.Model`` from the model's inputs to this posterior's predictive — ``{"mean",
        "std"}`` (N, K) for regression, class probabilities (N, K) for classification — with
        the variance computed inside the graph at the current α, β (:mod:`sigma.serving`).
        ``.save("m.keras")`` reloads with ``keras.saving.load_model`` where sigma is installed;
        ``.export("dir")`` writes a SavedModel whose ``serve`` signature needs no sigma."""
        return self.posterior.to_keras(name=name)

    def save(self, path):
        """Write this Laplace to ``path`` (a ``.npz`` archive in the versioned format of
        :mod:`sigma.saving`: the structure's state, α, β, the prior groups, the data summary
        the evidence needs and the model's fingerprint — not the training data), atomically.
        Returns the path."""
        return self.posterior.save(path)

    @classmethod
    def load(cls, path, model) -> Laplace:
        """The Laplace saved in ``path``, for ``model`` — which must be the model it was fitted
        on: same architecture, same weights, same non-trainable state (ValueError otherwise,
        naming the difference). Nothing is refitted; predictions, the evidence and its
        optimisation work as before saving. (One β per output needs the saved blocks; a file
        from another format version is refused.)"""
        return cls(model, posterior=load(path, model))

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


Laplace.__init__.__doc__ = (
    "Fit the posterior (or hold ``posterior=``): the parameters are those of "
    ":func:`sigma.fit`.\n\n" + (fit.__doc__ or "")
)
