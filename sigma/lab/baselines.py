"""Two standard alternatives to the Laplace approximation for error bars of a network, in Keras:
deep ensembles (Lakshminarayanan, Pritzel & Blundell 2017) and MC dropout (Gal & Ghahramani
2016), with the training loop all methods of ``notebooks/05_training_for_the_posterior.py``
share.

Shapes: x (N, D) inputs; regression targets y (N, K); classification labels (N,) integers in
[0, K). Predictions: regression ``(mean, std)`` (N, K) each, std including the noise;
classification probabilities (N, K).

* :class:`DeepEnsemble` — M networks from independent random initialisations, each trained on
  its own shuffling of the data. Regression, ``head="gaussian"`` (the paper's method): each
  member outputs a mean μ_m and a variance σ_m² (softplus) per output and is trained on the
  Gaussian negative log-likelihood; the ensemble is the uniform mixture, with mean
  μ = mean_m μ_m and variance mean_m σ_m² + var_m μ_m. ``head="mse"``: members trained on the
  squared error, variance var_m μ_m + s², s² the members' mean squared training residual.
  Classification: the average of the members' softmax.
* :class:`TemperatureScaling` — Guo et al. (2017): the trained network's logits divided by
  one T > 0 fitted on held-out data by its negative log-likelihood; accuracy unchanged.
* :class:`MCDropout` — one network with dropout after every hidden layer, trained with dropout
  and kept stochastic at test time: T forward passes with independent masks. Regression:
  mean and variance of the T outputs plus the noise variance s² of the training residuals of
  the MC mean (the usual homoscedastic recipe, in place of Gal's τ⁻¹ from a length scale and
  weight decay). Classification: the average softmax over the T passes.

Everything is seeded: a seed fixes the initial weights, the shuffling and the dropout masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from sigma.classification import softmax
from sigma.lab.models import mlp

LIKELIHOODS = ("regression", "classification")
HEADS = ("gaussian", "mse")
SCHEDULES = ("constant", "cosine")
MIN_VARIANCE = 1e-6  # floor of a Gaussian head's variance (in squared target units)


# -- networks and training ----------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """What every method of a comparison shares: the MLP ``n_inputs → hidden… → outputs``
    (linear outputs; :func:`sigma.lab.models.mlp` with this recipe's activation), its training
    by Adam (:func:`fit`; schedule "constant" or "cosine"), the deep ensemble's size and MC
    dropout's rate and test-time passes. The notebooks' comparisons derive their recipes from
    it, adding their own settings."""

    hidden: tuple[int, ...] = (50,)
    activation: str = "tanh"
    dtype: str = "float32"
    epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    ensemble_size: int = 5
    dropout: float = 0.1
    mc_samples: int = 100

    def network(self, n_inputs: int, n_outputs: int, seed: int):
        """The plain MLP every method starts from (without dropout)."""
        return mlp(
            n_inputs, self.hidden, n_outputs, activation=self.activation, dtype=self.dtype,
            seed=seed,
        )  # fmt: skip

    def training(self) -> dict:
        """Keywords of :func:`fit` and the baselines' ``fit``."""
        return dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            schedule=self.schedule,
        )


def dataset(x, y, *, batch_size: int, seed: int = 0, dtype: str = "float32") -> tf.data.Dataset:
    """(x, y) in batches of ``batch_size``, shuffled afresh every epoch in an order fixed by
    ``seed``. Integer labels stay integers."""
    x = np.asarray(x, dtype)
    y = np.asarray(y)
    y = y if np.issubdtype(y.dtype, np.integer) else y.astype(dtype)
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(int(batch_size))
    )


