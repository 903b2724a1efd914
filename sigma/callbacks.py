"""Training for the posterior: the evidence during ``model.fit`` (docs/math.md, "Training for
the posterior").

The Laplace approximation is taken at the most probable weights w_MP of
M(w) = β E_D(w) + Σ_g α_g E_Wg(w), with the α_g, β the evidence prefers. Weights trained on
E_D alone are not w_MP, and the evidence evaluated there is biased (E_D over-fitted, E_W
inflated, α too small, β too large). :class:`EvidenceCallback` runs MacKay's alternating loop
inside ``model.fit``, with the user's own optimizer and compiled loss:

* the training objective becomes the log posterior: in Keras' mean-loss scale, an L2 penalty
  of strength α_g/(β N K) on each group's weights for the mean squared error
  (loss = 2 E_D/(N K)), α_g/(2N) for the mean cross-entropy on logits (loss = E_D/N) and for
  the heteroscedastic Gaussian NLL of :class:`sigma.losses.GaussianNLL` (loss = E/N, no β);
* every ``every`` epochs (after ``warmup``) it fits a :class:`~sigma.Laplace` at the current
  weights — on the model's curvature engine, so nothing is traced again — and re-estimates the
  α_g and β by the evidence (:meth:`~sigma.Laplace.optimize_evidence`), which sets the
  penalty for the next epochs;
* at the end of training it leaves ``cb.laplace``, fitted at the final weights with the final
  α_g, β, and ``cb.history``, one record per re-estimation.

The penalty enters through each variable's ``regularizer`` with a strength held in a
``tf.Variable``: changing α, β changes a value, not the compiled train step. The regularizers
are in place only while the callback's own train step runs (:class:`_PenalisedStep`, the
model's ``train_function`` during fit): between steps, after ``fit`` and after a ``fit`` that
an exception or Ctrl-C ended, ``model.losses`` and the variables are as the user gave them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from sigma import keras_compat, likelihoods, structures
from sigma._checks import check_positive_int
from sigma.curvature import prepare
from sigma.curvature.accumulate import first_samples, is_dataset
from sigma.fit_call import refuse_sample_weights, training_part
from sigma.keras_compat import fit_arguments
from sigma.laplace import Laplace
from sigma.likelihoods.heteroscedastic import describe
from sigma.losses import GaussianNLL, compiled_loss
from sigma.priors import build_prior, owners_of
from sigma.weights import select

_REGRESSION_LOSSES = {"mse", "mean_squared_error", "meansquarederror"}
_CLASSIFICATION_LOSSES = {
    "binary_crossentropy",
    "binarycrossentropy",
    "categorical_crossentropy",
    "categoricalcrossentropy",
    "sparse_categorical_crossentropy",
    "sparsecategoricalcrossentropy",
}


class EvidencePenalty(keras.regularizers.Regularizer):
    """Σ c ⊙ w²: the weight-decay term of the log posterior for one variable, with the
    strengths c (the variable's shape) in a non-trainable ``tf.Variable``, returned in the
    compiled loss's dtype (Keras sums the loss and the penalties in that dtype)."""

    def __init__(self, strength: tf.Variable, dtype: str):
        self.strength, self.dtype = strength, dtype

    def __call__(self, x):
        penalty = tf.reduce_sum(tf.cast(self.strength, x.dtype) * tf.square(x))
        return tf.cast(penalty, self.dtype)

    def get_config(self):
        return {}


def _output_widths(model) -> list[int] | None:
    """The width of each of the model's outputs (its last axis), or None when unknown."""
    try:
        return [int(t.shape[-1]) for t in model.outputs]
    except (AttributeError, ValueError, TypeError):
        return None


def loss_likelihood(model) -> str:
    """The likelihood of the model's compiled loss: "regression" for the mean squared error,
    "classification" for a categorical cross-entropy on logits. A ValueError names anything
    else (the penalty's scale follows from the loss)."""
    loss = compiled_loss(model)
    if loss is None:
        raise ValueError(
            "model is not compiled: call model.compile(optimizer, loss) with loss='mse' "
            "(regression) or a categorical cross-entropy with from_logits=True before fit"
        )
    if isinstance(loss, list | tuple | dict):
        raise ValueError(
            f"the model is compiled with one loss per output ({len(loss)}): the evidence needs "
            "one likelihood for the whole model — compile with a single loss (loss='mse', "
            "which Keras applies to every output, or one cross-entropy on logits)"
        )
    try:
        weights = model.get_compile_config().get("loss_weights")
    except Exception:  # noqa: BLE001 - a model compiled in a way Keras cannot describe
        weights = None
    if weights is not None and any(float(w) != 1.0 for w in tf.nest.flatten(weights)):
        raise ValueError(
            f"the model is compiled with loss_weights={weights!r}: they scale the data term of "
            "the training loss but not the prior's penalty, so training would not reach the "
            "most probable weights whose evidence is computed; compile without loss_weights"
        )
    for option, neutral in (("label_smoothing", 0.0), ("ignore_class", None)):
        value = None if isinstance(loss, str) else keras_compat.loss_option(loss, option)
        if value is not None and value != neutral:
            raise ValueError(
                f"the compiled loss has {option}={value!r}: training would fit other targets "
                "than the labels whose likelihood the evidence is; compile without it"
            )
    if isinstance(loss, GaussianNLL):
        if getattr(loss, "reduction", None) not in ("sum_over_batch_size", None):
            raise ValueError(
                f"the compiled loss has reduction={loss.reduction!r}: the evidence penalty is "
                "scaled for the default mean over the batch (reduction='sum_over_batch_size')"
            )
        return "heteroscedastic"
    if isinstance(loss, str):
        name, from_logits, reduction = loss.lower(), False, "sum_over_batch_size"
    elif isinstance(loss, keras.losses.Loss):
        name = getattr(getattr(loss, "fn", None), "__name__", type(loss).__name__).lower()
        from_logits = bool(keras_compat.loss_option(loss, "from_logits"))
        reduction = getattr(loss, "reduction", "sum_over_batch_size")
    else:
        name = getattr(loss, "__name__", type(loss).__name__).lower()
        from_logits, reduction = False, "sum_over_batch_size"
    if reduction not in ("sum_over_batch_size", None):
        raise ValueError(
            f"the compiled loss has reduction={reduction!r}: the evidence penalty is scaled for "
            "the default mean over the batch (reduction='sum_over_batch_size')"
        )
    if name in _REGRESSION_LOSSES:
        return "regression"
    if name in _CLASSIFICATION_LOSSES:
        widths = _output_widths(model)
        if "binary" in name and widths and any(w != 1 for w in widths):
            raise ValueError(
                f"the compiled loss {name!r} on outputs of widths {widths}: a binary "
                "cross-entropy over several logits is a multi-label model (independent "
                "sigmoids), which the evidence does not cover; one logit per output is a "
                "binary classifier"
            )
        if not from_logits:
            fix = (
                "keras.losses.BinaryCrossentropy(from_logits=True)"
                if "binary" in name
                else "keras.losses.CategoricalCrossentropy(from_logits=True) (or the sparse one)"
            )
            raise ValueError(
                f"the compiled loss {name!r} takes probabilities: training for the posterior "
                f"needs logits — compile with {fix} and a linear last layer"
            )
        return "classification"
    raise ValueError(
        f"the compiled loss {name!r} is not one the evidence knows the scale of: compile with "
        "loss='mse' (regression), a categorical cross-entropy with from_logits=True "
        "(classification) or sigma.losses.GaussianNLL() (heteroscedastic regression)"
    )


class _PenalisedStep:
    """The model's ``train_function`` while an :class:`EvidenceCallback` trains it: the train
    step traced with the prior's penalty, which is put on the variables for the duration of
    each call (so that a retrace sees it) and taken off afterwards, whatever ends the call.

    A step runs with the penalty only when the callback armed it in ``on_train_batch_begin`` of
    the fit it began. Called in a fit the callback does not run (after a fit that an exception
    or Ctrl-C ended before ``on_train_end``), it replaces itself by the model's own train step,
    traced afresh without the penalty, and runs that.
    """

    def __init__(self, callback, model, function):
        self._callback, self._model = weakref.ref(callback), weakref.ref(model)
        self.function = function

    def __call__(self, iterator):
        callback, model = self._callback(), self._model()
        if callback is None or not callback._take_step(self):
            model.make_train_function(force=True)
            return model.train_function(iterator)
        with callback._penalty_on():
            return self.function(iterator)


class EvidenceCallback(keras.callbacks.Callback):
    """Train for the posterior: α_g and β by the evidence during ``model.fit``.

    Parameters
    ----------
    x, y : the training data (arrays, y (N, K) or labels (N,)), or x a ``tf.data.Dataset`` of
        (x, y) batches and y None — what the curvature and the evidence are computed on.
    structure, structure_options, weights, curvature, batch_size : of the
        :class:`~sigma.Laplace` fitted at each re-estimation (default "kfac": cheap at any
        size; ``weights``: which weights the prior and the posterior cover, default all).
    prior : the weight groups with their own α (default "layer": MacKay's one α per layer).
    every : re-estimate every this many epochs (≥ 1).
    warmup : epochs of plain training before the first re-estimation (≥ 0).
    alpha, beta : start values; with ``alpha`` the penalty acts from the first epoch (β
        default: the maximum-likelihood noise NK/(2E_D) at the start). Without, training is
        plain until the first re-estimation.
    fix_alpha, fix_beta : hold one precision at its start value (β: regression only).
    likelihood : default from the compiled loss (:func:`loss_likelihood`).
    verbose : 1 (default) reports one line per re-estimation unless ``model.fit`` is silent
        (Keras' ``verbose=0``), 0 never. The line goes where Keras' own progress goes: stdout,
        or the ``sigma.callbacks`` logger when Keras' interactive logging is off.
    check_mode : at the end of ``fit``, measure how far short of the mode training stopped
        (``mode_gap``: one gradient pass over the data) and warn beyond 1 nat (default);
        False skips both (``mode_gap`` stays None).

    At every epoch end the callback writes the current estimates into Keras' ``logs`` —
    ``evidence_alpha`` (one group) or ``evidence_alpha_<group>`` (several), ``evidence_beta``
    (regression), ``evidence_gamma`` and ``evidence_log_evidence``; NaN before the first
    re-estimation — so ``History``, ``CSVLogger`` and ``TensorBoard`` record them (list this
    callback before those in ``callbacks=[...]``: Keras runs them in that order).

    Attributes after ``fit``: ``history`` (a list of dicts: fit, epoch, n_data, alpha, beta,
    gamma, gammas, log_evidence, data_error, weight_error, method; the last also mode_gap),
    ``laplace`` (the Laplace at the final weights), ``mode_gap`` (how far short of the mode
    of the log posterior training stopped, in nats, :func:`sigma.selection.mode_gap`; a
    RuntimeWarning when it exceeds 1 nat: the evidence and σ assume the mode), ``prior_groups``.

    What ``fit`` is called with matters: sample weights or class weights are refused (the
    evidence is that of the unweighted likelihood); with ``validation_split``, when (x, y)
    are ``fit``'s data the held-out part is left out of the curvature and N. One callback
    serves one model: further ``fit`` calls on it continue from the α_g, β reached (``fit``
    in each history row counts the calls, from 1); another model is refused.

    The penalty is part of the train step only: ``loss`` in the logs includes it, ``val_loss``
    and ``model.evaluate`` do not. However ``fit`` ends — normally, by an exception in any
    callback, or Ctrl-C — the model comes back with its own regularizers, ``model.losses``
    and train step.
    """

    def __init__(
        self,
        x,
        y=None,
        *,
        structure: str = "kfac",
        prior="layer",
        weights="all",
        every: int = 5,
        warmup: int = 0,
        alpha=None,
        beta=None,
        fix_alpha: bool = False,
        fix_beta: bool = False,
        likelihood: str | None = None,
        curvature: str = "ggn",
        structure_options: dict | None = None,
        batch_size: int | None = None,
        max_iter: int = 1000,
        verbose: int = 1,
        check_mode: bool = True,
    ):
        super().__init__()
        self.every = check_positive_int(every, "every")
        if isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
            raise ValueError(f"warmup must be a whole number of epochs >= 0, got {warmup!r}")
        self.warmup = int(warmup)
        if not isinstance(structure, str):
            raise ValueError(
                f"structure must be a structure name ({structures.names()}), got "
                f"{type(structure).__name__}: a fitted structure cannot be refitted each epoch"
            )
        self._structure_cls = structures.get(structure)
        self._structure_cls.from_options(structure_options)  # checks the options now
        structures.resolve(structure, weights)  # an alias with weights of its own is refused
        self.weights_spec = weights
        if likelihood is not None:
            likelihoods.get(likelihood)
        if y is None and not is_dataset(x):
            raise ValueError(
                "y is required when x is an array: pass the training targets, or x as a "
                "tf.data.Dataset of (x, y) batches"
            )
        for flag, name in ((fix_alpha, "fix_alpha"), (fix_beta, "fix_beta"),
                           (check_mode, "check_mode")):  # fmt: skip
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.x, self.y = x, y
        self.structure, self.prior_spec, self.curvature = structure, prior, curvature
        self.structure_options, self.batch_size = structure_options, batch_size
        self.start_alpha, self.start_beta = alpha, beta
        self.fix_alpha, self.fix_beta, self.max_iter = fix_alpha, fix_beta, max_iter
        self.check_mode = check_mode
        if verbose not in (0, 1) or isinstance(verbose, bool):
            raise ValueError(f"verbose must be 0 or 1, got {verbose!r}")
        self.likelihood, self.verbose = likelihood, verbose
        self.history: list[dict] = []
        self.laplace: Laplace | None = None
        self.mode_gap: float | None = None
        self.prior_groups: tuple[str, ...] = ()
        self._owner, self._fits = None, 0
        self._alpha = self._beta = None
        self._step = self._armed = self._history_token = None

    # -- keras hooks ----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        owner = self._owner() if self._owner is not None else None
        if self._owner is not None and owner is not model:
            raise ValueError(
                "this EvidenceCallback was already used to train another model "
                f"({getattr(owner, 'name', 'since deleted')!r}; its history, laplace and "
                f"alpha belong to that model): give model {model.name!r} an EvidenceCallback "
                "of its own"
            )
        compiled = loss_likelihood(model)
        if self.likelihood is not None:
            requested = likelihoods.get(self.likelihood)
            if requested.name != compiled:
                raise ValueError(
                    f"likelihood={describe(self.likelihood)} but the compiled loss is a "
                    f"{compiled} loss"
                )
            requested.for_model(model, self.likelihood)  # e.g. the loss's parameterisation
        args = fit_arguments(model)
        refuse_sample_weights(args)
        self._x, self._y, held_out = training_part(self.x, self.y, args)
        if held_out and self._reporting():
            _report(
                f"EvidenceCallback: validation_split={args['validation_split']:g} holds out the "
                f"last {held_out} samples of x, y; the evidence uses the "
                f"{len(tf.nest.flatten(self._x)[0])} that fit trains on"
            )
        self._owner, self._fits = weakref.ref(model), self._fits + 1
        if not model.built:  # Keras builds it in the first train step; the prior needs its weights
            model(first_samples(self._x, 1), training=False)
        # the likelihood the compiled loss trains (a heteroscedastic one in its parameterisation)
        self._likelihood = likelihoods.get(compiled).for_model(model, compiled)
        if not is_dataset(self._x):  # the data checked now, not after `every` epochs of training
            prepare(model, self._x, self._y, self._likelihood)
        self._fitted_at = None
        self.selection = select(model, structures.resolve(self.structure, self.weights_spec)[1])
        self._variables = self.selection.variables(model)
        self.prior = build_prior(
            self.prior_spec, self._variables, owners_of(model), sizes=self.selection.sizes
        )
        self.prior_groups = self.prior.names
        self._strength = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="evidence_strength")
            for v in self._variables
        ]
        self._saved = [v.regularizer for v in self._variables]
        if any(r is not None for r in self._saved):
            warnings.warn(
                "EvidenceCallback replaces the weight regularizers of the model during fit "
                "(the prior's penalty takes their place); they are restored afterwards",
                RuntimeWarning,
                stacklevel=keras_compat.user_stacklevel(),
            )
        # Keras adds the penalties to its compiled loss, which it computes in floatx whatever
        # the model's own dtype (a keras.losses.Loss made without a dtype)
        dtype = keras.config.floatx()
        self._penalties = [EvidencePenalty(strength, dtype) for strength in self._strength]
        if self._alpha is not None:  # a further fit: go on from the α_g, β reached
            la = self._laplace(alpha=self._alpha, beta=self._beta)
            self._set_penalty(la.alpha, la.beta, la.n_data, la.n_outputs)
        elif self.start_alpha is not None:
            la = self._laplace(alpha=self.start_alpha, beta=self.start_beta)
            self._set_penalty(la.alpha, la.beta, la.n_data, la.n_outputs)
        # Keras (no distribution strategy) creates the optimizer's variables inside the first
        # trace of the train step, and so traces it twice; built here, as Keras itself does
        # under a strategy, the penalised step is traced once
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # the penalty enters the train step, and only it (see _PenalisedStep)
        model.make_train_function(force=True)
        self._step = _PenalisedStep(self, model, model.train_function)
        self._history_token = getattr(model, "history", None)  # this fit's History
        model.train_function = self._step

    def on_train_batch_begin(self, batch, logs=None):
        self._armed = self._step  # the next train step is this fit's

    def _take_step(self, step) -> bool:
        """Whether ``step`` runs in the fit this callback armed it for (then with the penalty).
        Keras calls ``on_train_batch_begin`` just before every train step of a fit."""
        armed, self._armed = self._armed, None
        return (
            step is armed is self._step
            and getattr(self.model, "history", None) is self._history_token
        )

    @contextlib.contextmanager
    def _penalty_on(self):
        """The prior's penalty as the regularizer of the selected variables, for one train
        step; the variables' own regularizers back afterwards, whatever ends it."""
        try:
            for v, penalty in zip(self._variables, self._penalties, strict=True):
                v.regularizer = penalty
            yield
        finally:
            for v, saved in zip(self._variables, self._saved, strict=True):
                v.regularizer = saved

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done > self.warmup and (done - self.warmup) % self.every == 0:
            self._reestimate(done)
        if logs is not None:
            logs.update(self.log_values())

    def log_values(self) -> dict:
        """The latest estimates as Keras log entries (NaN before the first re-estimation):
        evidence_alpha (or evidence_alpha_<group> per group), evidence_beta (regression),
        evidence_gamma, evidence_log_evidence."""
        last = self.history[-1] if self.history else None
        names = self.prior_groups
        alpha = np.full(len(names), np.nan) if last is None else np.atleast_1d(last["alpha"])
        if len(names) == 1:
            out = {"evidence_alpha": float(alpha[0])}
        else:
            out = {f"evidence_alpha_{n}": float(a) for n, a in zip(names, alpha, strict=True)}
        if self._likelihood.noise:
            out["evidence_beta"] = np.nan if last is None else float(np.mean(last["beta"]))
        out["evidence_gamma"] = np.nan if last is None else float(last["gamma"])
        out["evidence_log_evidence"] = np.nan if last is None else float(last["log_evidence"])
        return out

    def on_train_end(self, logs=None):
        try:
            if self._fitted_at is None or not np.array_equal(self._weights(), self.laplace.w_map):
                self._reestimate("end")
            if self.check_mode:
                self._check_mode()
        finally:
            self._step = self._armed = None
            for v, saved in zip(self._variables, self._saved, strict=True):
                v.regularizer = saved
            self.model.make_train_function(force=True)  # the model's own step, no penalty

    def _check_mode(self) -> None:
        """``mode_gap`` (and the last history row's): how far short of the mode of the log
        posterior training stopped, in nats (:func:`sigma.selection.mode_gap`), with a
        RuntimeWarning beyond :data:`sigma.selection.MODE_GAP`; None, with a warning saying
        why, where it cannot be measured (data that differ from pass to pass)."""
        from sigma.selection import MODE_GAP, ModeGapUnavailable, mode_gap

        try:
            self.mode_gap = mode_gap(self.laplace)
        except ModeGapUnavailable as err:  # data that differ from pass to pass, say
            self.mode_gap = None
            warnings.warn(f"cb.mode_gap not measured: {err}", RuntimeWarning, stacklevel=2)
            return
        self.history[-1]["mode_gap"] = self.mode_gap
        if self.mode_gap > MODE_GAP:
            warnings.warn(
                f"training stopped {self.mode_gap:.1f} nats short of the mode of the log "
                "posterior (cb.mode_gap, ½ gᵀA⁻¹g): the Laplace approximation and its "
                "evidence assume the most probable weights. Train on batches of equal size "
                "(model.fit(x, y, batch_size=b) weighs a short last batch like a full one: "
                "choose b that divides N, or fit a shuffled dataset that repeats, batched "
                "with drop_remainder=True, with steps_per_epoch), for more epochs, or end "
                "with a smaller learning rate",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- the loop -------------------------------------------------------------------------------
    def _weights(self):
        return np.concatenate([np.ravel(v.numpy()) for v in self.model.trainable_variables])

    def _laplace(self, *, alpha, beta) -> Laplace:
        kw = dict(
            structure=self.structure,
            structure_options=self.structure_options,
            weights=self.weights_spec,
            prior=self.prior_spec,
            curvature=self.curvature,
            likelihood=self._likelihood,
            batch_size=self.batch_size,
        )
        la = Laplace(self.model, self._x, self._y, alpha=1.0 if alpha is None else alpha, **kw)
        if self._likelihood.noise:
            la.beta = la.n_data * la.n_outputs / (2.0 * la.data_error) if beta is None else beta
        return la

    def _reestimate(self, epoch):
        la = self._laplace(alpha=self._alpha, beta=self._beta)
        try:
            # no confidence check during training: it would cost a predictive pass and a
            # warning at every re-estimation, on weights that are still moving
            la.optimize_evidence(
                fix_alpha=self.fix_alpha,
                fix_beta=self.fix_beta,
                max_iter=self.max_iter,
                confidence_check=False,
            )
        except Exception as exc:
            exc.add_note(f"(sigma.EvidenceCallback, re-estimation at epoch {epoch})")
            raise
        self._alpha, self._beta = la.alpha, la.beta
        self._set_penalty(la.alpha, la.beta, la.n_data, la.n_outputs)
        self.laplace, self._fitted_at = la, epoch
        record = {
            "fit": self._fits,
            "epoch": epoch,
            "n_data": la.n_data,
            "alpha": la.alpha,
            "beta": la.beta,
            "gamma": la.gamma,
            "gammas": la.gammas,
            "log_evidence": la.log_evidence(),
            "data_error": la.data_error,
            "weight_error": la.weight_error,
            "method": la.evidence_result.method,
        }
        self.history.append(record)
        if self._reporting():
            alpha = (
                f"{record['alpha']:.4g}"
                if np.ndim(record["alpha"]) == 0
                else np.array2string(np.asarray(record["alpha"]), precision=3, threshold=6)
            )
            noise = (
                f", beta {record['beta']:.4g} (noise σ {record['beta'] ** -0.5:.4g})"
                if self._likelihood.noise
                else ""
            )
            _report(
                f"evidence @ epoch {epoch}: alpha {alpha}{noise}, gamma {record['gamma']:.1f} of "
                f"{la.n_params}, log evidence {record['log_evidence']:.2f}"
            )

    def _reporting(self) -> bool:
        """Report a re-estimation: when this callback and ``model.fit`` are both verbose."""
        return bool(self.verbose) and bool((self.params or {}).get("verbose", 1))

    def _set_penalty(self, alpha, beta, n, k):
        """The L2 strengths of the log posterior in the compiled loss's scale."""
        alpha_w = np.broadcast_to(
            np.asarray(self.prior.per_weight(alpha), np.float64), (self.prior.groups.size,)
        )
        scale = self._likelihood.penalty_scale(n, k, beta)
        offset = 0
        parts = zip(self._variables, self._strength, self.selection.parts, strict=True)
        for v, strength, (_, cols) in parts:
            size = int(np.prod(v.shape)) if cols is None else int(cols.size)
            values = np.zeros(int(np.prod(v.shape)))  # no penalty on the weights left out
            values[slice(None) if cols is None else cols] = alpha_w[offset : offset + size] * scale
            strength.assign(values.reshape(v.shape).astype(v.dtype))
            offset += size


def _report(message: str) -> None:
    """One line where Keras' own progress goes: stdout when its interactive logging is on (the
    default), else the ``sigma.callbacks`` logger."""
    if keras.config.is_interactive_logging_enabled():
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    else:
        logging.getLogger(__name__).info(message)
