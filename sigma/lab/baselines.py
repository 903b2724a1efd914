"""Two standard alternatives to the Laplace approximation for error bars of a network, in Keras:
deep ensembles (Lakshminarayanan, Pritzel & Blundell 2017) and MC dropout (Gal & Ghahramani
2016), and temperature scaling (Guo et al. 2017), each trained by the notebooks' one trainer
(:func:`sigma.lab.models.train`) as the other methods of notebooks 05–07 are.

Shapes: x (N, D) inputs; regression targets y (N, K); classification labels (N,) integers in
[0, K). Predictions: regression ``(mean, std)`` (N, K) each, std including the noise;
classification probabilities (N, K).

* :class:`DeepEnsemble` — M networks from independent random initialisations, each trained on
  its own shuffling of the data. Regression, ``head="gaussian"`` (the paper's method): each
  member outputs a mean μ_m and a log-variance ln σ_m² per output, [μ | ln σ²], and is trained
  on the Gaussian negative log-likelihood :class:`sigma.losses.GaussianNLL` (the form sigma's
  heteroscedastic Laplace reads); the ensemble is the uniform mixture, with mean
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

import keras
import numpy as np

from sigma.classification import softmax
from sigma.lab.models import mlp, train
from sigma.losses import GaussianNLL

LIKELIHOODS = ("regression", "classification")
HEADS = ("gaussian", "mse")


# -- training -----------------------------------------------------------------------------------
def classification_loss() -> keras.losses.Loss:
    """Mean cross-entropy on logits against integer labels."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _baseline_training(training: dict) -> dict:
    """The baselines' training: Adam on the seeded fast path, batches of 32, unless told."""
    return {"optimizer": "adam", "fast": True, "batch_size": 32, **training}


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
    head : regression only — "gaussian": each member outputs [μ | ln σ²] per target (2K
        outputs) and is trained on :class:`sigma.losses.GaussianNLL` (the paper's proper
        scoring rule); "mse": K outputs
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
        if self.likelihood == "classification":
            self.loss = classification_loss()
        else:
            self.loss = GaussianNLL() if self.head == "gaussian" else "mse"
        self.noise_variance = None

    @property
    def size(self) -> int:
        return len(self.members)

    def fit(self, x, y, **training):
        """Train each member on its own shuffling (:func:`sigma.lab.models.train`, Adam on the
        seeded fast path by default; ``training``: its keywords, e.g. epochs, batch_size,
        learning_rate, schedule); returns self."""
        for model, s in zip(self.members, self.seeds, strict=True):
            train(model, x, y, loss=self.loss, seed=s, **_baseline_training(training))
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
        if self.head == "gaussian":  # the loss's own reading of its [μ | ln σ²] head
            mean, logvar = self.loss.likelihood.moments(outputs)
            return mean, np.exp(logvar)
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

    def fit(self, x, y, *, n_samples: int = 100, **training):
        """Train with dropout (:func:`sigma.lab.models.train`, Adam on the seeded fast path by
        default; ``training``: its keywords); for regression, then estimate the noise variance
        from the residuals of the ``n_samples``-pass MC mean on x. Returns self."""
        loss = classification_loss() if self.likelihood == "classification" else "mse"
        train(self.model, x, y, loss=loss, seed=self.seed, **_baseline_training(training))
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