def fit(
    model: keras.Model,
    x,
    y,
    *,
    loss="mse",
    epochs: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    seed: int = 0,
    callbacks=None,
    verbose: int = 0,
) -> keras.callbacks.History:
    """Compile with Adam and ``loss`` and train for ``epochs`` on the seeded :func:`dataset`.

    schedule : "constant" (the step ``learning_rate`` throughout) or "cosine" (from
        ``learning_rate`` down to 1% of it at the last step, cosine-shaped).

    On small data Keras' per-step and per-epoch overheads would dominate, so one epoch is one
    compiled call (``steps_per_execution``), and without ``callbacks`` the ``epochs`` passes
    over the data — each reshuffled — run as one Keras epoch (the same number of steps and the
    same learning-rate schedule; only the random order of the minibatches differs). With ``callbacks`` (e.g. a :class:`sigma.EvidenceCallback`) each pass is a Keras
    epoch, whose end they see as usual. Returns the History (per Keras epoch).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    keras.utils.set_random_seed(seed)
    dtype = model.trainable_variables[0].dtype
    steps = int(np.ceil(len(x) / batch_size))
    rate = learning_rate
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, steps_per_execution=steps)
    data = dataset(x, y, batch_size=batch_size, seed=seed, dtype=dtype)
    if not callbacks:
        data, epochs = data.repeat(epochs), 1
    return model.fit(
        data, epochs=epochs, verbose=verbose, shuffle=False, callbacks=list(callbacks or [])
    )


def classification_loss() -> keras.losses.Loss:
    """Mean cross-entropy on logits against integer labels."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def gaussian_nll(y_true, y_pred):
    """Gaussian negative log-likelihood (up to ½ ln 2π) of a mean–variance head, per sample:
    y_true (B, K); y_pred (B, 2K) = [μ, v] with σ² = softplus(v) + MIN_VARIANCE.
    Returns (B,): mean over outputs of ½ ln σ² + (t − μ)²/(2σ²)."""
    k = tf.shape(y_true)[-1]
    mean, var = split_head(y_pred, k)
    y_true = tf.cast(y_true, mean.dtype)
    return tf.reduce_mean(0.5 * tf.math.log(var) + 0.5 * tf.square(y_true - mean) / var, axis=-1)


def split_head(outputs, k):
    """Mean (…, K) and variance (…, K) of a Gaussian head's outputs (…, 2K)."""
    mean, raw = outputs[..., :k], outputs[..., k:]
    if isinstance(outputs, np.ndarray):
        return mean, np.logaddexp(0.0, raw) + MIN_VARIANCE
    return mean, tf.math.softplus(raw) + MIN_VARIANCE


def residual_variance(predictions, y) -> np.ndarray:
    """The noise variance estimated from training residuals: mean over samples of
    (y − prediction)², one per output, (K,). predictions, y : (N, K)."""
    predictions, y = np.asarray(predictions, np.float64), np.asarray(y, np.float64)
    if predictions.shape != y.shape or predictions.ndim != 2:
        raise ValueError(
            f"predictions and y must both be (N, K), got {predictions.shape} and {y.shape}"
        )
    return np.mean((y - predictions) ** 2, axis=0)


def _check_likelihood(likelihood):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return likelihood


def model_outputs(model, x, *, training=False, batch_size=4096):
    """The model's outputs at x as float64, in batches (no Keras predict loop)."""
    dtype = model.trainable_variables[0].dtype
    x = np.asarray(x, dtype)
    parts = [
        model(x[i : i + batch_size], training=training).numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float64)


# -- deep ensembles -----------------------------------------------------------------------------
class DeepEnsemble:
    """M MLPs from independent initialisations and shufflings (Lakshminarayanan et al. 2017).

    Parameters
    ----------
    n_inputs, hidden, n_outputs, activation, dtype : the architecture of every member
        (:func:`sigma.lab.models.mlp`); K = ``n_outputs`` targets or classes.
    size : M, the number of members.
    likelihood : "regression" (y (N, K)) or "classification" (labels (N,)).
    head : regression only — "gaussian": each member outputs μ and σ² per target (2K outputs)
        and is trained on the Gaussian NLL (the paper's proper scoring rule); "mse": K outputs
        trained on the squared error, with the noise variance from the training residuals.
    seed : fixes every member's initial weights and data order.

    After :meth:`fit`: ``members`` (M Keras models), ``noise_variance`` (K,) for ``head="mse"``.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden,
        n_outputs: int,
        *,
        size: int = 5,
        likelihood: str = "regression",
        head: str = "gaussian",
        activation: str = "tanh",
        dtype: str = "float32",
        seed: int = 0,
    ):
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.likelihood = _check_likelihood(likelihood)
        self.head = head if likelihood == "regression" else None
        self.n_outputs = int(n_outputs)
        width = 2 * self.n_outputs if self.head == "gaussian" else self.n_outputs
        self.seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(size) % 2**31]
        self.members = [
            mlp(n_inputs, hidden, width, activation=activation, dtype=dtype, seed=s)
            for s in self.seeds
        ]
        self.noise_variance = None

    @property
    def size(self) -> int:
        return len(self.members)

    def fit(
        self,
        x,
        y,
        *,
        epochs: int,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        schedule: str = "constant",
    ):
        """Train each member on its own shuffling (Adam, :func:`fit`); returns self."""
        if self.likelihood == "classification":
            loss = classification_loss()
        else:
            loss = gaussian_nll if self.head == "gaussian" else "mse"
        for model, s in zip(self.members, self.seeds, strict=True):
            fit(model, x, y, loss=loss, epochs=epochs, batch_size=batch_size,
                learning_rate=learning_rate, schedule=schedule, seed=s)  # fmt: skip
        if self.head == "mse":
            self.noise_variance = np.mean(
                [residual_variance(model_outputs(m, x), y) for m in self.members], axis=0
            )
        return self

    def member_predictions(self, x):
        """Regression: (means, variances), each (M, N, K) — a member's σ² is its head's, or the
        residual noise variance for ``head="mse"``. Classification: probabilities (M, N, K)."""
        outputs = np.stack([model_outputs(m, x) for m in self.members])
        if self.likelihood == "classification":
            return softmax(outputs)
        if self.head == "gaussian":
            return split_head(outputs, self.n_outputs)
        if self.noise_variance is None:
            raise ValueError("fit the ensemble first: head='mse' takes its noise from training")
        return outputs, np.broadcast_to(self.noise_variance, outputs.shape)

    def predict(self, x, *, noise: bool = True):
        """Regression: the mixture's mean and standard deviation, (N, K) each:
        μ = mean_m μ_m, σ² = var_m μ_m + mean_m σ_m² (the second term only with ``noise``)."""
        if self.likelihood != "regression":
            raise ValueError("predict is for regression; use predict_proba for classification")
        means, variances = self.member_predictions(x)
        var = means.var(axis=0) + (variances.mean(axis=0) if noise else 0.0)
        return means.mean(axis=0), np.sqrt(var)

    def predict_proba(self, x) -> np.ndarray:
        """Classification: the average of the members' softmax, (N, K)."""
        if self.likelihood != "classification":
            raise ValueError("predict_proba needs likelihood='classification'")
        return self.member_predictions(x).mean(axis=0)


# -- MC dropout ---------------------------------------------------------------------------------
class MCDropout:
    """An MLP with dropout kept on at test time (Gal & Ghahramani 2016).

    Parameters
    ----------
    n_inputs, hidden, n_outputs, activation, dtype : the architecture
        (:func:`sigma.lab.models.mlp`), with
        ``Dropout(rate)`` after every hidden layer.
    rate : the dropout probability, in training and in the test-time samples.
    likelihood : "regression" (squared error) or "classification" (cross-entropy on logits).
    seed : fixes the initial weights, the data order and the training masks.

    After :meth:`fit`: ``model``; ``noise_variance`` (K,), regression only: the mean squared
    training residual of the MC mean (:meth:`predict` with ``noise=False``).
    """

    def __init__(
        self,
        n_inputs: int,
        hidden,
        n_outputs: int,
        *,
        rate: float = 0.1,
        likelihood: str = "regression",
        activation: str = "tanh",
        dtype: str = "float32",
        seed: int = 0,
    ):
        self.likelihood = _check_likelihood(likelihood)
        self.rate, self.seed = float(rate), int(seed)
        self.model = mlp(
            n_inputs, hidden, n_outputs, activation=activation, dropout=rate, dtype=dtype,
            seed=seed,
        )  # fmt: skip
        self.noise_variance = None

    def fit(
        self,
        x,
        y,
        *,
        epochs: int,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        schedule: str = "constant",
        n_samples: int = 100,
    ):
        """Train with dropout (Adam, :func:`fit`); for regression, then estimate the noise
        variance from the residuals of the ``n_samples``-pass MC mean on x. Returns self."""
        loss = classification_loss() if self.likelihood == "classification" else "mse"
        fit(self.model, x, y, loss=loss, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, schedule=schedule, seed=self.seed)  # fmt: skip
        if self.likelihood == "regression":
            mean = self.samples(x, n_samples, seed=self.seed).mean(axis=0)
            self.noise_variance = residual_variance(mean, y)
        return self

    def samples(self, x, n_samples: int = 100, *, seed: int = 0) -> np.ndarray:
        """The outputs of ``n_samples`` stochastic forward passes, (T, N, K): dropout on, one
        independent mask per pass and sample, drawn from a stream fixed by ``seed``."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        dropouts = [la for la in self.model.layers if isinstance(la, keras.layers.Dropout)]
        for i, layer in enumerate(dropouts):
            layer.seed_generator.state.assign(np.array([seed, 1000 * i], np.int64))
        x = np.asarray(x)
        tiled = np.tile(x, (n_samples,) + (1,) * (x.ndim - 1))  # pass t: rows t·N … (t+1)·N − 1
        out = model_outputs(self.model, tiled, training=self.rate > 0)
        return out.reshape(n_samples, len(x), -1)

    def predict(self, x, *, n_samples: int = 100, seed: int = 0, noise: bool = True):
        """Regression: mean and standard deviation over the passes, (N, K) each:
        σ² = var_t f_t + s² (the noise variance only with ``noise``)."""
        if self.likelihood != "regression":
            raise ValueError("predict is for regression; use predict_proba for classification")
        out = self.samples(x, n_samples, seed=seed)
        var = out.var(axis=0)
        if noise:
            if self.noise_variance is None:
                raise ValueError("fit first: the noise variance comes from the training residuals")
            var = var + self.noise_variance
        return out.mean(axis=0), np.sqrt(var)

    def predict_proba(self, x, *, n_samples: int = 100, seed: int = 0) -> np.ndarray:
        """Classification: the average softmax over the passes, (N, K)."""
        if self.likelihood != "classification":
            raise ValueError("predict_proba needs likelihood='classification'")
        return softmax(self.samples(x, n_samples, seed=seed)).mean(axis=0)


# -- temperature scaling ------------------------------------------------------------------------
def fit_temperature(logits, labels, *, bounds=(1e-2, 1e2)) -> float:
    """The T minimising the mean NLL of softmax(logits / T) on (logits (N, K), labels (N,)):
    a bounded 1-D search (Brent) over ln T within ``bounds``. The NLL is convex in 1/T, so
    the minimum is unique. One logit (N, 1) is a binary classifier, P(y = 1) = sigmoid(f / T),
    fitted as the two logits (0, f) with labels 0/1."""
    import scipy.optimize
    from scipy.special import log_softmax

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels).astype(int)
    if logits.ndim != 2 or labels.shape != (len(logits),):
        raise ValueError(
            f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}"
        )
    if logits.shape[1] == 1:  # binary: sigmoid(f / T) = softmax((0, f) / T)[1]
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be 0 or 1 for one logit (a binary classifier)")
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    rows = np.arange(len(labels))

    def nll(log_t):
        return -np.mean(log_softmax(logits / np.exp(log_t), axis=1)[rows, labels])

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = scipy.optimize.minimize_scalar(
        nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    return float(np.exp(res.x))


class TemperatureScaling:
    """Temperature scaling of a trained classifier (Guo et al. 2017): probabilities
    softmax(f(x) / T), T fitted on held-out data by :func:`fit_temperature`.

    model : a trained Keras classifier with linear logits (N, K) outputs.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.temperature = 1.0

    def fit(self, x_val, y_val):
        """T from the validation NLL; returns self."""
        self.temperature = fit_temperature(model_outputs(self.model, x_val), y_val)
        return self

    def predict_proba(self, x) -> np.ndarray:
        """softmax(f(x) / T), (N, K); for one logit, P(y = 1) = sigmoid(f(x) / T), (N, 1)."""
        logits = model_outputs(self.model, x) / self.temperature
        if logits.shape[1] == 1:
            from scipy.special import expit

            return expit(logits)
        return softmax(logits)
